r"""Post-training quantisation: symmetric integer kernels with per-channel scales, and int8 inference.

Symmetric uniform quantisation of a kernel ``w`` to ``b`` bits (Jacob et al. 2018, "Quantization and
training of neural networks for efficient integer-arithmetic-only inference"; Krishnamoorthi 2018,
"Quantizing deep convolutional networks for efficient inference: a whitepaper"):

.. math::

    q_{\max} = 2^{b-1} - 1, \qquad s_c = \frac{\max_{i} |w_{i,c}|}{q_{\max}}, \qquad
    q_{i,c} = \mathrm{clip}\big(\mathrm{round}(w_{i,c} / s_c), -q_{\max}, q_{\max}\big), \qquad
    \hat w_{i,c} = s_c\, q_{i,c},

one scale ``s_c`` per output channel ``c`` (the kernel's last axis) with ``per_channel=True``, one
for the whole tensor otherwise. The clip never binds (``|w / s| <= q_max`` by the choice of ``s``),
so the only error is rounding: ``|w - \hat w| <= s_c / 2``. The grid is symmetric (no zero point),
so zero is exact -- pruned weights stay zero -- and an integer product needs no correction terms.

Biases, normalisation parameters and batch statistics stay float32 (see
:func:`jaxdl.compress._tree.is_kernel`): they are a few hundred bytes and an error there shifts every
output. docs/derivations/compression.md derives the bound and why per-channel scales matter.

int8 inference (:func:`int8_apply`) runs each ``Dense`` and convolution as an int8 x int8 product
accumulated in int32 (``lax.dot_general`` / ``lax.conv_general_dilated`` with
``preferred_element_type=jnp.int32``), the input quantised with a per-tensor scale ``s_x``
calibrated on a few batches (:func:`calibrate`), and the float result recovered as
``y = s_x s_c acc + b``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdl.compress._tree import is_kernel, path_str

__all__ = [
    "QuantizedArray",
    "calibrate",
    "dequantize",
    "int8_apply",
    "quantize",
    "quantize_array",
    "size_bytes",
]


@jax.tree_util.register_pytree_node_class
class QuantizedArray:
    """An integer tensor and its float32 scales: ``dequantized = values * scale``.

    Attributes:
      values: ``int8`` array, the kernel's shape, entries in ``[-q_max, q_max]``.
      scale: ``float32`` array broadcastable against ``values`` with rank preserved: ``(1, ..., 1,
        C_out)`` per channel, ``(1, ..., 1)`` per tensor.
      bits: the number of bits ``b`` (``q_max = 2**(b-1) - 1``); storage is int8 whatever ``b``.
    """

    def __init__(self, values: jax.Array, scale: jax.Array, bits: int = 8):
        self.values = values
        self.scale = scale
        self.bits = bits

    def tree_flatten(self):
        return (self.values, self.scale), self.bits

    @classmethod
    def tree_unflatten(cls, bits, children):
        return cls(*children, bits=bits)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.scale.nbytes)

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        return self.values.astype(dtype) * self.scale.astype(dtype)

    def __repr__(self) -> str:
        shape = lambda a: tuple(getattr(a, "shape", ()))  # noqa: E731 (leaves may be non-arrays)
        return f"QuantizedArray(shape={shape(self.values)}, bits={self.bits}, scale_shape={shape(self.scale)})"


def _is_q(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int | np.integer) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8] (stored as int8), got {bits!r}")


def quantize_array(w: Any, bits: int = 8, per_channel: bool = True) -> QuantizedArray:
    """Quantise one kernel ``w`` (last axis = output channels) symmetrically to ``bits`` bits.

    Outside ``jit`` the scale and rounding are computed in float64 (NumPy), so ``round`` sees the
    exact quotient ``w / s`` and the bound ``|w - s q| <= s / 2`` holds up to the final float32
    product's rounding (one half ulp of ``w``); under ``jit`` the same formula runs in float32.
    An all-zero channel gets scale 1 (its values are 0 either way).
    """
    _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    concrete = not isinstance(w, jax.core.Tracer)
    xp = np if concrete else jnp
    w = np.asarray(w, np.float64) if concrete else jnp.asarray(w, jnp.float32)
    if w.ndim < 1:
        raise ValueError(f"w must have at least one axis, got shape {w.shape}")
    axes = tuple(range(w.ndim - 1)) if per_channel else tuple(range(w.ndim))
    amax = xp.max(xp.abs(w), axis=axes, keepdims=True)  # (1, ..., 1, C) or (1, ..., 1)
    scale = xp.where(amax > 0, amax / qmax, 1.0)
    q = xp.clip(xp.round(w / scale), -qmax, qmax)
    if concrete:
        return QuantizedArray(
            jnp.asarray(q.astype(np.int8)), jnp.asarray(scale.astype(np.float32)), bits
        )
    return QuantizedArray(q.astype(jnp.int8), scale.astype(jnp.float32), bits)


def quantize(params: Any, bits: int = 8, per_channel: bool = True) -> Any:
    """Quantise every kernel of ``params``; biases and normalisation parameters stay float.

    Args:
      params: a parameter pytree (e.g. ``variables["params"]`` of a Flax model).
      bits: ``b`` in ``[2, 8]``; values are stored as int8 in every case.
      per_channel: one float32 scale per output channel (the kernel's last axis) when ``True``,
        one per tensor otherwise.

    Returns:
      ``params`` with each kernel replaced by a :class:`QuantizedArray`.
    """
    _check_bits(bits)
    return jax.tree_util.tree_map_with_path(
        lambda p, w: quantize_array(w, bits, per_channel) if is_kernel(p, w) else w, params
    )


def dequantize(qparams: Any, dtype: Any = jnp.float32) -> Any:
    """``params`` again: each :class:`QuantizedArray` becomes ``values * scale`` in ``dtype``;
    the other leaves are returned unchanged."""
    return jax.tree.map(lambda x: x.dequantize(dtype) if _is_q(x) else x, qparams, is_leaf=_is_q)


def size_bytes(tree: Any) -> int:
    """Bytes of the arrays in ``tree`` as stored: ``sum(leaf.nbytes)`` (an int8 kernel counts one
    byte per entry plus its float32 scales; a bfloat16 array two bytes per entry)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, "nbytes"):
            raise TypeError(f"size_bytes: leaf of type {type(leaf).__name__} has no nbytes")
        total += int(leaf.nbytes)
    return total


# --- int8 inference ---------------------------------------------------------------------------


def _module_kind(module: nn.Module) -> str | None:
    """Which int8 lowering runs ``module``'s ``__call__``: "dense", "conv" or None (run as is).

    Supported: ``flax.linen.Dense``, ``flax.linen.Conv`` and :class:`jaxdl.nn.Conv` (MnistCNN's
    convolutions) without feature groups or dilation, with ``"SAME"``/``"VALID"``/explicit padding.
    """
    if isinstance(module, nn.Dense):
        return "dense"
    try:
        from jaxdl.nn.conv import Conv as JaxdlConv
    except ImportError:  # pragma: no cover (older jaxdl)
        JaxdlConv = ()
    if isinstance(module, JaxdlConv):
        return "conv"
    if type(module).__name__ == "_Conv3x3":  # MnistCNN's conv module before jaxdl.nn.Conv
        return "conv"
    if type(module) is nn.Conv:
        ones = (1, None, (1,) * len(module.kernel_size))
        ok = (
            module.feature_group_count == 1
            and module.kernel_dilation in ones
            and module.input_dilation in ones
            and (not isinstance(module.padding, str) or module.padding in ("SAME", "VALID"))
        )
        return "conv" if ok else None
    return None


def _module_path(module: nn.Module) -> str:
    return "/".join(module.scope.path)


def _lookup(tree: Any, path: str) -> Any:
    node = tree
    for key in [k for k in path.split("/") if k]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def calibrate(
    model: nn.Module,
    variables: dict,
    batches: Iterable[Any],
    percentile: float | None = None,
    **apply_kwargs: Any,
) -> dict[str, float]:
    r"""Activation scales for int8 inference: one per quantisable layer's input.

    Runs ``model.apply(variables, x, **apply_kwargs)`` on each batch, records the input of every
    ``Dense``/convolution, and returns ``{layer_path: s_x}`` with ``s_x = a / 127`` where ``a`` is
    the largest ``|x|`` seen (or, with ``percentile``, that percentile of ``|x|`` per batch,
    averaged: clipping rare outliers for a finer grid, as TensorRT's and TFLite's calibrators can).
    A few batches suffice: ``a`` is a maximum, it settles quickly.
    """
    if percentile is not None and not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    seen: dict[str, list[float]] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and _module_kind(module) is not None:
            x = np.abs(np.asarray(args[0], np.float32))
            a = float(np.percentile(x, percentile)) if percentile is not None else float(x.max())
            seen.setdefault(_module_path(module), []).append(a)
        return next_fun(*args, **kwargs)

    count = 0
    for x in batches:
        with nn.intercept_methods(record):
            model.apply(variables, x, **apply_kwargs)
        count += 1
    if count == 0:
        raise ValueError("calibrate needs at least one batch")
    reduce = np.mean if percentile is not None else np.max
    return {k: max(float(reduce(v)), 1e-12) / 127.0 for k, v in seen.items()}


def _quantize_input(x: jax.Array, s_x: float) -> jax.Array:
    return jnp.clip(jnp.round(x / s_x), -127, 127).astype(jnp.int8)


def _channel(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` with ``C`` entries shaped ``(1, ..., 1, C)`` for a rank-``ndim`` output (no implicit
    rank promotion)."""
    return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))


def int8_apply(
    model: nn.Module,
    variables: dict,
    act_scales: dict[str, float],
    x: jax.Array,
    **apply_kwargs: Any,
) -> jax.Array:
    r"""Inference with int8 arithmetic in every ``Dense`` and convolution ``model`` calls.

    ``variables["params"]`` holds :func:`quantize`'d kernels (8 bits). Each quantisable layer
    ``y = x W + b`` (or ``x * W + b``) runs as

    .. math::

        x_q = \mathrm{clip}(\mathrm{round}(x / s_x), -127, 127), \qquad
        \mathrm{acc} = x_q W_q \ \text{(int8 inputs, int32 accumulation)}, \qquad
        y = s_x\, s_c\, \mathrm{acc} + b,

    with ``s_x`` from :func:`calibrate` and ``s_c`` the kernel's per-channel scale. Everything else
    (ReLU, pooling, norms) runs in float32 on the dequantised output -- the "fake-quantised
    activations" scheme of TFLite's dynamic-range kernels, with static calibrated input scales.
    Layers not supported (grouped or dilated convs, attention) run in float32 with the
    dequantised kernel. Jittable: ``jax.jit(functools.partial(int8_apply, model))``.
    """
    qparams = variables["params"]
    float_vars = dict(variables)
    float_vars["params"] = dequantize(qparams)

    def int8_layer(next_fun, args, kwargs, context):
        module = context.module
        kind = _module_kind(module) if context.method_name == "__call__" else None
        path = _module_path(module) if kind else ""
        qk = _lookup(qparams, path + "/kernel") if kind else None
        if kind is None or not _is_q(qk) or path not in act_scales or qk.bits != 8:
            return next_fun(*args, **kwargs)
        s_x = act_scales[path]
        xin = args[0]
        x_q = _quantize_input(jnp.asarray(xin, jnp.float32), s_x)
        if kind == "dense":
            acc = lax.dot_general(
                x_q,
                qk.values,
                (((x_q.ndim - 1,), (0,)), ((), ())),
                preferred_element_type=jnp.int32,
            )  # (..., out) int32
        else:
            strides = getattr(module, "strides", None) or 1
            nsp = x_q.ndim - 2
            strides = (strides,) * nsp if isinstance(strides, int) else tuple(strides)
            padding = getattr(module, "padding", "VALID")
            if not isinstance(padding, str):
                padding = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
            acc = lax.conv_general_dilated(
                x_q,
                qk.values,
                strides,
                padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC") if nsp == 2 else None,
                preferred_element_type=jnp.int32,
            )  # (N, H', W', out) int32
        y = acc.astype(jnp.float32) * _channel(s_x * qk.scale, acc.ndim)
        bias = _lookup(qparams, path + "/bias")
        if bias is not None:
            y = y + _channel(jnp.asarray(bias, jnp.float32), y.ndim)
        return y

    with nn.intercept_methods(int8_layer):
        return model.apply(float_vars, x, **apply_kwargs)


def kernel_report(params: Any) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of the kernels :func:`quantize` would touch (for printing)."""
    out: dict[str, tuple[int, ...]] = {}
    jax.tree_util.tree_map_with_path(
        lambda p, w: out.__setitem__(path_str(p), tuple(np.shape(w))) if is_kernel(p, w) else None,
        params,
    )
    return out
