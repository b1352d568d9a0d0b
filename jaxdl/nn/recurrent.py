"""Recurrent cells and the layers that run them over sequences.

Cells follow flax.linen's carry-first contract, ``cell(carry, x_t) -> (carry, y_t)``, and keep the
parameter layout fixed in DESIGN.md (fused gate matrices, Keras/PyTorch gate orders) so weights can
be copied in from other frameworks:

* ``ElmanCell``: ``w_i (in, H)``, ``w_h (H, H)``, ``b (H,)``; carry ``h``.
* ``LSTMCell``: ``w_i (in, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``, gates i, f, g, o; carry ``(c, h)``.
* ``GRUCell``: ``w_i (in, 3H)``, ``w_h (H, 3H)``, ``b_i (3H,)``, ``b_h (3H,)``, gates r, z, n;
  carry ``h``.

Besides ``__call__`` every cell exposes the two halves of a step as pure functions of its
parameters: :meth:`~LSTMCell.project` (the input half ``x W_i + b``, which does not depend on the
carry) and :meth:`~LSTMCell.step` (the recurrent half). :class:`RNN` can then compute the input
half for all ``T`` steps as one ``(B*T, in) @ (in, G)`` matmul before the scan, so the sequential
loop only holds the ``(B, H) @ (H, G)`` product that truly depends on the previous step
(``hoist_inputs``; the default on GPU/TPU, not on CPU where it measured slower).

Initialisers follow Keras: Glorot-uniform input kernels, orthogonal recurrent kernels, zero biases
(plus 1.0 on the LSTM forget gate, Jozefowicz et al. 2015).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.nn.bias import column_sum
from jaxdl.nn.materialize import _stored

Array = jax.Array
Carry = Any
Initializer = Callable[..., Array]

__all__ = [
    "Bidirectional",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "RNN",
    "StackedRNN",
    "flip_sequences",
    "gru_layer",
    "lstm_layer",
]


def _check_features(name: str, features: int) -> None:
    if not isinstance(features, int | np.integer) or features < 1:
        raise ValueError(f"{name}: features must be a positive int, got {features!r}")


def _zeros_carry(name: str, input_shape: Sequence[int], features: int, dtype) -> Array:
    if len(input_shape) < 1:
        raise ValueError(
            f"{name}.initialize_carry: input_shape must be (*batch, in_features), got {input_shape}"
        )
    return jnp.zeros((*tuple(input_shape[:-1]), features), dtype)


def _add_bias(y: Array, b: Array) -> Array:
    """``y + b`` with ``b`` broadcast over leading axes explicitly (rank promotion raises)."""
    return y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape)


class _FusedCell(nn.Module):
    """Shared parameter plumbing: one compact method declares the parameters of a cell."""

    features: int
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    # number of gate blocks G in the fused (in, G*H) and (H, G*H) matrices
    _gates: ClassVar[int] = 1

    def _param_shapes(self, in_features: int) -> dict[str, tuple[int, ...]]:
        h, g = self.features, self._gates
        return {"w_i": (in_features, g * h), "w_h": (h, g * h), "b": (g * h,)}

    def _bias_init(self, name: str) -> Initializer:
        return self.bias_init

    @nn.compact
    def weights(self, in_features: int) -> dict[str, Array]:
        """Declare (at init) or fetch the cell's parameters, cast to ``dtype`` when one is set.

        Raises ``ValueError`` if the stored ``w_i`` was built for a different input size.
        """
        _check_features(type(self).__name__, self.features)
        if self.has_variable("params", "w_i"):
            stored = self.get_variable("params", "w_i").shape
            if stored[0] != in_features:
                raise ValueError(
                    f"{type(self).__name__}: inputs have {in_features} features but the "
                    f"parameters were built for {stored[0]} (w_i has shape {stored}); expected "
                    f"inputs of shape (..., {stored[0]})"
                )
        shapes = self._param_shapes(in_features)
        params = {}
        for name, shape in shapes.items():
            if name.startswith("w_h"):
                init = self.recurrent_kernel_init
            elif name.startswith("w_"):
                init = self.kernel_init
            else:
                init = self._bias_init(name)
            params[name] = self.param(name, init, shape, self.param_dtype)
        if self.dtype is not None:
            params = {k: v.astype(self.dtype) for k, v in params.items()}
        return params

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: Sequence[int]) -> Carry:
        """The zero state for inputs of shape ``input_shape = (*batch, in_features)``."""
        del rng  # zero initial state, as Keras and flax
        return _zeros_carry(type(self).__name__, input_shape, self.features, self._carry_dtype())

    def _carry_dtype(self):
        return self.dtype if self.dtype is not None else self.param_dtype

    @property
    def num_feature_axes(self) -> int:
        return 1

    @nn.nowrap
    def project(self, params: dict[str, Array], x: Array) -> Array:
        """The input half of a step, any leading axes: ``x W_i + b``, shape ``(..., G*H)``."""
        return _add_bias(x @ params["w_i"], params["b"])

    def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One step, ``(carry, x_t) -> (carry', y_t)``, with ``x_t`` of shape ``(*batch, in)``."""
        if x.ndim < 1:
            raise ValueError(
                f"{type(self).__name__}: x must have shape (*batch, in), got {x.shape}"
            )
        params = self.weights(x.shape[-1])
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return self.step(params, carry, self.project(params, x))


class ElmanCell(_FusedCell):
    """The Elman (simple) recurrent cell (Elman 1990), Keras's ``SimpleRNN`` cell.

    .. math:: h_t = \\tanh(x_t W_i + h_{t-1} W_h + b), \\qquad y_t = h_t

    The course's output projection ``y_t = h_t W_y + b_y`` is a ``Dense`` applied to every step;
    see :class:`jaxdl.models.Forecaster` with ``return_sequences=True``.

    Params: ``w_i (in, H)``, ``w_h (H, H)``, ``b (H,)``. Carry: ``h (*batch, H)``.
    """

    activation: Callable[[Array], Array] = jnp.tanh

    @nn.nowrap
    def step(self, params: dict[str, Array], h: Array, xp: Array) -> tuple[Array, Array]:
        """``xp = x_t W_i + b`` precomputed; returns ``(h_t, h_t)``."""
        h = self.activation(xp + h @ params["w_h"])  # (B, H)
        return h, h


def _lstm_update(z: Array, c: Array) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    """One LSTM state update from the pre-activations ``z (B, 4H)`` (gates i, f, g, o) and
    ``c_{t-1}``: ``((c_t, h_t), (i, f, g, o))``, the gate activations for a backward pass."""
    H = z.shape[-1] // 4
    i = jax.nn.sigmoid(z[..., :H])
    f = jax.nn.sigmoid(z[..., H : 2 * H])
    g = jnp.tanh(z[..., 2 * H : 3 * H])
    o = jax.nn.sigmoid(z[..., 3 * H :])
    c = f * c + i * g
    return (c, o * jnp.tanh(c)), (i, f, g, o)


class LSTMCell(_FusedCell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), forget gate of Gers et al. (2000).

    With ``z = x_t W_i + h_{t-1} W_h + b`` split into four ``H``-wide blocks in the order i, f, g, o
    (Keras's and PyTorch's order):

    .. math::
        i = \\sigma(z_i),\\ f = \\sigma(z_f),\\ g = \\tanh(z_g),\\ o = \\sigma(z_o), \\qquad
        c_t = f \\odot c_{t-1} + i \\odot g, \\qquad h_t = o \\odot \\tanh(c_t)

    Params: ``w_i (in, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``; the forget block of ``b`` starts at
    ``forget_bias`` (1.0, Jozefowicz et al. 2015; Keras's ``unit_forget_bias``). Carry ``(c, h)``,
    each ``(*batch, H)``; output ``y_t = h_t``.
    """

    forget_bias: float = 1.0
    _gates: ClassVar[int] = 4

    def _bias_init(self, name: str) -> Initializer:
        base, h, fb = self.bias_init, self.features, self.forget_bias

        def init(key, shape, dtype=jnp.float32):
            b = base(key, shape, dtype)
            return b.at[h : 2 * h].add(jnp.asarray(fb, dtype))

        return init

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: Sequence[int]) -> Carry:
        """``(c, h)``, both zeros of shape ``(*batch, H)``."""
        h = super().initialize_carry(rng, input_shape)
        return h, h

    @nn.nowrap
    def step(
        self, params: dict[str, Array], carry: tuple[Array, Array], xp: Array
    ) -> tuple[tuple[Array, Array], Array]:
        """``xp = x_t W_i + b`` precomputed; returns ``((c_t, h_t), h_t)``."""
        c, h = carry
        z = xp + h @ params["w_h"]  # (B, 4H): the one recurrent matmul of the step
        (c, h), _ = _lstm_update(z, c)
        return (c, h), h


class GRUCell(_FusedCell):
    """Gated recurrent unit (Cho et al. 2014), gates in the order r, z, n.

    .. math::
        r = \\sigma(x W_{ir} + b_{ir} + h W_{hr} + b_{hr}), \\quad
        z = \\sigma(x W_{iz} + b_{iz} + h W_{hz} + b_{hz})

    ``reset_after=True`` (cuDNN, Keras's default, PyTorch): the reset gate scales the recurrent
    product,

    .. math:: n = \\tanh(x W_{in} + b_{in} + r \\odot (h W_{hn} + b_{hn}))

    ``reset_after=False`` (the paper): the reset gate scales the state before the product,

    .. math:: n = \\tanh(x W_{in} + b_{in} + (r \\odot h) W_{hn} + b_{hn})

    and in both :math:`h_t = (1 - z) \\odot n + z \\odot h_{t-1}`.

    Params: ``w_i (in, 3H)``, ``w_h (H, 3H)``, ``b_i (3H,)``, ``b_h (3H,)``. Carry ``h``.
    """

    reset_after: bool = True

    def _param_shapes(self, in_features: int) -> dict[str, tuple[int, ...]]:
        h = self.features
        return {"w_i": (in_features, 3 * h), "w_h": (h, 3 * h), "b_i": (3 * h,), "b_h": (3 * h,)}

    @nn.nowrap
    def project(self, params: dict[str, Array], x: Array) -> Array:
        """``x W_i + b_i``, ``(..., 3H)``."""
        return _add_bias(x @ params["w_i"], params["b_i"])

    @nn.nowrap
    def step(self, params: dict[str, Array], h: Array, xp: Array) -> tuple[Array, Array]:
        """``xp = x_t W_i + b_i`` precomputed; returns ``(h_t, h_t)``."""
        H = self.features
        w_h, b_h = params["w_h"], params["b_h"]
        x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
        if self.reset_after:
            hp = _add_bias(h @ w_h, b_h)  # (B, 3H): one fused recurrent matmul
            h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
            r = jax.nn.sigmoid(x_r + h_r)
            z = jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
        else:
            hp = _add_bias(h @ w_h[:, : 2 * H], b_h[: 2 * H])  # (B, 2H): r and z
            h_r, h_z = jnp.split(hp, 2, axis=-1)
            r = jax.nn.sigmoid(x_r + h_r)
            z = jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + _add_bias((r * h) @ w_h[:, 2 * H :], b_h[2 * H :]))
        h = (1.0 - z) * n + z * h
        return h, h


class _LSTMOpts(NamedTuple):
    """What :func:`lstm_layer`'s loop bodies store before reading (both choices compute the same
    function and gradients; measured on XLA:CPU in interleaved A/Bs, docs/performance.md,
    "Recurrent models on one device").

    XLA:CPU fuses a scan's per-step dynamic slice of a stacked ``(T, B, k)`` array into every
    elementwise op that reads it. When those ops then cut the slice into gate blocks, each block's
    fusion re-reads it through the dynamic slice, and the loop ran several times slower than the
    same arithmetic on a stored ``(B, k)`` array. :func:`jaxdl.nn.materialize`'s store (a
    one-element ``dynamic_update_slice``, which XLA does not fuse into readers) makes the slice
    one contiguous copy read by the gate ops.

    * ``store_acts`` (on): the reverse loop stores its step's ``[i, f, g, o, c]_t`` before the
      gradient arithmetic reads the five blocks: the LSTM train step 1.12x faster.
    * ``store_z`` (off): the forward stores ``z_t = x_t W_i + b + h_{t-1} W_h`` before the gate
      activations read it. Measured no faster (XLA already computes the gates from the stored
      output of the add), so it is off; kept so the A/B can be re-run.
    """

    store_acts: bool = True
    store_z: bool = False


_LSTM_OPTS = _LSTMOpts()


def _lstm_forward(w_i, w_h, b, c0, h0, xs, hoist: bool, unroll: int, o: _LSTMOpts):
    """The LSTM over ``xs (T, B, in)``: ``((c_T, h_T), hs (T, B, H), acts (T, B, 5H))`` where
    ``acts[t] = [i, f, g, o, c]_t``, the gate activations and cell state the backward pass needs."""
    inputs = _add_bias(xs @ w_i, b) if hoist else xs  # (T, B, 4H) or (T, B, in)

    def body(carry, x_t):
        c, h = carry
        z = (x_t if hoist else _add_bias(x_t @ w_i, b)) + h @ w_h  # (B, 4H)
        if o.store_z:
            z = _stored(z)  # the gates read a stored z, not four fused re-reads of the slice
        (c, h), gates = _lstm_update(z, c)
        return (c, h), (h, jnp.concatenate([*gates, c], axis=-1))

    (c, h), (hs, acts) = jax.lax.scan(body, (c0, h0), inputs, unroll=unroll)
    return (c, h), hs, acts


def _lstm_layer_fwd(w_i, w_h, b, c0, h0, xs, hoist, unroll, o):
    (c, h), hs, acts = _lstm_forward(w_i, w_h, b, c0, h0, xs, hoist, unroll, o)
    return ((c, h), hs), (w_i, w_h, c0, h0, xs, hs, acts)


def _lstm_layer_bwd(hoist, unroll, o, residuals, cotangents):
    w_i, w_h, c0, h0, xs, hs, acts = residuals
    (dc_T, dh_T), dhs = cotangents
    T, B, H = hs.shape
    c_prev = jnp.concatenate([c0[None], acts[:-1, :, 4 * H :]], axis=0)  # (T, B, H)
    w_h_t = w_h.T

    def body(carry, inp):
        dc, dh = carry  # dL/dc_t, dL/dh_t from the steps after t
        dh_out, a, cp = inp
        if o.store_acts:
            a = _stored(a)  # read as five blocks below: one copy, not five fused re-reads
        i, f, g, og, c = (a[:, k * H : (k + 1) * H] for k in range(5))
        tc = jnp.tanh(c)
        dh = dh + dh_out
        dc = dc + dh * og * (1 - tc * tc)
        dz = jnp.concatenate(
            [
                dc * g * i * (1 - i),
                dc * cp * f * (1 - f),
                dc * i * (1 - g * g),
                dh * tc * og * (1 - og),
            ],
            axis=-1,
        )  # (B, 4H): dL/dz_t, z the pre-activations in the order i, f, g, o
        return (dc * f, dz @ w_h_t), dz

    (dc0, dh0), dz = jax.lax.scan(
        body, (dc_T, dh_T), (dhs, acts, c_prev), reverse=True, unroll=unroll
    )
    dz2 = dz.reshape(T * B, 4 * H)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0).reshape(T * B, H)
    dw_h = h_prev.T @ dz2  # (H, 4H): one (T B)-long GEMM instead of T small ones in the loop
    dw_i = xs.reshape(T * B, -1).T @ dz2  # (in, 4H)
    db = column_sum(dz2)  # a GEMV: XLA:CPU's own column sum is slow (jaxdl.nn.bias)
    dxs = dz @ w_i.T  # (T, B, in)
    return dw_i, dw_h, db, dc0, dh0, dxs


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _lstm_layer(w_i, w_h, b, c0, h0, xs, hoist, unroll, o):
    (c, h), hs, _ = _lstm_forward(w_i, w_h, b, c0, h0, xs, hoist, unroll, o)
    return (c, h), hs


_lstm_layer.defvjp(_lstm_layer_fwd, _lstm_layer_bwd)


def lstm_layer(
    params: dict[str, Array],
    carry: tuple[Array, Array],
    xs: Array,
    *,
    hoist: bool = False,
    unroll: int = 1,
    batch_splits: int = 1,
) -> tuple[tuple[Array, Array], Array]:
    """A whole LSTM layer (:class:`LSTMCell`'s function) over ``xs (T, B, in)``, with a backward
    pass written for it: ``((c_T, h_T), hs (T, B, H))``.

    The forward scan keeps ``[i, f, g, o, c]_t`` per step. The reverse scan carries only
    ``(dL/dc_t, dL/dh_t)`` and emits ``delta z_t = dL/dz_t`` for the pre-activations:

    .. math::
        \\bar h_t &= \\delta h_t + \\partial L / \\partial h_t^{out}, \\quad
        \\bar c_t = \\delta c_t + \\bar h_t\\, o_t (1 - \\tanh^2 c_t), \\\\
        \\delta z_t &= [\\bar c_t g_t\\, i_t(1-i_t),\\ \\bar c_t c_{t-1} f_t(1-f_t),\\
            \\bar c_t i_t (1-g_t^2),\\ \\bar h_t \\tanh(c_t)\\, o_t(1-o_t)], \\\\
        \\delta c_{t-1} &= \\bar c_t f_t, \\quad \\delta h_{t-1} = \\delta z_t W_h^\\top .

    The weight gradients are then two GEMMs over all ``T B`` rows after the loop,
    :math:`\\partial L/\\partial W_h = H_{prev}^\\top \\Delta Z`,
    :math:`\\partial L/\\partial W_i = X^\\top \\Delta Z`, :math:`\\partial L/\\partial b =
    \\sum \\Delta Z`, where JAX's autodiff of the scan would add a small ``h_{t-1}^T delta z_t``
    product inside every reverse step (the layout cuDNN's RNN kernels use).

    ``batch_splits`` runs the batch as that many independent scans (``B`` must divide): each
    step's operations on ``B / k`` rows are small enough that XLA:CPU runs them on one thread,
    without the hand-offs between threads that cost the ``B``-row operations more than they
    gained (a trace shows the loops themselves running one after another). Measured on the
    course's ``LSTM(64)`` train step (B = 128, T = 100, 2 cores): 4 splits 1.3x faster than one
    (``docs/performance.md``); the default is 1 (:class:`RNN` chooses per backend).
    """
    c0, h0 = carry
    w_i, w_h, b = params["w_i"], params["w_h"], params["b"]
    B = xs.shape[1]
    if batch_splits < 1 or B % batch_splits:
        raise ValueError(
            f"lstm_layer: batch_splits must be a positive divisor of the batch size {B}, "
            f"got {batch_splits}"
        )
    store = _LSTM_OPTS
    if batch_splits == 1:
        return _lstm_layer(w_i, w_h, b, c0, h0, xs, hoist, unroll, store)
    parts = [
        _lstm_layer(w_i, w_h, b, c, h, x, hoist, unroll, store)
        for c, h, x in zip(
            jnp.split(c0, batch_splits),
            jnp.split(h0, batch_splits),
            jnp.split(xs, batch_splits, axis=1),
            strict=True,
        )
    ]
    c = jnp.concatenate([p[0][0] for p in parts])
    h = jnp.concatenate([p[0][1] for p in parts])
    return (c, h), jnp.concatenate([p[1] for p in parts], axis=1)


def _gru_forward(w_i, w_h, b_i, b_h, h0, xs, unroll: int):
    """The reset-after GRU over ``xs (T, B, in)``: ``(h_T, hs (T, B, H), acts (T, B, 4H))`` with
    ``acts[t] = [r, z, n, h W_hn + b_hn]_t``, what the backward pass needs besides ``h_{t-1}``."""
    H = w_h.shape[0]
    inputs = _add_bias(xs @ w_i, b_i)  # (T, B, 3H): every step's input half in one matmul

    def body(h, x_t):
        x_t = _stored(x_t)  # read as three blocks: one copy, not three fused re-reads (_LSTMOpts)
        hp = _add_bias(h @ w_h, b_h)  # (B, 3H): the one recurrent matmul of the step
        r = jax.nn.sigmoid(x_t[:, :H] + hp[:, :H])
        z = jax.nn.sigmoid(x_t[:, H : 2 * H] + hp[:, H : 2 * H])
        h_n = hp[:, 2 * H :]
        n = jnp.tanh(x_t[:, 2 * H :] + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, (h, jnp.concatenate([r, z, n, h_n], axis=-1))

    h, (hs, acts) = jax.lax.scan(body, h0, inputs, unroll=unroll)
    return h, hs, acts


def _gru_layer_fwd(w_i, w_h, b_i, b_h, h0, xs, unroll):
    h, hs, acts = _gru_forward(w_i, w_h, b_i, b_h, h0, xs, unroll)
    return (h, hs), (w_i, w_h, h0, xs, hs, acts)


def _gru_layer_bwd(unroll, residuals, cotangents):
    w_i, w_h, h0, xs, hs, acts = residuals
    dh_T, dhs = cotangents
    T, B, H = hs.shape
    zeros = jnp.zeros((H, H), w_h.dtype)
    # W_h with an empty block where the n column of the emitted deltas sits (see below): the
    # recurrent product of the reverse step is then one (B, 4H) @ (4H, H) matmul
    w4_t = jnp.concatenate([w_h[:, : 2 * H], zeros, w_h[:, 2 * H :]], axis=1).T
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)  # (T, B, H)

    def body(dh, inp):
        dh_out, a, hp = inp  # hp: h_{t-1}
        a = _stored(a)  # read as four blocks: one copy, not four fused re-reads (_LSTMOpts)
        r, z, n, h_n = (a[:, k * H : (k + 1) * H] for k in range(4))
        dh = dh + dh_out  # dL/dh_t
        dn = dh * (1.0 - z) * (1.0 - n * n)  # dL/d(n's pre-activation)
        d4 = jnp.concatenate(
            [
                dn * h_n * r * (1.0 - r),  # r's pre-activation (input and recurrent halves alike)
                dh * (hp - n) * z * (1.0 - z),  # z's pre-activation
                dn,  # the input half of n: x W_in + b_in
                dn * r,  # the recurrent half of n: h W_hn + b_hn
            ],
            axis=-1,
        )  # (B, 4H)
        return dh * z + d4 @ w4_t, d4

    dh0, d4 = jax.lax.scan(body, dh_T, (dhs, acts, h_prev), reverse=True, unroll=unroll)
    d2 = d4.reshape(T * B, 4 * H)
    # the input half's deltas are columns [0, 3H) of d4, the recurrent half's [0, 2H) + [3H, 4H):
    # products over all T B rows after the loop, columns picked from their small results
    g_h = h_prev.reshape(T * B, H).T @ d2  # (H, 4H)
    dw_h = jnp.concatenate([g_h[:, : 2 * H], g_h[:, 3 * H :]], axis=1)
    dw_i = (xs.reshape(T * B, -1).T @ d2)[:, : 3 * H]
    sums = column_sum(d2)  # (4H,), a GEMV (jaxdl.nn.bias)
    db_i = sums[: 3 * H]
    db_h = jnp.concatenate([sums[: 2 * H], sums[3 * H :]])
    dxs = d4[..., : 3 * H] @ w_i.T  # (T, B, in); dropped by XLA when xs is data
    return dw_i, dw_h, db_i, db_h, dh0, dxs


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _gru_layer(w_i, w_h, b_i, b_h, h0, xs, unroll):
    h, hs, _ = _gru_forward(w_i, w_h, b_i, b_h, h0, xs, unroll)
    return h, hs


_gru_layer.defvjp(_gru_layer_fwd, _gru_layer_bwd)


def gru_layer(
    params: dict[str, Array],
    h0: Array,
    xs: Array,
    *,
    unroll: int = 1,
    batch_splits: int = 1,
) -> tuple[Array, Array]:
    """A whole reset-after GRU layer (:class:`GRUCell` with ``reset_after=True``) over
    ``xs (T, B, in)``, with a backward pass written for it: ``(h_T, hs (T, B, H))``.

    The input half ``x W_i + b_i`` is one matmul before the loop. The forward loop keeps
    ``[r, z, n, h W_hn + b_hn]_t``; the reverse loop carries ``dL/dh`` and emits, per step, the
    deltas of the pre-activations, with :math:`\\bar h_t` the total gradient reaching ``h_t``:

    .. math::
        \\delta n &= \\bar h_t (1 - z_t)(1 - n_t^2), \\quad
        \\delta r = \\delta n\\, (h W_{hn} + b_{hn})_t\\, r_t (1 - r_t), \\quad
        \\delta z = \\bar h_t (h_{t-1} - n_t)\\, z_t (1 - z_t), \\\\
        \\bar h_{t-1} &\\mathrel{+}= \\bar h_t z_t + [\\delta r, \\delta z, r_t \\delta n]
            W_h^\\top .

    The input half's deltas are :math:`[\\delta r, \\delta z, \\delta n]`, the recurrent half's
    :math:`[\\delta r, \\delta z, r \\odot \\delta n]`; the weight and bias gradients are GEMMs
    (:math:`X^\\top \\Delta`, :math:`H_{prev}^\\top \\Delta`) and column sums over all ``T B``
    rows after the loop, as in :func:`lstm_layer`. ``batch_splits`` runs the batch as that many
    independent scans (``B`` must divide), as :func:`lstm_layer`'s.

    ``params``: ``w_i (in, 3H)``, ``w_h (H, 3H)``, ``b_i (3H,)``, ``b_h (3H,)`` (gates r, z, n).
    """
    w_i, w_h, b_i, b_h = params["w_i"], params["w_h"], params["b_i"], params["b_h"]
    B = xs.shape[1]
    if batch_splits < 1 or B % batch_splits:
        raise ValueError(
            f"gru_layer: batch_splits must be a positive divisor of the batch size {B}, "
            f"got {batch_splits}"
        )
    if batch_splits == 1:
        return _gru_layer(w_i, w_h, b_i, b_h, h0, xs, unroll)
    parts = [
        _gru_layer(w_i, w_h, b_i, b_h, h, x, unroll)
        for h, x in zip(
            jnp.split(h0, batch_splits), jnp.split(xs, batch_splits, axis=1), strict=True
        )
    ]
    h = jnp.concatenate([p[0] for p in parts])
    return h, jnp.concatenate([p[1] for p in parts], axis=1)


def flip_sequences(x: Array, seq_lengths: Array | None, time_axis: int = 1) -> Array:
    """Reverse each sequence over its own valid steps, leaving the padding at the end.

    ``out[b, t] = x[b, L_b - 1 - t]`` for ``t < L_b`` (padding positions are permuted among
    themselves). Applying it twice is the identity. Without ``seq_lengths`` it is ``jnp.flip``.
    """
    if seq_lengths is None:
        return jnp.flip(x, axis=time_axis)
    T = x.shape[time_axis]
    t = jnp.arange(T)
    batch_axis = 1 - time_axis  # time-major (T, B, ...) or batch-major (B, T, ...)
    lengths = jnp.expand_dims(seq_lengths, time_axis)  # (1, B) or (B, 1)
    t = jnp.expand_dims(t, batch_axis)  # (T, 1) or (1, T)
    idx = (lengths - 1 - t) % T  # valid: L-1-t; padding: T+L-1-t, stays in [L, T)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=time_axis)


def _where_tree(mask: Array, new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(mask, n, o), new, old)


def _validate_lengths(seq_lengths, batch: int, T: int) -> Array:
    if not isinstance(seq_lengths, jax.Array):
        seq_lengths = np.asarray(seq_lengths)
    if seq_lengths.shape != (batch,):
        raise ValueError(
            f"RNN: seq_lengths must have shape (batch,) = ({batch},), got {seq_lengths.shape}"
        )
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise ValueError(f"RNN: seq_lengths must be integers, got dtype {seq_lengths.dtype}")
    if not isinstance(seq_lengths, jax.core.Tracer) and seq_lengths.size:
        concrete = np.asarray(seq_lengths)  # NumPy, so the check also runs inside a jit trace
        lo, hi = int(concrete.min()), int(concrete.max())
        if lo < 0 or hi > T:
            raise ValueError(
                f"RNN: seq_lengths must lie in [0, T] = [0, {T}], got values in [{lo}, {hi}]"
            )
    return jnp.asarray(seq_lengths)


def _default_batch_splits(batch: int) -> int:
    """:func:`lstm_layer`'s ``batch_splits`` when :class:`RNN` is not told: on CPU, quarters of
    at least 16 rows (measured 1.3x at B = 128 on 2 cores); elsewhere one scan."""
    if jax.default_backend() == "cpu" and batch % 4 == 0 and batch // 4 >= 16:
        return 4
    return 1


RNN_IMPLS = ("auto", "scan", "lstm_layer", "gru_layer")


class RNN(nn.Module):
    """Run a cell over the time axis with one scan, as ``flax.linen.RNN``.

    ``x (B, T, in) -> y (B, T, H)``, or ``(carry, y)`` with ``return_carry=True``. For the jaxdl
    cells the input projection ``x W_i + b`` of all ``T`` steps can be one matmul outside the scan
    (``hoist_inputs``), leaving the scan body the recurrent product and the gates. Any other
    flax cell (one without ``weights``/``project``/``step``) is scanned step by step with
    ``nn.scan``.

    ``seq_lengths`` (shape ``(B,)``, values in ``[0, T]``) marks right-padded batches: past each
    sequence's end the carry is frozen (so the returned carry is the state after the last valid
    step) and the outputs are zero. With ``reverse=True`` each sequence is run backwards from its
    own last valid step (:func:`flip_sequences`); the outputs come back in processing order unless
    ``keep_order=True`` aligns them with the inputs (flax's semantics). Values of ``seq_lengths``
    are range-checked when concrete; under ``jit`` they are the caller's responsibility.

    ``unroll`` is passed to :func:`jax.lax.scan`: unrolling a few steps lets XLA fuse across step
    boundaries, at the cost of compile time.

    ``hoist_inputs`` chooses where the input projection happens: ``True`` computes ``x W_i + b``
    for all steps as one ``(T*B, in) @ (in, G)`` matmul before the scan (the cuDNN strategy; best
    on GPU/TPU, where the per-step matmuls are launch-bound); ``False`` does it inside the loop
    step by step. ``None`` (default) hoists, except on CPU for cells differentiated by JAX's
    autodiff (Elman, GRU, and an LSTM with ``seq_lengths``), where we measured the hoisted form
    1.1x to 2x slower for the course's ``LSTM(64)`` train step: XLA:CPU reads the ``(T, B, 4H)``
    buffer through a dynamic slice fused into the gate arithmetic, which costs more than the
    small ``(B, in) @ (in, 4H)`` matmul it saves (docs/experiments/lstm_step.md). Both forms
    compute the same function.

    ``impl`` chooses how a jaxdl cell is run, explicitly:

    * ``"scan"``: ``lax.scan`` over the cell's own ``step`` (differentiated by JAX).
    * ``"lstm_layer"``: :func:`lstm_layer`, the LSTM layer with its own backward pass (hoisted by
      default, measured faster that way on CPU too), with the batch in ``batch_splits``
      independent scans (``None``: 4 on CPU when each gets at least 16 rows, else 1). It computes
      :class:`LSTMCell`'s formula, so it is accepted only for a cell that runs that formula: an
      :class:`LSTMCell`, or a subclass that does not override ``step`` or ``project``; and only
      without ``seq_lengths`` (it does not mask). Anything else raises ``ValueError``.
    * ``"gru_layer"``: :func:`gru_layer`, the reset-after GRU with its own backward pass (input
      projection hoisted, ``batch_splits`` as above), accepted for a :class:`GRUCell` with
      ``reset_after=True`` (or a subclass that overrides neither ``step`` nor ``project``) and
      without ``seq_lengths``; anything else raises ``ValueError``. Opt-in: for the GRU(64)
      train step on CPU it measured on par with the scan (docs/performance.md).
    * ``"auto"`` (default): ``"lstm_layer"`` where it is accepted, else ``"scan"``. A subclass
      of :class:`LSTMCell` that overrides ``step`` (a peephole, a layer norm) is therefore run
      by its own ``step``, never silently by the plain LSTM's formula.
    """

    cell: nn.Module
    reverse: bool = False
    return_carry: bool = False
    unroll: int = 1
    keep_order: bool = False
    time_major: bool = False
    hoist_inputs: bool | None = None
    batch_splits: int | None = None
    impl: str = "auto"

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        init_key: Array | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ):
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order
        if self.unroll < 1:
            raise ValueError(f"RNN: unroll must be >= 1, got {self.unroll}")
        if self.impl not in RNN_IMPLS:
            raise ValueError(f"RNN: impl must be one of {RNN_IMPLS}, got {self.impl!r}")
        if inputs.ndim != 3:
            layout = "(time, batch, features)" if time_major else "(batch, time, features)"
            raise ValueError(f"RNN: inputs must have rank 3, {layout}; got shape {inputs.shape}")

        x = inputs if time_major else jnp.swapaxes(inputs, 0, 1)  # (T, B, in)
        T, B, n_in = x.shape
        if seq_lengths is not None:
            seq_lengths = _validate_lengths(seq_lengths, B, T)
        if reverse:
            x = flip_sequences(x, seq_lengths, time_axis=0)

        if initial_carry is None:
            key = jax.random.key(0) if init_key is None else init_key
            carry = self.cell.initialize_carry(key, (B, n_in))
        else:
            carry = initial_carry

        valid = None
        if seq_lengths is not None:
            valid = (jnp.arange(T)[:, None] < seq_lengths[None, :])[..., None]  # (T, B, 1)

        if all(hasattr(self.cell, a) for a in ("weights", "project", "step")):
            carry, ys = self._scan_fused(x, carry, valid, self._layer_applies(valid))
        else:
            if self.impl in ("lstm_layer", "gru_layer"):
                raise ValueError(
                    f"RNN: impl='{self.impl}' runs jaxdl's "
                    f"{'LSTMCell' if self.impl == 'lstm_layer' else 'GRUCell'} formula; got a "
                    f"{type(self.cell).__name__}, use impl='scan' or 'auto'"
                )
            carry, ys = self._scan_generic(x, carry, valid)

        if reverse and keep_order:
            ys = flip_sequences(ys, seq_lengths, time_axis=0)
        if not time_major:
            ys = jnp.swapaxes(ys, 0, 1)  # (B, T, H)
        return (carry, ys) if return_carry else ys

    def _layer_applies(self, valid: Array | None) -> str | None:
        """Which whole-layer implementation this run takes (``"lstm_layer"``, ``"gru_layer"`` or
        None for the scan): ``impl`` decides, checked against the cell."""
        if self.impl == "scan":
            return None
        cls = type(self.cell)
        if self.impl == "gru_layer":  # opt-in: on par with the scan for GRU(64) on CPU
            name, base = "gru_layer", GRUCell
        else:
            name, base = "lstm_layer", LSTMCell
        why = None
        if not issubclass(cls, base):
            why = f"it runs {base.__name__}'s formula, and the cell is a {cls.__name__}"
        elif cls.step is not base.step or cls.project is not base.project:
            why = (
                f"{cls.__name__} overrides {base.__name__}'s step or project, which it would bypass"
            )
        elif base is GRUCell and not self.cell.reset_after:
            why = "it runs the reset-after GRU, and the cell has reset_after=False"
        elif valid is not None:
            why = "it does not mask padded steps (seq_lengths given)"
        if why is not None and self.impl == name:
            raise ValueError(f"RNN: impl='{name}' does not apply: {why}; use impl='scan'")
        return name if why is None else None

    def _scan_fused(self, x: Array, carry: Carry, valid: Array | None, layer: str | None):
        cell = self.cell
        params = cell.weights(x.shape[-1])
        if cell.dtype is not None:
            x = x.astype(cell.dtype)
        # the zero carry is made in param_dtype; the scan needs it in the computation dtype
        dtype = jnp.result_type(x.dtype, params["w_h"].dtype)
        carry = jax.tree_util.tree_map(lambda c: c.astype(dtype), carry)

        if layer is not None:  # a layer with its own backward pass (checked in _layer_applies)
            splits = self.batch_splits
            if splits is None:
                splits = _default_batch_splits(x.shape[1])
            if layer == "gru_layer":  # always hoisted (measured below for the LSTM)
                return gru_layer(params, carry, x, unroll=self.unroll, batch_splits=splits)
            # hoisted by default on every backend here: with lstm_layer's backward the hoisted
            # form measured 1.06x faster on CPU too (docs/performance.md)
            hoist = True if self.hoist_inputs is None else self.hoist_inputs
            return lstm_layer(
                params, carry, x, hoist=hoist, unroll=self.unroll, batch_splits=splits
            )

        hoist = self.hoist_inputs
        if hoist is None:
            hoist = jax.default_backend() != "cpu"

        if hoist:
            xs = cell.project(params, x)  # (T, B, G): every step's input half in one matmul

            def advance(c, x_t):
                return cell.step(params, c, x_t)
        else:
            xs = x  # (T, B, in): project one step at a time inside the loop

            def advance(c, x_t):
                return cell.step(params, c, cell.project(params, x_t))

        if valid is None:
            return jax.lax.scan(advance, carry, xs, unroll=self.unroll)

        def masked(c, inp):
            x_t, v = inp
            new_c, y = advance(c, x_t)
            return _where_tree(v, new_c, c), jnp.where(v, y, jnp.zeros_like(y))

        return jax.lax.scan(masked, carry, (xs, valid), unroll=self.unroll)

    def _scan_generic(self, x: Array, carry: Carry, valid: Array | None):
        if valid is None:
            valid = jnp.ones(x.shape[:2] + (1,), bool)

        def body(cell, c, inp):
            x_t, v = inp
            new_c, y = cell(c, x_t)
            return _where_tree(v, new_c, c), jnp.where(v, y, jnp.zeros_like(y))

        scan = nn.scan(
            body,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            unroll=self.unroll,
        )
        return scan(self.cell, carry, (x, valid))


_MERGES: dict[str, Callable[[Array, Array], Array]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: 0.5 * (a + b),
}


class Bidirectional(nn.Module):
    """Run ``forward_rnn`` forwards and ``backward_rnn`` backwards and merge, as flax's layer.

    The backward RNN runs over each sequence's valid steps from the last one to the first
    (``reverse=True, keep_order=True``), so its output at step ``t`` summarises ``x[t:L]`` and is
    aligned with the input. ``merge``: ``"concat"`` (``(B, T, 2H)``, forward half first), ``"sum"``,
    ``"mul"``, ``"ave"`` (Keras's merge modes) or a callable ``(fwd, bwd) -> y``. The carry is
    ``(forward_carry, backward_carry)``; the backward carry is the state after reading ``x[0]``.
    """

    forward_rnn: nn.Module
    backward_rnn: nn.Module
    merge: str | Callable[[Array, Array], Array] = "concat"
    return_carry: bool = False
    time_major: bool = False

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        init_key: Array | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ):
        # reverse/keep_order are accepted for flax's RNNBase protocol; they mean nothing here
        del reverse, keep_order
        if callable(self.merge):
            merge_fn = self.merge
        elif self.merge in _MERGES:
            merge_fn = _MERGES[self.merge]
        else:
            raise ValueError(
                f"Bidirectional: merge must be one of {sorted(_MERGES)} or a callable, "
                f"got {self.merge!r}"
            )
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        kf = kb = None
        if init_key is not None:
            kf, kb = jax.random.split(init_key)
        cf = cb = None
        if initial_carry is not None:
            cf, cb = initial_carry
        carry_f, y_f = self.forward_rnn(
            inputs,
            initial_carry=cf,
            init_key=kf,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=False,
        )
        carry_b, y_b = self.backward_rnn(
            inputs,
            initial_carry=cb,
            init_key=kb,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=True,
            keep_order=True,
        )
        y = jax.tree_util.tree_map(merge_fn, y_f, y_b)
        return ((carry_f, carry_b), y) if return_carry else y


class StackedRNN(nn.Module):
    """Layers (:class:`RNN` or :class:`Bidirectional`) applied in turn, dropout between them.

    ``y = L_n(D(... D(L_1(x))))`` where ``D`` is dropout with ``dropout_rate`` on each layer's
    output sequence except the last one's (PyTorch's ``nn.LSTM(num_layers, dropout=...)``). It is
    active only with ``train=True`` and draws from the ``'dropout'`` rng stream. ``seq_lengths`` is
    passed to every layer; padded outputs stay zero. With ``return_carry`` the carry is the tuple of
    the layers' final carries.
    """

    layers: Sequence[nn.Module]
    dropout_rate: float = 0.0
    return_carry: bool = False

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        seq_lengths: Array | None = None,
        train: bool = False,
        return_carry: bool | None = None,
    ):
        if not self.layers:
            raise ValueError("StackedRNN: layers must be a non-empty sequence of RNN layers")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"StackedRNN: dropout_rate must be in [0, 1), got {self.dropout_rate}")
        return_carry = self.return_carry if return_carry is None else return_carry
        x, carries = inputs, []
        for k, layer in enumerate(self.layers):
            carry, x = layer(x, seq_lengths=seq_lengths, return_carry=True)
            carries.append(carry)
            if k + 1 < len(self.layers) and self.dropout_rate > 0.0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return (tuple(carries), x) if return_carry else x
