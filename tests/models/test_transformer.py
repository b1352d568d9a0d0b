"""GPT and ViT: parameter counts, causality, KV-cache sampling against re-running the prefix, and
ViT against a PyTorch model in torchvision's layout with copied weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models


def _count(model, x):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))  # nothing allocated
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def test_parameter_counts_match_gpt2_small_and_vit_b_16():
    gpt = models.GPT(50257, 1024, 12, 12, 768)
    assert _count(gpt, jnp.zeros((1, 8), jnp.int32)) == 124_439_808
    vit = models.ViT(224, 16, 12, 12, 768, 3072, 1000)
    assert _count(vit, jnp.zeros((1, 224, 224, 3))) == 86_567_656


SMALL = dict(vocab_size=11, block_size=16, num_layers=2, num_heads=2, embed_dim=8)


@pytest.fixture(scope="module")
def small_gpt():
    model = models.GPT(**SMALL)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return model, params


def test_gpt_layout_is_tied(small_gpt):
    model, params = small_gpt
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}  # no separate output head
    assert set(params["h_0"]) == {"ln_1", "attn", "ln_2", "fc", "proj"}
    chex.assert_shape(params["wte"]["embedding"], (11, 8))
    chex.assert_shape(params["wpe"], (16, 8))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 11)
    logits = model.apply({"params": params}, tokens)
    chex.assert_shape(logits, (2, 16, 11))


def test_gpt_is_causal(small_gpt):
    """Changing token t' never changes the logits at positions t < t'; it does change t'."""
    model, params = small_gpt
    tokens = jax.random.randint(jax.random.key(2), (1, 16), 0, 11)
    apply = jax.jit(model.apply)
    base = apply({"params": params}, tokens)
    for tp in (0, 5, 15):
        changed = tokens.at[0, tp].set((tokens[0, tp] + 1) % 11)
        out = apply({"params": params}, changed)
        np.testing.assert_array_equal(np.asarray(out[:, :tp]), np.asarray(base[:, :tp]))
        assert not np.allclose(out[:, tp], base[:, tp])


def _sample_python_loop(model, params, prompt, n, key, temperature, top_k):
    """Reference: re-run the whole growing prefix for every token, in a Python loop."""
    keys = jax.random.split(key, n)
    seq = prompt
    apply = jax.jit(model.apply)
    for i in range(n):
        logits = apply({"params": params}, seq)[:, -1]
        if temperature == 0.0:
            nxt = jnp.argmax(logits, -1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = jnp.sort(logits, -1)[:, -top_k][:, None]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            nxt = jax.random.categorical(keys[i], logits, axis=-1)
        seq = jnp.concatenate([seq, nxt[:, None].astype(seq.dtype)], axis=1)
    return seq


@pytest.mark.parametrize(
    "temperature,top_k",
    [
        (0.0, None),
        pytest.param(1.0, None, marks=pytest.mark.slow),
        pytest.param(0.8, 3, marks=pytest.mark.slow),
    ],
)
def test_kv_cache_sampling_equals_rerunning_prefix(small_gpt, temperature, top_k):
    model, params = small_gpt
    # Sharper logits so that sampling is not just uniform noise.
    params = jax.tree.map(lambda a: a * 4.0, params)
    prompt = jax.random.randint(jax.random.key(3), (2, 3), 0, 11)
    key = jax.random.key(4)
    cached = models.generate(model, params, prompt, 6, key, temperature, top_k)
    full = models.generate(model, params, prompt, 6, key, temperature, top_k, use_cache=False)
    loop = _sample_python_loop(model, params, prompt, 6, key, temperature, top_k)
    chex.assert_shape(cached, (2, 9))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(loop))
    np.testing.assert_array_equal(np.asarray(full), np.asarray(loop))
    np.testing.assert_array_equal(np.asarray(cached[:, :3]), np.asarray(prompt))


def test_kv_cache_logits_equal_full_forward(small_gpt):
    model, params = small_gpt
    tokens = jax.random.randint(jax.random.key(5), (2, 10), 0, 11)
    apply = jax.jit(model.apply)
    full = apply({"params": params}, tokens)
    cache = models.init_cache(model, 2)
    first, cache = apply({"params": params}, tokens[:, :4], cache=cache, cache_index=0)
    outs = [first]
    for t in range(4, 10):
        lo, cache = apply({"params": params}, tokens[:, t : t + 1], cache=cache,
                                cache_index=t)  # fmt: skip
        outs.append(lo)
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_top_k_one_is_greedy(small_gpt):
    model, params = small_gpt
    prompt = jnp.array([[1, 2]])
    greedy = models.generate(model, params, prompt, 5, jax.random.key(0), temperature=0.0)
    top1 = models.generate(model, params, prompt, 5, jax.random.key(7), temperature=1.3, top_k=1)
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(top1))


def test_gpt_dropout_and_errors(small_gpt):
    _, params = small_gpt
    model = models.GPT(**SMALL, dropout_rate=0.3)
    tokens = jnp.ones((1, 6), jnp.int32)
    y_eval = model.apply({"params": params}, tokens)
    y_train = model.apply({"params": params}, tokens, train=True,
                          rngs={"dropout": jax.random.key(0)})  # fmt: skip
    assert not np.allclose(y_eval, y_train)
    with pytest.raises(ValueError, match="block_size"):
        model.apply({"params": params}, jnp.ones((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="tokens"):
        model.apply({"params": params}, jnp.ones((1, 6)))
    with pytest.raises(ValueError, match="divisible"):
        models.GPT(11, 16, 1, 3, 8).init(jax.random.key(0), tokens)
    with pytest.raises(ValueError, match="block_size"):
        models.generate(model, params, tokens, 11, jax.random.key(0))
    with pytest.raises(ValueError, match="top_k"):
        models.generate(model, params, tokens, 2, jax.random.key(0), top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        models.generate(model, params, tokens, 2, jax.random.key(0), temperature=-1.0)


def _torch_gpt_reference(torch, params, tokens, norm_position, num_heads):
    """The GPT forward written with ``torch.nn.TransformerEncoderLayer`` (``norm_first`` for
    pre-LN), a causal mask and the tied output, in float64, loading jaxdl params."""
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    d = params["wpe"].shape[1]
    x = (
        t(params["wte"]["embedding"])[torch.tensor(np.asarray(tokens))]
        + t(params["wpe"])[: tokens.shape[1]]
    )  # (B, T, D)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(tokens.shape[1],
                                                                  dtype=torch.float64)  # fmt: skip
    i = 0
    while f"h_{i}" in params:
        p = params[f"h_{i}"]
        layer = torch.nn.TransformerEncoderLayer(
            d, num_heads, 4 * d, dropout=0.0, batch_first=True, dtype=torch.float64,
            norm_first=norm_position == "pre",
            activation=lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
        ).eval()  # fmt: skip
        a = p["attn"]
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(
                torch.cat([t(a[n]["kernel"]).reshape(d, d).T for n in ("query", "key", "value")])
            )
            layer.self_attn.in_proj_bias.copy_(
                torch.cat([t(a[n]["bias"]).reshape(d) for n in ("query", "key", "value")])
            )
            layer.self_attn.out_proj.weight.copy_(t(a["out"]["kernel"]).reshape(d, d).T)
            layer.self_attn.out_proj.bias.copy_(t(a["out"]["bias"]))
            for mod, name in ((layer.linear1, "fc"), (layer.linear2, "proj")):
                mod.weight.copy_(t(p[name]["kernel"]).T)
                mod.bias.copy_(t(p[name]["bias"]))
            for mod, name in ((layer.norm1, "ln_1"), (layer.norm2, "ln_2")):
                mod.weight.copy_(t(p[name]["scale"]))
                mod.bias.copy_(t(p[name]["bias"]))
            x = layer(x, src_mask=causal, is_causal=True)
        i += 1
    if norm_position == "pre":
        x = torch.nn.functional.layer_norm(x, (d,), t(params["ln_f"]["scale"]),
                                           t(params["ln_f"]["bias"]), 1e-5)  # fmt: skip
    return (x @ t(params["wte"]["embedding"]).T).detach().numpy()  # tied output


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_gpt_equals_torch_transformer_layers(norm_position):
    """Pre-LN (GPT-2) and post-LN (Vaswani et al. 2017) GPTs against torch's encoder layers with
    a causal mask; every weight random, so a misplaced LayerNorm or bias shows."""
    torch = pytest.importorskip("torch")
    model = models.GPT(**SMALL, norm_position=norm_position)
    tokens = jax.random.randint(jax.random.key(8), (3, 12), 0, 11)
    params = jax.jit(model.init)(jax.random.key(9), tokens)["params"]
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(a.size), a.shape),
                          params)  # fmt: skip
    assert ("ln_f" in params) == (norm_position == "pre")
    ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
    ref = _torch_gpt_reference(torch, params, tokens, norm_position, SMALL["num_heads"])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # the values are checked against torch in the default suite
def test_post_ln_gpt_is_causal_and_its_cache_equals_the_full_forward():
    model = models.GPT(**SMALL, norm_position="post")
    tokens = jax.random.randint(jax.random.key(10), (2, 9), 0, 11)
    params = model.init(jax.random.key(11), tokens)["params"]
    full = model.apply({"params": params}, tokens)
    changed = model.apply({"params": params}, tokens.at[:, 6].set((tokens[:, 6] + 1) % 11))
    chex.assert_trees_all_close(changed[:, :6], full[:, :6])
    assert not np.allclose(changed[:, 6], full[:, 6])
    first, cache = model.apply({"params": params}, tokens[:, :5], cache=models.init_cache(model, 2),
                               cache_index=0)  # fmt: skip
    last, _ = model.apply({"params": params}, tokens[:, 5:], cache=cache, cache_index=5)
    chex.assert_trees_all_close(jnp.concatenate([first, last], 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="norm_position must be one of"):
        models.GPT(**SMALL, norm_position="sandwich").init(jax.random.key(0), tokens)


VIT = dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=12,
           num_classes=5)  # fmt: skip


def test_vit_shapes_and_layout():
    model = models.ViT(**VIT)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    p = variables["params"]
    chex.assert_shape(p["conv_proj"]["kernel"], (4, 4, 3, 8))
    chex.assert_shape(p["class_token"], (1, 1, 8))
    chex.assert_shape(p["encoder"]["pos_embedding"], (1, 17, 8))
    chex.assert_shape(jax.jit(model.apply)(variables, x), (2, 5))
    # The patch embedding's equality with torchvision's Conv2d is checked through the whole
    # model in test_vit_matches_torchvision_layout_with_copied_weights.


def _torch_vit_reference(torch, p, cfg):
    """torchvision's VisionTransformer forward, written with torch.nn modules, loading jaxdl params
    through the mapping in ViT's docstring (the converter's rules)."""
    tnn = torch.nn
    d, heads = cfg["embed_dim"], cfg["num_heads"]
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    conv = tnn.Conv2d(3, d, cfg["patch_size"], cfg["patch_size"], dtype=torch.float64)
    conv.weight.data = t(p["conv_proj"]["kernel"]).permute(3, 2, 0, 1).contiguous()
    conv.bias.data = t(p["conv_proj"]["bias"])
    layers = []
    for i in range(cfg["num_layers"]):
        q = p["encoder"][f"encoder_layer_{i}"]
        ln1 = tnn.LayerNorm(d, eps=1e-6, dtype=torch.float64)
        ln1.weight.data, ln1.bias.data = t(q["ln_1"]["scale"]), t(q["ln_1"]["bias"])
        att = tnn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
        sa = q["self_attention"]
        att.in_proj_weight.data = torch.cat(
            [t(sa[n]["kernel"]).reshape(d, d).T for n in ("query", "key", "value")]
        )
        att.in_proj_bias.data = torch.cat(
            [t(sa[n]["bias"]).reshape(d) for n in ("query", "key", "value")]
        )
        att.out_proj.weight.data = t(sa["out"]["kernel"]).reshape(d, d).T.contiguous()
        att.out_proj.bias.data = t(sa["out"]["bias"])
        ln2 = tnn.LayerNorm(d, eps=1e-6, dtype=torch.float64)
        ln2.weight.data, ln2.bias.data = t(q["ln_2"]["scale"]), t(q["ln_2"]["bias"])
        fc0 = tnn.Linear(d, cfg["mlp_dim"], dtype=torch.float64)
        fc0.weight.data, fc0.bias.data = t(q["mlp_0"]["kernel"]).T, t(q["mlp_0"]["bias"])
        fc3 = tnn.Linear(cfg["mlp_dim"], d, dtype=torch.float64)
        fc3.weight.data, fc3.bias.data = t(q["mlp_3"]["kernel"]).T, t(q["mlp_3"]["bias"])
        layers.append((ln1, att, ln2, fc0, fc3))

    def forward(x_nchw):
        x = conv(x_nchw).flatten(2).transpose(1, 2)  # (B, N, D), torchvision's _process_input
        cls = t(p["class_token"]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1) + t(p["encoder"]["pos_embedding"])
        for ln1, att, ln2, fc0, fc3 in layers:
            h = ln1(x)
            h, _ = att(h, h, h, need_weights=False)
            x = x + h
            x = x + fc3(tnn.functional.gelu(fc0(ln2(x))))
        x = tnn.functional.layer_norm(x, (d,), t(p["encoder"]["ln"]["scale"]),
                                      t(p["encoder"]["ln"]["bias"]), eps=1e-6)  # fmt: skip
        return x[:, 0] @ t(p["head"]["kernel"]) + t(p["head"]["bias"])

    return forward


@pytest.mark.slow
def test_vit_matches_torchvision_layout_with_copied_weights():
    torch = pytest.importorskip("torch")
    model = models.ViT(**VIT)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params = model.init(jax.random.key(1), x)["params"]
    # Random non-zero values everywhere (the head and class token start at zero).
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(
        tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    )
    y = model.apply({"params": params}, x)
    forward = _torch_vit_reference(torch, params, VIT)
    x_nchw = torch.tensor(np.asarray(x), dtype=torch.float64).permute(0, 3, 1, 2)
    with torch.no_grad():
        y_ref = forward(x_nchw).numpy()
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-4, rtol=1e-4)


def test_vit_errors():
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        models.ViT(**{**VIT, "patch_size": 5}).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="NHWC"):
        models.ViT(**VIT).init(jax.random.key(0), jnp.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="num_classes"):
        models.ViT(**{**VIT, "num_classes": 0}).init(jax.random.key(0), x)
