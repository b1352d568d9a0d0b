"""Shared plumbing for experiment scripts: dataclass configs overridable from the command line,
and writing results (JSON next to PNG) into the work directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _field_parser(tp: Any) -> Callable[[str], Any]:
    origin = typing.get_origin(tp)
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (str,)
        parse = _field_parser(inner)
        return lambda s: tuple(parse(p) for p in s.split(",") if p)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _field_parser(args[0])
        return lambda s: None if s.lower() == "none" else inner(s)
    return str


def parse_config(config: Any, argv: Sequence[str] | None = None, description: str = ""):
    """Return ``(config, workdir)``: ``config`` with ``--field value`` overrides applied.

    Every field of the dataclass ``config`` becomes a flag of the same name; tuples take
    comma-separated values (``--seeds 0,1,2``), booleans take true/false.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--workdir", required=True, help="directory for metrics, plots, checkpoints"
    )
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        parser.add_argument(
            f"--{f.name}",
            type=_field_parser(hints[f.name]),
            default=getattr(config, f.name),
            help=f"(default: {getattr(config, f.name)!r})",
        )
    args = vars(parser.parse_args(argv))
    workdir = args.pop("workdir")
    return dataclasses.replace(config, **args), workdir


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_json(obj: Any, path: str) -> None:
    """Write ``obj`` (dicts, lists, dataclasses, arrays) as JSON, atomically (write then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_to_jsonable(obj), f, indent=2)
    os.replace(tmp, path)


def new_figure(*args, **kwargs):
    """``plt.subplots`` on the non-interactive Agg backend (scripts run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
