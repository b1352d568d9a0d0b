"""GPT-2 weights (jaxdl.models.from_gpt2 / to_gpt2 / load_gpt2) against Hugging Face's own GPT-2:
a randomly initialised ``transformers.GPT2LMHeadModel`` (built offline from a config) is the
independent reference for the logits and for greedy decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, T, D, L, H = 97, 24, 48, 2, 4


def _config(**kw):
    base = dict(vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=H, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
    return transformers.GPT2Config(**{**base, **kw})


@pytest.fixture(scope="module")
def hf_model():
    """A GPT-2 whose every weight is random (biases and LayerNorms too, not GPT-2's zeros and
    ones), so that a swapped or misplaced tensor changes the logits."""
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(_config()).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            scale = 0.3 if name.endswith("bias") or "ln_" in name else 0.15
            p.copy_((1.0 if "ln_" in name and name.endswith("weight") else 0.0)
                    + scale * torch.randn_like(p))  # fmt: skip
    return m


def _tokens(b=3, t=T, seed=0):
    return np.random.default_rng(seed).integers(0, V, (b, t)).astype(np.int32)


def _hf_logits(m, tokens):
    with torch.no_grad():
        return m(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def test_from_gpt2_equals_transformers_logits(hf_model):
    model, variables = models.from_gpt2(hf_model.state_dict(), H)
    assert (model.vocab_size, model.block_size, model.num_layers, model.num_heads,
            model.embed_dim) == (V, T, L, H, D)  # fmt: skip
    tokens = _tokens()
    ours = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(tokens)))
    ref = _hf_logits(hf_model, tokens)
    assert np.abs(ref).max() > 1.0  # the random weights give logits far from zero
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-5)


def test_greedy_generate_equals_transformers_generate(hf_model):
    model, variables = models.from_gpt2(hf_model.state_dict(), H)
    prompt = _tokens(b=2, t=5, seed=1)
    ours = models.generate(model, variables["params"], jnp.asarray(prompt), 12,
                           jax.random.key(0), temperature=0.0)  # fmt: skip
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=12,
                                do_sample=False, attention_mask=torch.ones(prompt.shape,
                                dtype=torch.long), eos_token_id=None)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


def test_to_gpt2_loads_into_transformers_and_round_trips(hf_model):
    model = models.GPT(V, T, L, H, D)
    variables = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, T), jnp.int32))
    state = models.to_gpt2(variables)
    hf = transformers.GPT2LMHeadModel(_config()).eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                                             strict=False)  # fmt: skip
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing)
    tokens = _tokens(seed=2)
    np.testing.assert_allclose(
        np.asarray(jax.jit(model.apply)(variables, jnp.asarray(tokens))), _hf_logits(hf, tokens),
        atol=2e-5, rtol=1e-5,
    )  # fmt: skip
    _, back = models.from_gpt2(state, H)
    jax.tree.map(np.testing.assert_array_equal, back, dict(variables))
    # and the reverse direction: a transformers state_dict through both converters is unchanged
    again = models.to_gpt2(models.from_gpt2(hf_model.state_dict(), H)[1])
    for k, v in hf_model.state_dict().items():
        np.testing.assert_array_equal(again[k], v.numpy(), err_msg=k)


def test_load_gpt2_reads_a_saved_checkpoint_and_rejects_other_blocks(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "tiny")
    model, variables = models.load_gpt2(str(tmp_path / "tiny"))
    assert model.num_heads == H
    tokens = _tokens(seed=4)
    np.testing.assert_allclose(np.asarray(model.apply(variables, jnp.asarray(tokens))),
                               _hf_logits(hf_model, tokens), atol=2e-5, rtol=1e-5)  # fmt: skip
    relu = transformers.GPT2LMHeadModel(_config(activation_function="relu"))
    relu.save_pretrained(tmp_path / "relu")
    with pytest.raises(ValueError, match="activation_function='relu'"):
        models.load_gpt2(str(tmp_path / "relu"))


def test_from_gpt2_accepts_base_model_keys_and_mask_buffers(hf_model):
    sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()
          if k != "lm_head.weight"}  # fmt: skip
    for i in range(L):  # what transformers < 4.36 saved: the causal mask as a buffer
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, T, T, dtype=torch.bool))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    _, a = models.from_gpt2(sd, H)
    _, b = models.from_gpt2(hf_model.state_dict(), H)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias"), "missing key 'h.1.mlp.c_fc.bias'"),
        (lambda sd: sd.update({"transformer.h.0.attn.extra": torch.zeros(1)}),
         "key 'h.0.attn.extra' that GPT does not use"),
        (lambda sd: sd.update({"lm_head.weight": torch.zeros(V, D)}), "lm_head.weight differs"),
        (lambda sd: sd.update({"transformer.h.0.mlp.c_fc.weight": torch.zeros(D, 3 * D)}),
         r"params/h_0/fc/kernel needs shape \(48, 192\), the state_dict gives \(48, 144\)"),
        (lambda sd: sd.update({"transformer.h.0.attn.c_attn.weight": torch.zeros(D, D)}),
         r"h.0.attn.c_attn must be \(48, 144\)"),
    ],
)  # fmt: skip
def test_from_gpt2_names_what_is_wrong(hf_model, change, match):
    sd = dict(hf_model.state_dict())
    change(sd)
    with pytest.raises(ValueError, match=match):
        models.from_gpt2(sd, H)


def test_from_gpt2_rejects_a_head_count_that_does_not_divide_the_width(hf_model):
    with pytest.raises(ValueError, match="num_heads must be a positive divisor of the width 48"):
        models.from_gpt2(hf_model.state_dict(), 5)
