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


# ---------------------------------------------------------------------------------------------
# The tails the training scripts share: summaries over seeds, curves, the loss scale, main().


def summarize_over_seeds(
    runs: Sequence[dict], variants: Sequence[str], keys: Sequence[str], std_keys: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """Per variant, the mean over its runs (one per seed) of each of ``keys``, and the standard
    deviation (``<key>_std``) of each of ``std_keys``."""
    summary = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        summary[v] = {k: float(np.mean([r[k] for r in rs])) for k in keys}
        summary[v].update({f"{k}_std": float(np.std([r[k] for r in rs])) for k in std_keys})
    return summary


def plot_history(
    history: dict[str, list[float]],
    path: str,
    title: str,
    val_label: str = "validation",
    log_loss: bool = False,
) -> None:
    """Loss and accuracy per epoch, train and (when ``val_*`` is in ``history``) validation."""
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label=val_label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if log_loss:
        ax_loss.set_yscale("log")
    fig.suptitle(title)
    save_figure(fig, path)


def loss_scale_metrics(history: dict[str, list[float]]) -> dict[str, float | int]:
    """float16 training: where the dynamic loss scale ended and how many steps it skipped, from
    ``fit``'s per-epoch logs (empty for other precisions)."""
    if "loss_scale" not in history:
        return {}
    return {
        "loss_scale": history["loss_scale"][-1],
        "skipped_steps": int(history["skipped_steps"][-1]),
    }


def distributed_main(
    get_config: Callable[[], Any],
    train_and_evaluate: Callable[..., Any],
    description: str,
    argv: Sequence[str] | None = None,
) -> None:
    """``main`` of a script that may run on several processes: parse the flags, start
    ``jax.distributed`` from the config's ``coordinator_address``, ``num_processes`` and
    ``process_id``, train, and print only on process 0."""
    import jax

    from jaxdl.train import parallel

    config, workdir = parse_config(get_config(), argv, description=description)
    parallel.initialize_distributed(
        config.coordinator_address, config.num_processes, config.process_id
    )
    train_and_evaluate(config, workdir, verbose=jax.process_index() == 0)
