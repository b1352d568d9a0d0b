"""Scaled dot-product and multi-head attention (Vaswani et al. 2017, "Attention is all you need").

For queries ``q (Tq, d)``, keys ``k (Tk, d)`` and values ``v (Tk, d_v)`` of one head,

.. math::

    \\operatorname{Attention}(q, k, v) = \\operatorname{softmax}\\!\\Big(\\frac{q k^\\top}{\\sqrt{d}}
    + \\text{mask}\\Big)\\, v,

where the mask adds a very large negative number to the logits of the key positions a query may not
attend. :class:`MultiHeadAttention` runs ``num_heads`` of these in parallel on learned projections
of the inputs and mixes their outputs with one more projection. Its parameters are laid out exactly
as :class:`flax.linen.MultiHeadDotProductAttention`'s, so the same ``params`` dict works in both.

The derivation (the soft dictionary lookup, the ``1/sqrt(d)`` variance argument, heads as parallel
subspaces, causal masks) is in ``docs/derivations/attention.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.nn.bias import bias_add
from jaxdl.nn.linear import flat_matmul

Array = jax.Array
Initializer = Callable[..., Array]

__all__ = [
    "MultiHeadAttention",
    "attention_weights",
    "causal_blocks",
    "causal_dot_product_attention",
    "causal_mask",
    "dot_product_attention",
]


def _large_negative(dtype: Any) -> Array:
    # Finite, not -inf: a query whose every key is masked then gets uniform weights instead of
    # NaN (0/0), the convention of jax.nn.dot_product_attention, so both paths agree everywhere.
    return jnp.asarray(-0.7 * float(jnp.finfo(dtype).max), dtype)


def causal_mask(length: int, key_length: int | None = None, offset: int | Array = 0) -> Array:
    """Boolean ``(1, 1, length, key_length)`` mask, True where query ``i`` may see key ``j``:
    ``j <= i + offset`` (``offset`` = number of earlier positions already in a cache)."""
    key_length = length if key_length is None else key_length
    q = jnp.arange(length)[:, None] + offset  # (Tq, 1) absolute positions
    return (jnp.arange(key_length)[None, :] <= q)[None, None]  # (1, 1, Tq, Tk)


def attention_weights(query: Array, key: Array, mask: Array | None = None) -> Array:
    """The plain formula's weights ``softmax(q k^T / sqrt(d) + mask)``.

    Args:
      query: ``(B, Tq, N, d)``; key: ``(B, Tk, N, d)``; mask: bool, broadcastable to
        ``(B, N, Tq, Tk)``, True = may attend.

    Returns:
      ``(B, N, Tq, Tk)``, each row summing to one (computed in float32 at least).
    """
    d = query.shape[-1]
    logits = jnp.einsum("bqnd,bknd->bnqk", query, key) / np.sqrt(d).astype(query.dtype)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if mask is not None:
        logits = jnp.where(mask, logits, _large_negative(logits.dtype))
    return jax.nn.softmax(logits, axis=-1)


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> Array:
    """The plain formula ``softmax(q k^T / sqrt(d) + mask) v`` with optional dropout on the weights.

    Shapes as :func:`jax.nn.dot_product_attention`: ``query (B, Tq, N, d)``, ``key (B, Tk, N, d)``,
    ``value (B, Tk, N, d_v)`` -> ``(B, Tq, N, d_v)``. Dropout zeroes each weight with probability
    ``dropout_rate`` and scales the survivors by ``1 / (1 - dropout_rate)`` (inverted dropout), so
    the expected output is unchanged.
    """
    w = attention_weights(query, key, mask)  # (B, N, Tq, Tk)
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("dropout_rate > 0 needs dropout_rng")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, w.shape)
        w = jnp.where(keep, w / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bnqk,bknd->bqnd", w.astype(value.dtype), value)


def causal_blocks(length: int) -> int:
    """How many query blocks :func:`causal_dot_product_attention` splits ``length`` queries into:
    4 from 128 queries, 2 from 64, else 1 (measured on XLA:CPU, B=32, T=128, 8 heads of 32: the
    gradient of the full formula 35 ms, 2 blocks 27 ms, 4 blocks 25 ms, 8 blocks 30 ms)."""
    return 4 if length >= 128 else 2 if length >= 64 else 1


def causal_dot_product_attention(
    query: Array, key: Array, value: Array, num_blocks: int | None = None
) -> Array:
    """Causal self-attention that skips the key blocks every query of a block has masked out.

    The causal mask is lower-triangular, so splitting the ``T`` queries into ``n`` consecutive
    blocks, block ``i`` (queries ``[s_i, e_i)``) can only see keys ``[0, e_i)``. Each block is
    :func:`dot_product_attention` of its queries against that prefix, with the causal mask
    offset by ``s_i``. The masked logits the full
    formula computes get weight exactly 0 there (:func:`attention_weights` gives them a finite
    large negative logit, whose exponential underflows to 0), so both compute the same values; the
    blocked form does ``(n + 1) / (2 n)`` of the work (5/8 with 4 blocks) in its products and
    softmax, forward and backward.

    Shapes as :func:`dot_product_attention` with ``Tq == Tk``; ``num_blocks`` defaults to
    :func:`causal_blocks` ``(T)``. There is no further mask: a query whose keys were all masked
    would get uniform weights over its prefix here but over all ``T`` keys in the full formula.
    """
    t = query.shape[1]
    if key.shape[1] != t:
        raise ValueError(f"causal self-attention needs as many keys as queries, got {key.shape[1]} "
                         f"keys for {t} queries")  # fmt: skip
    n = causal_blocks(t) if num_blocks is None else int(num_blocks)
    if not 1 <= n <= t:
        raise ValueError(f"num_blocks must be in [1, {t}], got {num_blocks}")
    bounds = np.linspace(0, t, n + 1).round().astype(int)
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        m = causal_mask(int(e - s), int(e), int(s))  # (1, 1, e - s, e)
        outs.append(dot_product_attention(query[:, s:e], key[:, :e], value[:, :e], m))
    return outs[0] if n == 1 else jnp.concatenate(outs, axis=1)


class _Projection(nn.Module):
    """A linear map contracting the trailing ``len(in_shape)`` axes of its input, with the kernel
    shaped ``in_shape + out_shape`` (flax.linen.DenseGeneral's layout, so names and shapes match)."""

    out_shape: tuple[int, ...]
    in_axes: int
    use_bias: bool
    kernel_init: Initializer
    bias_init: Initializer
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[x.ndim - self.in_axes :]
        fan_in = int(np.prod(in_shape))
        fan_out = int(np.prod(self.out_shape))
        # Initialise as the flattened (fan_in, fan_out) matrix, as DenseGeneral does, so the
        # initialiser's fan-in is the true one.
        kernel = self.param(
            "kernel",
            lambda k, s: self.kernel_init(k, (fan_in, fan_out)).reshape(s),
            in_shape + self.out_shape,
        )
        dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
        x2 = x.reshape(x.shape[: x.ndim - self.in_axes] + (fan_in,)).astype(dtype)
        y = flat_matmul(x2, kernel.reshape(fan_in, fan_out).astype(dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, self.out_shape)
            y = bias_add(y, bias.reshape(fan_out).astype(dtype))  # its gradient is a GEMV
        return y.reshape(y.shape[:-1] + self.out_shape)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, section 3.2.2).

    With ``H = num_heads``, ``d = qkv_features / H`` and inputs ``x_q (B, Tq, D_q)``,
    ``x_kv (B, Tk, D_kv)``::

        q_h = x_q W_q[:, h] + b_q[h]                       # (B, Tq, d)   per head h
        k_h = x_kv W_k[:, h] + b_k[h];  v_h = x_kv W_v[:, h] + b_v[h]
        o_h = softmax(q_h k_h^T / sqrt(d) + mask) v_h      # (B, Tq, d)
        y = sum_h o_h W_o[h] + b_o                         # (B, Tq, out_features)

    Parameters (identical to :class:`flax.linen.MultiHeadDotProductAttention`'s)::

        query/key/value: kernel (D, H, d), bias (H, d)
        out:             kernel (H, d, out_features), bias (out_features,)

    Attributes:
      num_heads: ``H``; must divide ``qkv_features``.
      qkv_features: total width of the queries/keys/values (default: the query's feature size).
      out_features: output width (default: the query's feature size).
      dropout_rate: dropout on the attention weights, applied only when ``train=True`` and drawn
        from the ``'dropout'`` rng stream (``apply(..., rngs={'dropout': key})``).
      use_bias: whether the four projections have biases.
      kernel_init / out_kernel_init / bias_init: initialisers (``out_kernel_init`` defaults to
        ``kernel_init``; GPT-2 scales its residual projections separately).
      dtype: computation dtype (``None``: from inputs and params); params stay float32.
      implementation: ``"fused"`` runs :func:`jax.nn.dot_product_attention` (cuDNN flash attention
        on GPU where it applies, XLA's fused version elsewhere); ``"plain"`` runs the formula as
        two einsums and a softmax (:func:`attention_weights`); ``None`` (default) picks ``"fused"``
        on accelerators and ``"plain"`` on CPU, where the fused op's gradient measured 2-3x slower
        than the plain formula's (B=16, T=128, 4 heads of 16: 80 vs 30-50 ms, XLA:CPU, jax 0.10).

    Dropout (``train=True``) and sowing the weights (when the ``'intermediates'`` collection is
    mutable: ``apply(..., mutable='intermediates')`` returns them as ``attention_weights``, shape
    ``(B, heads, Tq, Tk)``) always use the plain formula. Causal self-attention on the plain path
    without a further mask skips the key blocks the causal mask hides
    (:func:`causal_dot_product_attention`). The tests show
    all paths agree.
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    out_kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    implementation: str | None = None

    def _check_config(self, features: int) -> tuple[int, int]:
        if not isinstance(self.num_heads, int | np.integer) or self.num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {self.num_heads!r}")
        qkv = self.qkv_features if self.qkv_features is not None else features
        if qkv <= 0 or qkv % self.num_heads:
            raise ValueError(
                f"qkv_features ({qkv}) must be a positive multiple of num_heads ({self.num_heads})"
            )
        if self.out_features is not None and self.out_features <= 0:
            raise ValueError(f"out_features must be positive, got {self.out_features}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.implementation not in (None, "fused", "plain"):
            raise ValueError(
                f"implementation must be None, 'fused' or 'plain', got {self.implementation!r}"
            )
        return qkv, qkv // self.num_heads

    def _project(self, name: str, x: Array, head_dim: int) -> Array:
        return _Projection(
            (self.num_heads, head_dim),
            1,
            self.use_bias,
            self.kernel_init,
            self.bias_init,
            self.dtype,
            name=name,
        )(x)

    def _output(self, o: Array, features: int) -> Array:
        out = self.out_features if self.out_features is not None else features
        return _Projection(
            (out,),
            2,
            self.use_bias,
            self.out_kernel_init or self.kernel_init,
            self.bias_init,
            self.dtype,
            name="out",
        )(o)

    def _attend(self, q, k, v, mask, train: bool, causal: bool) -> Array:
        use_dropout = train and self.dropout_rate > 0.0
        impl = self.implementation or ("plain" if jax.default_backend() == "cpu" else "fused")
        sowing = self.is_mutable_collection("intermediates")
        blocked = mask is None and q.shape[1] == k.shape[1]
        if causal and blocked and impl == "plain" and not use_dropout and not sowing:
            return causal_dot_product_attention(q, k, v)
        if use_dropout or impl == "plain" or sowing:
            if causal:
                causal_m = causal_mask(q.shape[1], k.shape[1])
                mask = causal_m if mask is None else jnp.logical_and(mask, causal_m)
            w = attention_weights(q, k, mask)  # (B, N, Tq, Tk)
            if sowing:
                self.sow("intermediates", "attention_weights", w)
            if use_dropout:
                keep = jax.random.bernoulli(
                    self.make_rng("dropout"), 1.0 - self.dropout_rate, w.shape
                )
                w = jnp.where(keep, w / (1.0 - self.dropout_rate), 0.0)
            return jnp.einsum("bnqk,bknd->bqnd", w.astype(v.dtype), v)
        # The fast path: one fused op (cuDNN's flash attention on GPU when shapes allow).
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        mask: Array | None = None,
        train: bool = False,
        *,
        causal: bool = False,
        cache: tuple[Array, Array] | None = None,
        cache_index: int | Array | None = None,
    ) -> Array | tuple[Array, tuple[Array, Array]]:
        """Attend from ``inputs_q (B, Tq, D)`` to ``inputs_kv (B, Tk, D_kv)`` (default: itself).

        Args:
          inputs_q: queries' inputs, rank 3.
          inputs_kv: keys' and values' inputs, rank 3 with the same batch; ``None`` for
            self-attention.
          mask: bool, broadcastable to ``(B, num_heads, Tq, Tk)``; True = may attend.
          train: enables dropout on the attention weights.
          causal: additionally mask keys after the query's position (``j > i``), as a decoder does.
          cache: for incremental decoding (self-attention only), ``(k, v)`` buffers of shape
            ``(B, L, num_heads, head_dim)`` holding the keys and values of positions
            ``0 .. cache_index - 1``; this call's keys and values are written at ``cache_index``
            and the queries attend causally to everything written so far. The return value is
            then ``(output, (k, v))`` with the updated buffers.
          cache_index: the absolute position of ``inputs_q[:, 0]`` when ``cache`` is given.

        Returns:
          ``(B, Tq, out_features or D)``, or ``(output, cache)`` when ``cache`` is given.
        """
        if inputs_q.ndim != 3:
            raise ValueError(f"inputs_q must be (batch, length, features), got {inputs_q.shape}")
        if cache is not None and inputs_kv is not None:
            raise ValueError("cache is for self-attention: pass inputs_kv=None")
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        if inputs_kv.ndim != 3 or inputs_kv.shape[0] != inputs_q.shape[0]:
            raise ValueError(
                f"inputs_kv must be (batch, length, features) with batch {inputs_q.shape[0]}, "
                f"got {inputs_kv.shape}"
            )
        features = inputs_q.shape[-1]
        _, head_dim = self._check_config(features)
        b, tq, tk = inputs_q.shape[0], inputs_q.shape[1], inputs_kv.shape[1]
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.dtype != jnp.bool_:
                raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
            target = (b, self.num_heads, tq, tk if cache is None else cache[0].shape[1])
            try:
                ok = mask.ndim <= 4 and jnp.broadcast_shapes(mask.shape, target) == target
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"mask of shape {mask.shape} does not broadcast to {target}")
            mask = jnp.broadcast_to(mask, target)

        q = self._project("query", inputs_q, head_dim)  # (B, Tq, N, d)
        k = self._project("key", inputs_kv, head_dim)  # (B, Tk, N, d)
        v = self._project("value", inputs_kv, head_dim)  # (B, Tk, N, d)

        if cache is None:
            o = self._attend(q, k, v, mask, train, causal)  # (B, Tq, N, d)
            return self._output(o, features)

        if cache_index is None:
            raise ValueError("cache needs cache_index (the position of inputs_q[:, 0])")
        ck, cv = cache
        expected = (b, ck.shape[1], self.num_heads, head_dim)
        if ck.shape != expected or cv.shape != expected:
            raise ValueError(f"cache buffers must be {expected}, got {ck.shape}, {cv.shape}")
        zero = jnp.zeros((), jnp.int32)
        idx = jnp.asarray(cache_index, jnp.int32)
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (zero, idx, zero, zero))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (zero, idx, zero, zero))
        # Query i (absolute position idx + i) sees cache slots j <= idx + i: the causal mask,
        # which also hides the slots not yet written.
        step_mask = causal_mask(tq, ck.shape[1], idx)
        mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
        o = self._attend(q, ck.astype(q.dtype), cv.astype(q.dtype), mask, train, False)
        return self._output(o, features), (ck, cv)
