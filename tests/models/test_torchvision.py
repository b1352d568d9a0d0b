"""from_torchvision: converted weights reproduce torchvision's real models' logits.

The reference logits were computed once by torchvision 0.28.0's own models (eval mode, float64)
with seeded random weights, by ``fixtures/make_torchvision_fixtures.py``; the fixtures hold only
each model's state_dict manifest (keys and shapes) and its logits. Here the same weights are
rebuilt from the manifest (``fixtures/random_weights.py``, NumPy only), converted, and run through
the jaxdl model: every name is checked against real torchvision logits (the deep ones are slow).
"""

import gzip
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from tests.models.fixtures.random_weights import conv_gain, random_images, random_state_dict

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
with gzip.open(FIXTURES / "torchvision_manifests.json.gz", "rt") as _f:
    MANIFESTS = json.load(_f)["manifests"]
LOGITS = dict(np.load(FIXTURES / "torchvision_logits.npz"))

# Each full-model check compiles the network (8 to 60 s here): resnet18 runs by default, every
# name (in float64) in the slow suite; the other families' blocks are checked by default in
# test_blocks_forward.py.


def _state_dict(name):
    return random_state_dict([(k, tuple(s)) for k, s in MANIFESTS[name]], gain=conv_gain(name))


def _check_logits(name, x64):
    variables = models.from_torchvision(name, _state_dict(name))
    x = random_images().transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ref = LOGITS[name]
    scale = float(np.abs(ref).max())
    if x64:
        # float64 (the fixtures' precision): the deep random nets amplify float32 rounding
        # chaotically (EfficientNet-B4..B7 disagree with themselves at ~1e-3 of the logits'
        # scale), so float64 is what makes a tight check of the conversion possible.
        with jax.enable_x64(True):
            model = models.torchvision_model(name, dtype=jnp.float64, param_dtype=jnp.float64)
            v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
            apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
            out = np.asarray(apply(v64, jnp.asarray(x, jnp.float64)))
        # B7's random logits reach 1e7: even float64 rounding grows to ~4e-6 of their scale
        # there. A BatchNorm epsilon off by 1e-3 changes logits by ~1e-3 of scale: caught.
        tol = (2e-5 if name == "efficientnet_b7" else 1e-6) * scale
    else:
        model = models.torchvision_model(name)
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
        tol = 2e-4 * scale  # float32 against torchvision's float64
    chex.assert_shape(out, ref.shape)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol)
    # The match is not loose: the logits differ between examples far more than the tolerance.
    assert np.abs(ref[0] - ref[1]).max() > 100 * tol


# The fixtures (torchvision 0.28's own models) cover every CNN; the ViTs are checked against torch
# modules under torchvision's key names (the test at the end of this file).
CNN_NAMES = [n for n in models.TORCHVISION_NAMES if not n.startswith("vit_")]


def test_resnet18_logits_equal_torchvision_in_float32():
    _check_logits("resnet18", x64=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", CNN_NAMES)
def test_logits_equal_torchvision_in_float64(name):
    _check_logits(name, x64=True)


def test_every_manifest_is_checked():
    assert sorted(MANIFESTS) == sorted(CNN_NAMES) == sorted(LOGITS)


@pytest.mark.parametrize(
    "name",
    [
        n
        if n in ("resnet50", "densenet121", "efficientnet_b0")
        else pytest.param(n, marks=pytest.mark.slow)
        for n in CNN_NAMES
    ],
)
def test_other_names_convert_with_matching_shapes(name):
    # Every key of torchvision's layout is consumed with its shape; the slow logits test above
    # runs these models for real.
    manifest = [(k, tuple(s)) for k, s in MANIFESTS[name]]
    variables = models.from_torchvision(name, {k: np.zeros(s, np.float32) for k, s in manifest})
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    expected = sum(int(np.prod(s)) for k, s in manifest if not k.endswith(buffers))
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected


def test_torch_tensors_and_fine_tuned_classifier():
    torch = pytest.importorskip("torch")
    sd = _state_dict("resnet18")
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:7], sd["fc.bias"][:7]  # a 7-class model
    variables = models.from_torchvision("resnet18", {k: torch.from_numpy(v) for k, v in sd.items()})
    assert variables["params"]["head"]["kernel"].shape == (512, 7)
    chex.assert_trees_all_equal(variables["params"]["head"]["kernel"], sd["fc.weight"].T)
    # OIHW -> HWIO
    np.testing.assert_array_equal(
        variables["params"]["conv_init"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(variables["batch_stats"]["bn_init"]["var"], sd["bn1.running_var"])


def test_legacy_densenet_keys():
    sd = _state_dict("densenet121")
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    a = models.from_torchvision("densenet121", legacy)
    b = models.from_torchvision("densenet121", sd)
    chex.assert_trees_all_equal(a, b)


def test_errors_name_the_key():
    sd = _state_dict("resnet18")
    with pytest.raises(ValueError, match="name must be one of"):
        models.from_torchvision("resnet19", sd)
    missing = dict(sd)
    del missing["layer2.0.downsample.1.running_var"]
    with pytest.raises(ValueError, match=r"missing key 'layer2\.0\.downsample\.1\.running_var'"):
        models.from_torchvision("resnet18", missing)
    extra = dict(sd, **{"layer5.0.conv1.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ValueError, match=r"'layer5\.0\.conv1\.weight'.* does not use"):
        models.from_torchvision("resnet18", extra)
    wrong = dict(sd, **{"layer1.0.conv2.weight": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"state_dict\['layer1\.0\.conv2\.weight'\] has shape"):
        models.from_torchvision("resnet18", wrong)
    with pytest.raises(ValueError, match="'fc.weight'"):
        models.from_torchvision("resnet18", {k: v for k, v in sd.items() if k != "fc.weight"})
    with pytest.raises(TypeError, match="mapping"):
        models.from_torchvision("resnet18", list(sd.items()))
    # a resnet34 state_dict is not a resnet18 one
    with pytest.raises(ValueError, match="layer1.2"):
        models.from_torchvision("resnet18", _state_dict("resnet34"))
    # num_batches_tracked may be absent: nothing needs it
    models.from_torchvision("resnet18", {k: v for k, v in sd.items() if "num_batches" not in k})


def test_vit_state_dict_from_torch_modules_gives_torchs_logits(monkeypatch):
    """A tiny VisionTransformer written with torch.nn modules under torchvision's key names (its
    own random init), converted by from_torchvision("vit_b_16"): jaxdl's ViT gives torch's logits."""
    torch = pytest.importorskip("torch")
    from jaxdl.models import torchvision as tv

    cfg = dict(image_size=16, patch_size=8, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=16)
    monkeypatch.setitem(tv._VITS, "vit_b_16", cfg)
    torch.manual_seed(0)
    tnn, d = torch.nn, cfg["embed_dim"]
    mods = tnn.ModuleDict(
        {
            "conv_proj": tnn.Conv2d(3, d, 8, 8),
            "heads": tnn.ModuleDict({"head": tnn.Linear(d, 5)}),
        }
    )
    layers = tnn.ModuleDict()
    for i in range(2):
        layers[f"encoder_layer_{i}"] = tnn.ModuleDict(
            {
                "ln_1": tnn.LayerNorm(d, eps=1e-6),
                "self_attention": tnn.MultiheadAttention(d, 2, batch_first=True),
                "ln_2": tnn.LayerNorm(d, eps=1e-6),
                "mlp": tnn.Sequential(
                    tnn.Linear(d, 16), tnn.GELU(), tnn.Dropout(0.0), tnn.Linear(16, d)
                ),
            }
        )
    encoder = tnn.Module()
    encoder.pos_embedding = tnn.Parameter(torch.randn(1, 5, d) * 0.5)
    encoder.layers = layers
    encoder.ln = tnn.LayerNorm(d, eps=1e-6)
    mods["encoder"] = encoder
    class_token = tnn.Parameter(torch.randn(1, 1, d) * 0.5)
    for p in mods.parameters():  # move biases and LayerNorms off their trivial init
        p.data += 0.1 * torch.randn_like(p)
    state_dict = {"class_token": class_token.detach(), **mods.state_dict()}

    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        t = mods["conv_proj"](torch.tensor(x).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        t = torch.cat([class_token.expand(2, -1, -1), t], 1) + encoder.pos_embedding
        for layer in layers.values():
            h = layer["ln_1"](t)
            t = t + layer["self_attention"](h, h, h, need_weights=False)[0]
            t = t + layer["mlp"](layer["ln_2"](t))
        want = mods["heads"]["head"](encoder.ln(t)[:, 0]).numpy()

    variables = models.from_torchvision("vit_b_16", state_dict)
    got = models.ViT(**cfg, num_classes=5).apply({"params": variables["params"]}, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)

    extra = {**state_dict, "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="encoder.extra.weight"):
        models.from_torchvision("vit_b_16", extra)
    missing = {k: v for k, v in state_dict.items() if k != "encoder.ln.bias"}
    with pytest.raises(ValueError, match="encoder.ln.bias"):
        models.from_torchvision("vit_b_16", missing)
