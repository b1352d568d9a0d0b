"""MultiHeadAttention against flax's module (same params), a NumPy loop of the formula, and PyTorch
(scaled_dot_product_attention and nn.MultiheadAttention with copied weights)."""

import chex
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn

B, TQ, TK, D, H = 2, 5, 7, 12, 3


def _inputs(seed=0, tq=TQ, tk=TK, d=D, dkv=None):
    k1, k2 = jax.random.split(jax.random.key(seed))
    xq = jax.random.normal(k1, (B, tq, d))
    xkv = jax.random.normal(k2, (B, tk, dkv or d))
    return xq, xkv


def _random_mask(seed, shape):
    m = jax.random.bernoulli(jax.random.key(seed), 0.6, shape)
    return m.at[..., 0].set(True)  # every query sees at least one key


def _numpy_mha(params, xq, xkv, mask=None):
    """The formula as NumPy loops over batch and head."""
    p = jax.tree.map(np.asarray, params)
    xq, xkv = np.asarray(xq, np.float64), np.asarray(xkv, np.float64)
    heads, d = p["query"]["bias"].shape
    out = np.zeros((xq.shape[0], xq.shape[1], p["out"]["bias"].shape[0]))
    for b in range(xq.shape[0]):
        for h in range(heads):
            q = xq[b] @ p["query"]["kernel"][:, h] + p["query"]["bias"][h]
            k = xkv[b] @ p["key"]["kernel"][:, h] + p["key"]["bias"][h]
            v = xkv[b] @ p["value"]["kernel"][:, h] + p["value"]["bias"][h]
            logits = q @ k.T / np.sqrt(d)
            if mask is not None:
                m = np.broadcast_to(np.asarray(mask), (xq.shape[0], heads) + logits.shape)[b, h]
                logits = np.where(m, logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[b] += (w @ v) @ p["out"]["kernel"][h]
    return out + p["out"]["bias"]


@pytest.mark.parametrize(
    "kwargs,dkv",
    [({}, None), (dict(qkv_features=9, out_features=4), 8)],
)
def test_params_match_flax_and_outputs_agree(kwargs, dkv):
    xq, xkv = _inputs(dkv=dkv)
    mask = _random_mask(1, (B, 1, TQ, TK))
    ours = nn.MultiHeadAttention(H, **kwargs)
    ref = fnn.MultiHeadDotProductAttention(num_heads=H, **kwargs)
    params = jax.jit(ours.init)(jax.random.key(0), xq, xkv)["params"]
    ref_params = jax.eval_shape(ref.init, jax.random.key(0), xq, xkv)["params"]
    chex.assert_trees_all_equal_shapes(params, ref_params)  # same names, same shapes
    y = jax.jit(ours.apply)({"params": params}, xq, xkv, mask=mask)
    y_ref = jax.jit(lambda p: ref.apply(p, xq, inputs_kv=xkv, mask=mask))({"params": params})
    chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(y, _numpy_mha(params, xq, xkv, mask), atol=1e-5, rtol=1e-5)


def test_self_attention_default_and_shapes():
    xq, _ = _inputs()
    m = nn.MultiHeadAttention(H, out_features=5)
    params = m.init(jax.random.key(1), xq)["params"]
    chex.assert_shape(params["query"]["kernel"], (D, H, D // H))
    chex.assert_shape(params["query"]["bias"], (H, D // H))
    chex.assert_shape(params["out"]["kernel"], (H, D // H, 5))
    chex.assert_shape(params["out"]["bias"], (5,))
    y = m.apply({"params": params}, xq)
    chex.assert_shape(y, (B, TQ, 5))
    chex.assert_trees_all_close(y, _numpy_mha(params, xq, xq), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_shape", [None, (TQ, TK), (B, H, TQ, TK)])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_equals_plain_formula(mask_shape, causal):
    """jax.nn.dot_product_attention (the fast path) == softmax(q k^T / sqrt(d) + mask) v."""
    q = jax.random.normal(jax.random.key(0), (B, TQ, H, 4))
    k, v = (jax.random.normal(jax.random.key(i), (B, TK, H, 4)) for i in (4, 5))
    mask = None if mask_shape is None else _random_mask(3, mask_shape)
    full = None if mask is None else mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if causal:
        cm = nn.causal_mask(TQ, TK)
        full = cm if mask is None else jnp.logical_and(full, cm)
    fast = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    plain = nn.dot_product_attention(q, k, v, full)
    chex.assert_trees_all_close(fast, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_module_fast_and_plain_paths_agree(causal):
    """Through the module: the sowing path (mutable 'intermediates') runs the plain formula."""
    xq, xkv = _inputs(2)
    mask = _random_mask(3, (B, 1, TQ, TK))
    full = jnp.logical_and(mask, nn.causal_mask(TQ, TK)) if causal else mask
    m = nn.MultiHeadAttention(H)
    params = m.init(jax.random.key(0), xq, xkv)
    fused = nn.MultiHeadAttention(H, implementation="fused")  # jax.nn.dot_product_attention
    y_fast = fused.apply(params, xq, xkv, mask=mask, causal=causal)
    y_plain, inter = m.apply(params, xq, xkv, mask=mask, causal=causal, mutable="intermediates")
    chex.assert_trees_all_close(y_fast, y_plain, atol=1e-5, rtol=1e-5)
    (w,) = inter["intermediates"]["attention_weights"]
    chex.assert_shape(w, (B, H, TQ, TK))
    chex.assert_trees_all_close(w.sum(-1), jnp.ones((B, H, TQ)), atol=1e-5)
    assert float(jnp.max(jnp.where(jnp.broadcast_to(full, w.shape), 0.0, w))) == 0.0


def test_fully_masked_row_is_uniform_on_both_paths():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 3, 1, 4)) for i in range(3))
    mask = jnp.ones((1, 1, 3, 3), bool).at[0, 0, 1].set(False)  # query 1 sees nothing
    fast = jax.nn.dot_product_attention(q, k, v, mask=mask)
    plain = nn.dot_product_attention(q, k, v, mask)
    chex.assert_trees_all_close(fast, plain, atol=1e-6)
    chex.assert_trees_all_close(plain[0, 1, 0], v[0, :, 0].mean(0), atol=1e-6)


def test_against_torch_sdpa_and_multihead_attention():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xq, xkv = _inputs(4)
    mask = _random_mask(5, (B, 1, TQ, TK))
    m = nn.MultiHeadAttention(H)
    params = m.init(jax.random.key(2), xq, xkv)["params"]
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(9), a.shape),
                          params)  # non-zero biases  # fmt: skip
    y = np.asarray(m.apply({"params": params}, xq, xkv, mask=mask))
    p = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64), params)
    tq = torch.tensor(np.asarray(xq), dtype=torch.float64)
    tkv = torch.tensor(np.asarray(xkv), dtype=torch.float64)
    tmask = torch.tensor(np.asarray(mask))

    # 1. scaled_dot_product_attention on our projections (heads first: (B, H, T, d)).
    def proj(x, name):
        return (torch.einsum("btd,dhe->bhte", x, p[name]["kernel"])
                + p[name]["bias"][None, :, None])  # fmt: skip

    o = F.scaled_dot_product_attention(
        proj(tq, "query"), proj(tkv, "key"), proj(tkv, "value"), attn_mask=tmask
    )  # (B, H, Tq, d)
    y_sdpa = torch.einsum("bhte,heo->bto", o, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(y, y_sdpa.numpy(), atol=1e-5, rtol=1e-5)

    # 2. nn.MultiheadAttention with copied weights: in_proj rows are [q; k; v], each W^T.
    mha = torch.nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat(
            [p[n]["kernel"].reshape(D, D).T for n in ("query", "key", "value")]))  # fmt: skip
        mha.in_proj_bias.copy_(
            torch.cat([p[n]["bias"].reshape(D) for n in ("query", "key", "value")])
        )
        mha.out_proj.weight.copy_(p["out"]["kernel"].reshape(D, D).T)
        mha.out_proj.bias.copy_(p["out"]["bias"])
    # torch's bool attn_mask means True = NOT allowed, one (Tq, Tk) per batch*head.
    tm = (~tmask).expand(B, H, TQ, TK).reshape(B * H, TQ, TK)
    y_mha, _ = mha(tq, tkv, tkv, attn_mask=tm, need_weights=False)
    np.testing.assert_allclose(y, y_mha.detach().numpy(), atol=1e-5, rtol=1e-5)


def test_dropout_uses_dropout_stream_only_in_training():
    xq, _ = _inputs(6)
    m = nn.MultiHeadAttention(H, dropout_rate=0.1)
    params = m.init(jax.random.key(0), xq)
    y_eval = m.apply(params, xq)  # no rng needed
    chex.assert_trees_all_close(y_eval, m.apply(params, xq, train=False))
    y1 = m.apply(params, xq, train=True, rngs={"dropout": jax.random.key(1)})
    y1b = m.apply(params, xq, train=True, rngs={"dropout": jax.random.key(1)})
    y2 = m.apply(params, xq, train=True, rngs={"dropout": jax.random.key(2)})
    chex.assert_trees_all_close(y1, y1b)
    assert not np.allclose(y1, y2) and not np.allclose(y1, y_eval)
    with pytest.raises(Exception, match="dropout"):
        m.apply(params, xq, train=True)


@pytest.mark.slow
def test_dropout_is_unbiased():
    """The average over many dropout draws approaches the eval output (inverted dropout)."""
    xq, _ = _inputs(6)
    m = nn.MultiHeadAttention(H, dropout_rate=0.1)
    params = m.init(jax.random.key(0), xq)
    y_eval = m.apply(params, xq)
    ys = jax.vmap(lambda k: m.apply(params, xq, train=True, rngs={"dropout": k}))(
        jax.random.split(jax.random.key(3), 1000)
    )
    chex.assert_trees_all_close(ys.mean(0), y_eval, atol=0.05)


def test_kv_cache_decoding_equals_causal_attention():
    xq, _ = _inputs(7, tq=6)
    m = nn.MultiHeadAttention(H)
    params = m.init(jax.random.key(0), xq)
    apply = jax.jit(m.apply, static_argnames="causal")
    full = apply(params, xq, causal=True)
    cache = (jnp.zeros((B, 8, H, D // H)),) * 2
    y0, cache = apply(params, xq[:, :2], cache=cache, cache_index=0)  # prefill 2 positions
    ys = [y0]
    for t in range(2, 6):
        y, cache = apply(params, xq[:, t : t + 1], cache=cache, cache_index=t)
        ys.append(y)
    chex.assert_trees_all_close(jnp.concatenate(ys, 1), full, atol=1e-5, rtol=1e-5)


def test_errors_name_the_problem():
    xq, xkv = _inputs()
    m = nn.MultiHeadAttention(H)
    params = m.init(jax.random.key(0), xq)
    with pytest.raises(ValueError, match="inputs_q"):
        m.init(jax.random.key(0), xq[0])
    with pytest.raises(ValueError, match="inputs_kv"):
        m.apply(params, xq, xkv[:1])
    with pytest.raises(ValueError, match="num_heads"):
        nn.MultiHeadAttention(5).init(jax.random.key(0), xq)  # 12 % 5 != 0
    with pytest.raises(ValueError, match="num_heads"):
        nn.MultiHeadAttention(0).init(jax.random.key(0), xq)
    with pytest.raises(ValueError, match="implementation"):
        nn.MultiHeadAttention(H, implementation="flash").init(jax.random.key(0), xq)
    with pytest.raises(ValueError, match="dropout_rate"):
        nn.MultiHeadAttention(H, dropout_rate=1.0).init(jax.random.key(0), xq)
    with pytest.raises(TypeError, match="mask must be boolean"):
        m.apply(params, xq, mask=jnp.ones((TQ, TQ)))
    with pytest.raises(ValueError, match="does not broadcast"):
        m.apply(params, xq, mask=jnp.ones((TQ, TQ + 1), bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        m.apply(params, xq, mask=jnp.ones((1, 1, 1, TQ, TQ), bool))


@pytest.mark.parametrize("t,blocks", [(128, None), (100, 4), (64, None), (37, 3), (16, None)])
def test_causal_blocks_equal_the_full_causal_formula(t, blocks):
    """Skipping the masked key blocks gives the full formula's values and gradients."""
    ks = jax.random.split(jax.random.key(11), 4)
    q, k, v, w = (jax.random.normal(kk, (2, t, 3, 8)) for kk in ks)

    def full(q, k, v):
        return nn.dot_product_attention(q, k, v, nn.causal_mask(t))

    def blocked(q, k, v):
        return nn.causal_dot_product_attention(q, k, v, blocks)

    chex.assert_trees_all_close(blocked(q, k, v), full(q, k, v), atol=1e-6)
    g_full = jax.grad(lambda *a: jnp.sum(w * full(*a)), (0, 1, 2))(q, k, v)
    g_blk = jax.jit(jax.grad(lambda *a: jnp.sum(w * blocked(*a)), (0, 1, 2)))(q, k, v)
    chex.assert_trees_all_close(g_blk, g_full, atol=1e-5)


def test_causal_blocks_bad_input():
    x = jnp.ones((1, 8, 2, 4))
    with pytest.raises(ValueError, match="num_blocks"):
        nn.causal_dot_product_attention(x, x, x, 9)
    with pytest.raises(ValueError, match="as many keys as queries"):
        nn.causal_dot_product_attention(x, x[:, :4], x[:, :4])
