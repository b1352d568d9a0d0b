"""Transformers: a decoder-only language model (GPT-2) and a Vision Transformer (ViT), with
KV-cache sampling for the first.

* :class:`GPT` follows Radford et al. 2019 (GPT-2): token and learned position embeddings, pre-LN
  blocks ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``, a final LayerNorm, and logits through the
  token embedding's transpose (tied output). ``GPT(50257, 1024, 12, 12, 768)`` has GPT-2 small's
  124,439,808 parameters.
* :class:`ViT` follows Dosovitskiy et al. 2021 in torchvision's layout (``vit_b_16``):
  ``ViT(224, 16, 12, 12, 768, 3072, 1000)`` has 86,567,656 parameters.
* :func:`generate` samples from a GPT, greedily or with temperature and top-k, with a key/value
  cache inside one jitted ``lax.scan``.

The maths (attention, masks, positions, pre-LN) is derived in ``docs/derivations/attention.md``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.nn.attention import MultiHeadAttention
from jaxdl.nn.linear import Dense, flat_matmul
from jaxdl.nn.normalization import LayerNorm

Array = jax.Array
Cache = list[tuple[Array, Array]]

__all__ = ["GPT", "ViT", "generate", "init_cache"]


def _check_positive(**kwargs: Any) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")


# ----------------------------------------------------------------------------------------- GPT


NORM_POSITIONS = ("pre", "post")


class GPTBlock(nn.Module):
    """One decoder block; pre-LN (GPT-2, the default)::

        x = x + Dropout(attn(ln_1(x), causal))     # attn: MultiHeadAttention, out kernel scaled
        x = x + Dropout(proj(gelu(fc(ln_2(x)))))   # fc: D -> 4D, proj: 4D -> D

    or post-LN (``norm_position="post"``, the original Transformer, Vaswani et al. 2017)::

        x = ln_1(x + Dropout(attn(x, causal)))
        x = ln_2(x + Dropout(proj(gelu(fc(x)))))

    Params: ``ln_1``, ``attn`` (query/key/value/out), ``ln_2``, ``fc``, ``proj``.
    """

    num_heads: int
    num_layers: int  # for GPT-2's 1/sqrt(2 L) scaling of the residual projections' init
    dropout_rate: float = 0.0
    dtype: Any = None
    norm_position: str = "pre"

    @nn.compact
    def __call__(self, x: Array, train: bool, cache=None, cache_index=None):
        d = x.shape[-1]
        init = nn.initializers.normal(0.02)
        resid_init = nn.initializers.normal(0.02 / np.sqrt(2 * self.num_layers))
        attn = MultiHeadAttention(
            self.num_heads,
            dropout_rate=self.dropout_rate,
            kernel_init=init,
            out_kernel_init=resid_init,
            dtype=self.dtype,
            name="attn",
        )
        ln_1 = LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_1")
        ln_2 = LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_2")
        pre = self.norm_position == "pre"
        h = ln_1(x) if pre else x
        if cache is None:
            h = attn(h, train=train, causal=True)  # (B, T, D)
        else:
            h, cache = attn(h, train=train, cache=cache, cache_index=cache_index)
        x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        x = x if pre else ln_1(x)
        h = ln_2(x) if pre else x
        h = Dense(4 * d, kernel_init=init, dtype=self.dtype, store_cotangent=True, name="fc")(h)
        h = nn.gelu(h, approximate=True)  # GPT-2's tanh approximation
        h = Dense(d, kernel_init=resid_init, dtype=self.dtype, name="proj")(h)  # (B, T, D)
        x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        x = x if pre else ln_2(x)
        return x if cache is None else (x, cache)


class GPT(nn.Module):
    """Decoder-only Transformer language model with GPT-2's layout (Radford et al. 2019).

    ``__call__(tokens (B, T) int, train) -> logits (B, T, vocab_size)``, ``T <= block_size``::

        x = wte[tokens] + wpe[:T]                         # (B, T, D)
        x = block_L(... block_1(Dropout(x)))              # pre-LN blocks, causal self-attention
        logits = ln_f(x) @ wte^T                          # tied output (no separate head)

    Position ``t``'s logits depend only on tokens ``0 .. t`` (the causal mask). Parameters:
    ``wte/embedding (V, D)``, ``wpe (block_size, D)``, ``h_0 .. h_{L-1}`` (:class:`GPTBlock`),
    ``ln_f``. Initialisation is GPT-2's: normal(0.02), residual projections normal(0.02 /
    sqrt(2L)), zero biases.

    Incremental decoding: ``apply(variables, tokens, cache=cache, cache_index=i)`` runs ``tokens``
    as positions ``i, i+1, ...`` against a key/value cache (:func:`init_cache`) and returns
    ``(logits, cache)``; :func:`generate` uses it.

    Attributes:
      vocab_size, block_size (longest context), num_layers, num_heads, embed_dim (``D``, divisible
      by ``num_heads``), dropout_rate (embeddings, attention weights and residual branches, train
      only, ``'dropout'`` rng stream), dtype (computation dtype; params stay float32).
      norm_position: ``"pre"`` (GPT-2's blocks and final ``ln_f``, the default) or ``"post"``
        (the original Transformer's LayerNorm after each residual addition, :class:`GPTBlock`;
        the last block's output is already normalised, so there is no ``ln_f``). Post-LN is here
        for comparison: it tolerates smaller peak learning rates than pre-LN (Xiong et al. 2020);
        ``experiments/layernorm_warmup.py`` measures that, and that with Adam both still want a
        warm-up.
    """

    vocab_size: int
    block_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    dropout_rate: float = 0.0
    dtype: Any = None
    norm_position: str = "pre"

    def _check(self) -> None:
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}"
            )
        _check_positive(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            embed_dim=self.embed_dim,
        )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        _check_rate(self.dropout_rate)

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        train: bool = False,
        *,
        cache: Cache | None = None,
        cache_index: int | Array | None = None,
    ) -> Array | tuple[Array, Cache]:
        self._check()
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be (batch, length) integers, got {tokens.shape} "
                             f"{tokens.dtype}")  # fmt: skip
        t = tokens.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        if cache is not None and (cache_index is None or len(cache) != self.num_layers):
            raise ValueError("cache needs cache_index and one (k, v) pair per layer")
        wte = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=nn.initializers.normal(0.02),
            dtype=self.dtype,
            name="wte",
        )
        wpe = self.param("wpe", nn.initializers.normal(0.02), (self.block_size, self.embed_dim))
        start = 0 if cache is None else jnp.asarray(cache_index, jnp.int32)
        pos = jax.lax.dynamic_slice_in_dim(wpe, start, t, axis=0)  # (T, D)
        x = wte(tokens) + pos[None]  # (B, T, D)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        new_cache = []
        for i in range(self.num_layers):
            block = GPTBlock(
                self.num_heads,
                self.num_layers,
                self.dropout_rate,
                self.dtype,
                self.norm_position,
                name=f"h_{i}",
            )
            if cache is None:
                x = block(x, train)
            else:
                x, layer_cache = block(x, train, cache[i], start)
                new_cache.append(layer_cache)
        if self.norm_position == "pre":
            x = LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_f")(x)
        # Tied output: wte.attend(x), as one flattened GEMM (jaxdl.nn.flat_matmul).
        dtype = self.dtype or jnp.result_type(x, wte.embedding)  # as flax's Embed.attend
        logits = flat_matmul(x.astype(dtype), wte.embedding.T.astype(dtype))
        logits = logits.astype(jnp.float32)  # (B, T, V)
        return logits if cache is None else (logits, new_cache)


def init_cache(model: GPT, batch_size: int, dtype: Any = jnp.float32) -> Cache:
    """Empty key/value buffers for ``model``: one ``(k, v)`` pair per layer, each
    ``(batch_size, block_size, num_heads, embed_dim // num_heads)``."""
    shape = (batch_size, model.block_size, model.num_heads, model.embed_dim // model.num_heads)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(model.num_layers)]


def _pick(logits: Array, key: Array, temperature: float, top_k: int | None) -> Array:
    """Next tokens ``(B,)`` from last-position logits ``(B, V)``."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1) the k-th largest
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 3, 5, 6, 7))
def _generate(model, params, prompt, max_new_tokens, key, temperature, top_k, use_cache):
    b, p = prompt.shape
    keys = jax.random.split(key, max_new_tokens)
    variables = {"params": params}
    if use_cache:
        cache = init_cache(model, b)
        logits, cache = model.apply(variables, prompt, cache=cache, cache_index=0)  # prefill
        first = _pick(logits[:, -1], keys[0], temperature, top_k)

        def step(carry, k):
            tok, cache, index = carry
            logits, cache = model.apply(variables, tok[:, None], cache=cache, cache_index=index)
            nxt = _pick(logits[:, -1], k, temperature, top_k)
            return (nxt, cache, index + 1), nxt

        _, rest = jax.lax.scan(step, (first, cache, jnp.int32(p)), keys[1:])
        new = jnp.concatenate([first[:, None], rest.T], axis=1)  # (B, max_new_tokens)
        return jnp.concatenate([prompt, new.astype(prompt.dtype)], axis=1)

    # Without a cache: re-run the whole (padded) sequence every step. Causality makes the
    # padding after position t irrelevant to the logits at t, so this is the textbook loop.
    total = p + max_new_tokens
    buf = jnp.zeros((b, total), prompt.dtype).at[:, :p].set(prompt)

    def step_full(buf, inputs):
        t, k = inputs  # t: number of tokens known
        logits = model.apply(variables, buf)  # (B, total, V)
        last = jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)
        nxt = _pick(last, k, temperature, top_k).astype(buf.dtype)
        return jax.lax.dynamic_update_slice(buf, nxt[:, None], (0, t)), None

    buf, _ = jax.lax.scan(step_full, buf, (jnp.arange(p, total), keys))
    return buf


def generate(
    model: GPT,
    params: Any,
    prompt: Array,
    max_new_tokens: int,
    key: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
) -> Array:
    """Sample ``max_new_tokens`` tokens after ``prompt`` from a :class:`GPT`.

    Each new token is drawn from ``softmax(logits_t / temperature)`` restricted to the ``top_k``
    most likely tokens (all when ``None``); ``temperature=0`` is greedy decoding (argmax). With
    ``use_cache`` (the default) the prompt is run once to fill a key/value cache and each further
    token costs one position's forward pass, all inside one jitted ``lax.scan``
    (O(T) work per token instead of O(T^2)); ``use_cache=False`` re-runs the whole sequence for
    every token and gives the same tokens (the tests check it).

    Args:
      model: a GPT (dropout is off: sampling runs with ``train=False``).
      params: its ``params`` collection.
      prompt: ``(B, P)`` integer tokens, ``P >= 1``, ``P + max_new_tokens <= block_size``.
      max_new_tokens: number of tokens to add, ``>= 1``.
      key: PRNG key; token ``i`` uses ``jax.random.split(key, max_new_tokens)[i]``.
      temperature: ``>= 0``; 0 means greedy.
      top_k: keep only the ``top_k`` largest logits before sampling (``1 <= top_k <= V``).
      use_cache: KV-cache decoding (True) or full re-computation (False).

    Returns:
      ``(B, P + max_new_tokens)``: the prompt followed by the sampled tokens.
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be (batch, length >= 1) integers, got {prompt.shape} "
                         f"{prompt.dtype}")  # fmt: skip
    _check_positive(max_new_tokens=max_new_tokens)
    if prompt.shape[1] + max_new_tokens > model.block_size:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
            f"block_size {model.block_size}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= model.vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={model.vocab_size}], got {top_k}")
    return _generate(
        model, params, prompt, max_new_tokens, key, float(temperature), top_k, bool(use_cache)
    )


# ----------------------------------------------------------------------------------------- ViT


class EncoderBlock(nn.Module):
    """torchvision's ``EncoderBlock`` (pre-LN)::

        x = x + Dropout(self_attention(ln_1(x)))
        x = x + mlp_3(Dropout(gelu(mlp_0(ln_2(x)))))  -> Dropout

    LayerNorm eps 1e-6, exact (erf) GELU, as torchvision.
    """

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        d = x.shape[-1]
        drop = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)
        h = LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln_1")(x)
        h = MultiHeadAttention(
            self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype,
            name="self_attention",
        )(h, train=train)
        x = x + drop()(h)
        h = LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln_2")(x)
        dense_init = nn.initializers.xavier_uniform()
        bias_init = nn.initializers.normal(1e-6)
        h = Dense(self.mlp_dim, kernel_init=dense_init, bias_init=bias_init,
                     dtype=self.dtype, store_cotangent=True, name="mlp_0")(h)  # fmt: skip
        h = drop()(nn.gelu(h, approximate=False))  # (B, N + 1, mlp_dim)
        h = Dense(d, kernel_init=dense_init, bias_init=bias_init,
                     dtype=self.dtype, name="mlp_3")(h)  # fmt: skip
        return x + drop()(h)


class ViTEncoder(nn.Module):
    """torchvision's ``Encoder``: add ``pos_embedding (1, N + 1, D)``, dropout, the blocks
    ``encoder_layer_i``, then LayerNorm ``ln`` (eps 1e-6)."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos)
        for i in range(self.num_layers):
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                self.attention_dropout_rate,
                self.dtype,
                name=f"encoder_layer_{i}",
            )(x, train)
        return LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln")(x)


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021), torchvision's ``VisionTransformer`` layout.

    ``__call__(images (B, H, W, C) NHWC, train) -> logits (B, num_classes)``, ``H = W =
    image_size``::

        x = patches(images) @ conv_proj + b        # (B, N, D), N = (image_size / patch_size)^2
        x = concat([class_token, x], axis=1)       # (B, N + 1, D)
        x = encoder(x)                              # + pos_embedding, pre-LN blocks, final LN
        logits = head(x[:, 0])                      # the class token's output

    The patch embedding is a ``patch_size`` x ``patch_size`` convolution with stride
    ``patch_size``, computed as one matmul on the non-overlapping patches (the same numbers).

    Parameter names and their torchvision ``vit_b_16`` state_dict keys (``i`` = layer)::

        conv_proj/kernel (p, p, C, D)           conv_proj.weight (D, C, p, p): transpose(2, 3, 1, 0)
        conv_proj/bias                           conv_proj.bias
        class_token (1, 1, D)                    class_token
        encoder/pos_embedding (1, N + 1, D)      encoder.pos_embedding
        encoder/encoder_layer_i/ln_1/{scale,bias}  encoder.layers.encoder_layer_i.ln_1.{weight,bias}
        .../self_attention/{query,key,value}/kernel (D, heads, d)
                                                 ...self_attention.in_proj_weight (3D, D): rows
                                                 [0:D], [D:2D], [2D:3D] for q, k, v, each
                                                 W.T.reshape(D, heads, d)
        .../self_attention/{query,key,value}/bias (heads, d)  in_proj_bias thirds, reshape(heads, d)
        .../self_attention/out/kernel (heads, d, D)  ...self_attention.out_proj.weight (D, D):
                                                 W.T.reshape(heads, d, D)
        .../self_attention/out/bias              ...self_attention.out_proj.bias
        .../ln_2/{scale,bias}                    ...ln_2.{weight,bias}
        .../mlp_0/{kernel,bias}                  ...mlp.0.{weight (transposed), bias}
        .../mlp_3/{kernel,bias}                  ...mlp.3.{weight (transposed), bias}
        encoder/ln/{scale,bias}                  encoder.ln.{weight,bias}
        head/{kernel,bias}                       heads.head.{weight (transposed), bias}

    Attributes:
      image_size (divisible by patch_size), patch_size, num_layers, num_heads, embed_dim
      (divisible by num_heads), mlp_dim, num_classes, dropout_rate, attention_dropout_rate
      (torchvision's ``dropout`` and ``attention_dropout``; train only, ``'dropout'`` rng stream),
      dtype (computation dtype).
    """

    image_size: int
    patch_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    num_classes: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = None

    def _check(self) -> None:
        _check_positive(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            embed_dim=self.embed_dim,
            mlp_dim=self.mlp_dim,
            num_classes=self.num_classes,
        )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by patch_size "
                f"({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        _check_rate(self.dropout_rate)
        _check_rate(self.attention_dropout_rate)

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> Array:
        self._check()
        s, p = self.image_size, self.patch_size
        if images.ndim != 4 or images.shape[1:3] != (s, s):
            raise ValueError(f"images must be NHWC (batch, {s}, {s}, channels), got "
                             f"{images.shape}")  # fmt: skip
        b, _, _, c = images.shape
        g = s // p  # patches per side
        fan_in = p * p * c
        kernel = self.param(
            "conv_proj",
            lambda k, shape: {
                # torchvision's conv_proj init: truncated normal with std sqrt(1 / fan_in).
                "kernel": nn.initializers.truncated_normal(np.sqrt(1.0 / fan_in))(k, shape),
                "bias": jnp.zeros((self.embed_dim,)),
            },
            (p, p, c, self.embed_dim),
        )
        dtype = self.dtype or jnp.result_type(images.dtype, jnp.float32)
        x = images.astype(dtype).reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, g * g, fan_in)  # (B, N, p*p*C), each patch in (row, col, channel) order
        x = flat_matmul(x, kernel["kernel"].reshape(fan_in, self.embed_dim).astype(dtype))
        x = x + kernel["bias"].reshape(1, 1, -1).astype(dtype)  # (B, N, D)
        cls = self.param("class_token", nn.initializers.zeros_init(), (1, 1, self.embed_dim))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, self.embed_dim)), x], 1)
        x = ViTEncoder(
            self.num_layers,
            self.num_heads,
            self.mlp_dim,
            self.dropout_rate,
            self.attention_dropout_rate,
            self.dtype,
            name="encoder",
        )(x, train)  # (B, N + 1, D)
        return Dense(
            self.num_classes, kernel_init=nn.initializers.zeros_init(), dtype=self.dtype,
            name="head",
        )(x[:, 0])  # fmt: skip
