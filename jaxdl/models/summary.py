"""Keras-style model summaries: every submodule's path, output shape and parameter count, with
totals and the forward pass's FLOPs from XLA's cost analysis.

Nothing is allocated or run: shapes come from ``jax.eval_shape`` of ``model.init`` (a trace with
abstract values), and FLOPs from the cost analysis of the lowered, uncompiled forward pass. XLA
counts a multiply-add as two FLOPs, so a convolution costs ``2 H_out W_out k^2 C_in C_out`` per
example; papers that quote "FLOPs" for CNNs (ResNet, EfficientNet) usually mean multiply-adds,
i.e. :attr:`ModelSummary.flops` / 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One module call: ``path`` ("stage1_block1/conv1"), class name, output shape(s), and the
    parameter count of its whole subtree."""

    path: str
    type: str
    output_shape: Any
    params: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """The result of :func:`summary`; ``str()`` gives the table."""

    model: str
    input_shape: tuple[int, ...]
    rows: tuple[SummaryRow, ...]
    total_params: int
    non_trainable: int
    flops: float | None
    output_shape: Any

    def table(self) -> str:
        """The Keras-style table as text."""
        header = ("Layer (path)", "Type", "Output shape", "Params")
        lines = [(r.path, r.type, _fmt_shape(r.output_shape), f"{r.params:,}") for r in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        fmt = lambda cols: "  ".join(  # noqa: E731
            c.rjust(w) if i == 3 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
        rule = "-" * len(fmt(header))
        out = [
            f'Model: "{self.model}"   input {self.input_shape} -> {_fmt_shape(self.output_shape)}'
        ]
        out += [rule, fmt(header), rule, *(fmt(line) for line in lines), rule]
        out.append(f"Total params: {self.total_params:,}")
        out.append(f"Non-trainable variables (batch_stats etc.): {self.non_trainable:,}")
        if self.flops is not None:
            out.append(
                f"FLOPs (XLA cost analysis, forward, this batch): {_fmt_big(self.flops)} "
                f"(= {_fmt_big(self.flops / 2)} multiply-adds)"
            )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _fmt_shape(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return str(shape)
    leaves = jax.tree.leaves(shape, is_leaf=lambda s: isinstance(s, tuple))
    return ", ".join(str(s) for s in leaves)


def _fmt_big(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:.0f}"


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ``ShapeDtypeStruct``)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def _subtree(tree: Any, path: Sequence[str]) -> Any:
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return {}
        tree = tree[name]
    return tree


def _shown_output(module: nn.Module, out: Any) -> Any:
    """What a row shows: the output, except that a recurrent cell's ``(carry, y)`` (and an RNN's,
    with ``return_carry=True``) shows ``y`` -- the output people read a summary for."""
    carries = hasattr(module, "initialize_carry") or hasattr(module, "return_carry")
    if carries and isinstance(out, tuple) and len(out) == 2:
        return out[1]
    return out


def summary(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: Any = jnp.float32,
    depth: int | None = None,
    compute_flops: bool = True,
    **call_kwargs: Any,
) -> ModelSummary:
    """Summarise ``model`` applied to an input of ``input_shape`` (with the batch dimension).

    Args:
      model: a flax module whose ``__call__`` takes the input (e.g. any ``jaxdl.models`` network).
      input_shape: the input's shape, e.g. ``(1, 224, 224, 3)``.
      dtype: the input's dtype.
      depth: list module calls nested at most this deep (1: the model's direct children);
        ``None`` lists all.
      compute_flops: add the forward pass's FLOPs (XLA cost analysis of the lowered program).
      **call_kwargs: forwarded to ``model.init``/``model.apply`` (e.g. ``train=False``).

    Returns:
      A :class:`ModelSummary`; ``print(summary(...))`` shows the table.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"summary: input_shape must be a non-empty tuple of positive ints, got {input_shape!r}"
        )
    if depth is not None and depth < 1:
        raise ValueError(f"summary: depth must be >= 1 or None, got {depth}")
    x = jax.ShapeDtypeStruct(shape, dtype)
    calls: list[list[Any]] = []  # [path tuple, type name, output shape]

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or module.scope is None or not module.path:
            return next_fun(*args, **kwargs)
        entry = [tuple(module.path), type(module).__name__, None]
        calls.append(entry)  # appended before the children run: parents come first
        out = next_fun(*args, **kwargs)
        entry[2] = jax.tree.map(lambda a: tuple(a.shape), _shown_output(module, out))
        return out

    def init(rng, x):
        with nn.intercept_methods(record):
            return model.init_with_output(rng, x, **call_kwargs)

    out, variables = jax.eval_shape(init, jax.random.PRNGKey(0), x)
    variables = dict(variables)
    params = variables.get("params", {})
    rows = tuple(
        SummaryRow("/".join(path), kind, out_shape, count_params(_subtree(params, path)))
        for path, kind, out_shape in calls
        if depth is None or len(path) <= depth
    )
    non_trainable = count_params({k: v for k, v in variables.items() if k != "params"})
    flops = None
    if compute_flops:
        apply = jax.jit(lambda v, x: model.apply(v, x, **call_kwargs))
        cost = apply.lower(variables, x).cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops = float(cost["flops"]) if cost and "flops" in cost else None
    return ModelSummary(
        model=type(model).__name__,
        input_shape=shape,
        rows=rows,
        total_params=count_params(params),
        non_trainable=non_trainable,
        flops=flops,
        output_shape=jax.tree.map(lambda a: tuple(a.shape), out),
    )
