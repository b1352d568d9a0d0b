"""GPT-2 weights for :class:`jaxdl.models.GPT`, in Hugging Face's layout: ``from_gpt2``,
``to_gpt2`` and ``load_gpt2``.

:class:`~jaxdl.models.GPT` is GPT-2's architecture (Radford et al. 2019: pre-LayerNorm blocks with
epsilon 1e-5, GELU with the tanh approximation, learned positions, the output tied to the token
embedding), so the published checkpoints run in it unchanged::

    model, variables = models.load_gpt2("gpt2")        # downloads through `transformers`
    logits = model.apply(variables, tokens)            # (B, T, 50257)

equals ``transformers.GPT2LMHeadModel.from_pretrained("gpt2")(tokens).logits`` to float32
rounding (the tests check it on a randomly initialised GPT-2 with copied weights, and greedy
:func:`~jaxdl.models.generate` against ``GPT2LMHeadModel.generate``). Text goes in and out through
GPT-2's byte-pair tokenizer, ``transformers.GPT2TokenizerFast.from_pretrained("gpt2")``.

Layouts. Hugging Face's GPT-2 stores its linear maps as ``Conv1D`` weights of shape
``(in, out)`` (``y = x W + b``), flax's own layout, so nothing is transposed. The fused attention
input ``c_attn`` ``(D, 3D)`` holds the query, key and value maps side by side (columns
``[0, D)``, ``[D, 2D)``, ``[2D, 3D)``); each becomes a ``(D, heads, head_dim)`` kernel of
:class:`jaxdl.nn.MultiHeadAttention` (heads are consecutive blocks of ``head_dim`` columns in
both), and ``c_proj`` ``(D, D)`` becomes the ``out`` kernel ``(heads, head_dim, D)``. A
LayerNorm's ``weight`` is flax's ``scale``; ``mlp.c_fc`` and ``mlp.c_proj`` are the blocks'
``fc`` and ``proj``.

The number of heads is not in the weights (``D = heads x head_dim`` for any divisor), so
:func:`from_gpt2` takes it: 12 for ``gpt2``, 16 for ``gpt2-medium``, 20 for ``gpt2-large`` and 25
for ``gpt2-xl`` (:data:`GPT2_HEADS`). Every key is used exactly once; a missing key, a shape that
differs, an output matrix that is not the token embedding (an untied head), or a key left over is
a ``ValueError`` naming it. The causal-mask buffers older ``transformers`` versions save
(``attn.bias``, ``attn.masked_bias``) carry no weights and are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdl.models.torchvision import _to_numpy
from jaxdl.models.transformer import GPT

__all__ = ["GPT2_HEADS", "from_gpt2", "load_gpt2", "to_gpt2"]

#: Heads per block of the released GPT-2 models (their layers and widths: Radford et al. 2019,
#: Table 2), the ``num_heads`` argument of :func:`from_gpt2`.
GPT2_HEADS: dict[str, int] = {"gpt2": 12, "gpt2-medium": 16, "gpt2-large": 20, "gpt2-xl": 25}

_PREFIX = "transformer."
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_LAYER = re.compile(r"^h\.(\d+)\.")


def from_gpt2(state_dict: Mapping[str, Any], num_heads: int) -> tuple[GPT, dict[str, Any]]:
    """A GPT-2 ``state_dict`` -> ``(GPT, variables)`` with the same function.

    Args:
      state_dict: ``GPT2LMHeadModel.state_dict()`` or ``GPT2Model.state_dict()`` (keys with or
        without the ``transformer.`` prefix), values torch tensors or arrays. Sizes are read off
        the weights: vocabulary and width from ``wte.weight (V, D)``, the context from
        ``wpe.weight (block_size, D)``, the depth from the ``h.<i>`` blocks.
      num_heads: attention heads per block; must divide ``D`` (:data:`GPT2_HEADS`).

    Returns:
      ``GPT(V, block_size, layers, num_heads, D)`` and ``{"params": ...}`` for its ``apply``.

    Raises:
      ValueError: a missing, misshapen or unused key, an untied ``lm_head``, or ``num_heads``
        that does not divide ``D``.
    """
    remaining = {k[len(_PREFIX) :] if k.startswith(_PREFIX) else k: v for k, v in
                 state_dict.items()}  # fmt: skip
    remaining = {k: v for k, v in remaining.items() if not _BUFFER.match(k)}

    def take(key: str) -> np.ndarray:
        if key not in remaining:
            raise ValueError(f"from_gpt2: state_dict is missing key {key!r}")
        return _to_numpy(remaining.pop(key), key, "from_gpt2").astype(np.float32)

    wte = take("wte.weight")  # (V, D)
    if wte.ndim != 2:
        raise ValueError(f"from_gpt2: wte.weight must be (vocab, width), got {wte.shape}")
    vocab, d = wte.shape
    if not isinstance(num_heads, int | np.integer) or num_heads <= 0 or d % num_heads:
        raise ValueError(f"from_gpt2: num_heads must be a positive divisor of the width {d}, "
                         f"got {num_heads!r}")  # fmt: skip
    h, hd = int(num_heads), d // int(num_heads)
    wpe = take("wpe.weight")  # (block_size, D)
    layers = sorted({int(m.group(1)) for k in remaining if (m := _LAYER.match(k))})
    if layers != list(range(len(layers))):
        raise ValueError(f"from_gpt2: blocks must be h.0 .. h.{{L-1}}, found h.{layers}")

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": take(f"{prefix}.weight"), "bias": take(f"{prefix}.bias")}

    def linear(prefix: str) -> dict[str, np.ndarray]:
        return {"kernel": take(f"{prefix}.weight"), "bias": take(f"{prefix}.bias")}

    params: dict[str, Any] = {"wte": {"embedding": wte}, "wpe": wpe}
    for i in layers:
        w_in, b_in = take(f"h.{i}.attn.c_attn.weight"), take(f"h.{i}.attn.c_attn.bias")
        if w_in.shape != (d, 3 * d) or b_in.shape != (3 * d,):
            raise ValueError(f"from_gpt2: h.{i}.attn.c_attn must be ({d}, {3 * d}) and "
                             f"({3 * d},), got {w_in.shape} and {b_in.shape}")  # fmt: skip
        attn = {
            name: {
                "kernel": w_in[:, j * d : (j + 1) * d].reshape(d, h, hd),
                "bias": b_in[j * d : (j + 1) * d].reshape(h, hd),
            }
            for j, name in enumerate(("query", "key", "value"))
        }
        out = linear(f"h.{i}.attn.c_proj")
        attn["out"] = {"kernel": out["kernel"].reshape(h, hd, -1), "bias": out["bias"]}
        params[f"h_{i}"] = {
            "ln_1": norm(f"h.{i}.ln_1"),
            "attn": attn,
            "ln_2": norm(f"h.{i}.ln_2"),
            "fc": linear(f"h.{i}.mlp.c_fc"),
            "proj": linear(f"h.{i}.mlp.c_proj"),
        }
    params["ln_f"] = norm("ln_f")
    if "lm_head.weight" in remaining:
        head = take("lm_head.weight")
        if head.shape != wte.shape or not np.array_equal(head, wte):
            raise ValueError("from_gpt2: lm_head.weight differs from wte.weight; jaxdl's GPT "
                             "ties its output to the token embedding")  # fmt: skip
    if remaining:
        keys = sorted(remaining)
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        raise ValueError(f"from_gpt2: state_dict has key {keys[0]!r}{more} that GPT does not "
                         "use (not a GPT-2 checkpoint?)")  # fmt: skip

    model = GPT(int(vocab), int(wpe.shape[0]), len(layers), h, int(d))
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    want = traverse_util.flatten_dict(expected["params"])
    got = traverse_util.flatten_dict(params)
    for path, spec in want.items():
        if path not in got or got[path].shape != spec.shape:
            found = got[path].shape if path in got else None
            raise ValueError(f"from_gpt2: params/{'/'.join(path)} needs shape {spec.shape}, the "
                             f"state_dict gives {found}")  # fmt: skip
    return model, {"params": jax.tree.map(jnp.asarray, params)}


def to_gpt2(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """:class:`GPT` variables -> a ``GPT2LMHeadModel`` ``state_dict`` (float32 NumPy arrays,
    ``transformer.``-prefixed keys and the tied ``lm_head.weight``), the inverse of
    :func:`from_gpt2`. Load it with ``model.load_state_dict({k: torch.from_numpy(v) ...})``
    into ``GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=block_size, n_embd=D,
    n_layer=L, n_head=heads))``."""
    params = variables.get("params", variables)
    # writable copies: torch.from_numpy warns on the read-only views of JAX arrays
    a = lambda x: np.array(x, np.float32)  # noqa: E731
    sd: dict[str, np.ndarray] = {}
    sd["wte.weight"] = a(params["wte"]["embedding"])
    sd["wpe.weight"] = a(params["wpe"])
    d = sd["wte.weight"].shape[1]
    layers = sorted(int(k[2:]) for k in params if re.fullmatch(r"h_\d+", k))
    for i in layers:
        p = params[f"h_{i}"]
        att = p["attn"]
        sd[f"h.{i}.ln_1.weight"], sd[f"h.{i}.ln_1.bias"] = (
            a(p["ln_1"]["scale"]),
            a(p["ln_1"]["bias"]),
        )
        sd[f"h.{i}.attn.c_attn.weight"] = np.concatenate(
            [a(att[n]["kernel"]).reshape(d, d) for n in ("query", "key", "value")], axis=1
        )
        sd[f"h.{i}.attn.c_attn.bias"] = np.concatenate(
            [a(att[n]["bias"]).reshape(d) for n in ("query", "key", "value")]
        )
        sd[f"h.{i}.attn.c_proj.weight"] = a(att["out"]["kernel"]).reshape(d, d)
        sd[f"h.{i}.attn.c_proj.bias"] = a(att["out"]["bias"])
        sd[f"h.{i}.ln_2.weight"], sd[f"h.{i}.ln_2.bias"] = (
            a(p["ln_2"]["scale"]),
            a(p["ln_2"]["bias"]),
        )
        for ours, theirs in (("fc", "c_fc"), ("proj", "c_proj")):
            sd[f"h.{i}.mlp.{theirs}.weight"] = a(p[ours]["kernel"])
            sd[f"h.{i}.mlp.{theirs}.bias"] = a(p[ours]["bias"])
    sd["ln_f.weight"], sd["ln_f.bias"] = a(params["ln_f"]["scale"]), a(params["ln_f"]["bias"])
    out = {_PREFIX + k: v for k, v in sd.items()}
    out["lm_head.weight"] = sd["wte.weight"]
    return out


def load_gpt2(name: str = "gpt2", **kwargs: Any) -> tuple[GPT, dict[str, Any]]:
    """``(GPT, variables)`` of a published GPT-2 (``gpt2``, ``gpt2-medium``, ``gpt2-large``,
    ``gpt2-xl``) or of a local directory saved by ``save_pretrained``.

    Reads the checkpoint with ``transformers.GPT2LMHeadModel.from_pretrained(name, **kwargs)``
    (which downloads it on first use, and only then: this is the one call here that may use the
    network) and converts it with :func:`from_gpt2`, taking the head count from its config.
    Needs ``pip install transformers``. A config whose block differs from GPT's (another
    activation than GPT-2's ``gelu_new``, another LayerNorm epsilon than 1e-5, unscaled
    attention) is a ``ValueError``: the weights would load but compute something else.
    """
    try:
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        raise ImportError("load_gpt2 reads checkpoints through Hugging Face transformers: "
                          "pip install transformers") from e  # fmt: skip
    hf = GPT2LMHeadModel.from_pretrained(name, **kwargs)
    cfg = hf.config
    checks = {
        "activation_function": (cfg.activation_function, "gelu_new"),
        "layer_norm_epsilon": (cfg.layer_norm_epsilon, 1e-5),
        "scale_attn_weights": (getattr(cfg, "scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (getattr(cfg, "scale_attn_by_inverse_layer_idx",
                                                    False), False),
    }  # fmt: skip
    for field, (value, gpt) in checks.items():
        if value != gpt:
            raise ValueError(f"load_gpt2: {name}'s config has {field}={value!r}; jaxdl's GPT "
                             f"computes {field}={gpt!r}")  # fmt: skip
    return from_gpt2(hf.state_dict(), int(cfg.n_head))
