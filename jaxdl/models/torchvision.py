"""torchvision weights for jaxdl's zoo: ``from_torchvision(name, state_dict)``.

A torchvision ``state_dict`` (a mapping from dotted names to tensors) becomes the variables of the
jaxdl model of the same name, so that::

    variables = models.from_torchvision("resnet50", state_dict)
    logits = models.ResNet50().apply(variables, x_nhwc, train=False)

equals ``torchvision.models.resnet50()`` (loaded with ``state_dict``, in eval mode) on
``x_nchw = x_nhwc.transpose(0, 3, 1, 2)``, to float32 rounding. :func:`torchvision_model` builds
that jaxdl model (with ``num_classes`` read off the state_dict's classifier).

Layouts. A convolution's weight is ``(O, I / groups, kh, kw)`` in PyTorch and ``(kh, kw, I / groups,
O)`` in flax (so a depthwise kernel goes from ``(C, 1, k, k)`` to ``(k, k, 1, C)``), a linear
layer's is ``(out, in)`` where a flax ``Dense`` kernel is ``(in, out)``: both are transposed. A
BatchNorm's ``weight, bias`` are flax's ``scale, bias``; its ``running_mean, running_var`` go into
the ``batch_stats`` collection as ``mean, var``. The models' BatchNorm epsilons are torchvision's
(1e-5; 1e-3 for EfficientNet-B5 to B7) and PyTorch's momentum ``m`` on the new value is flax's
``1 - m`` on the old one, so fine-tuning the converted model updates its statistics as torchvision
would.

Every key is used exactly once. The expected variables come from ``jax.eval_shape`` of the jaxdl
model's ``init``; each one names the torchvision key it is read from, and a missing key, a shape
that differs, or a key left over at the end is a ``ValueError`` naming it. The BatchNorm counters
``num_batches_tracked`` have no flax counterpart: they are consumed and ignored (flax's momentum
update does not need them). DenseNet files saved by torchvision before 0.4 name a layer's
sub-modules ``norm.1``, ``conv.2`` ...; these are read as ``norm1``, ``conv2``, as torchvision's own
loader does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdl.models.densenet import DenseNet121, DenseNet169, DenseNet201
from jaxdl.models.efficientnet import efficientnet
from jaxdl.models.resnet import ResNet18, ResNet34, ResNet50, ResNet101, ResNet152

Path = tuple[str, ...]

_RESNETS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
}
_DENSENETS = {"densenet121": DenseNet121, "densenet169": DenseNet169, "densenet201": DenseNet201}
_EFFICIENTNETS = {f"efficientnet_b{i}": f"b{i}" for i in range(8)}

# torchvision's VisionTransformer configurations (Dosovitskiy et al. 2021, Table 1).
_VITS = {
    "vit_b_16": dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    "vit_b_32": dict(image_size=224, patch_size=32, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    "vit_l_16": dict(image_size=224, patch_size=16, num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096),
    "vit_l_32": dict(image_size=224, patch_size=32, num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096),
}  # fmt: skip

# The classifier's weight, whose first dimension gives num_classes.
_CLASSIFIER = {
    **{n: "fc.weight" for n in _RESNETS},
    **{n: "classifier.weight" for n in _DENSENETS},
    **{n: "classifier.1.weight" for n in _EFFICIENTNETS},
    **{n: "heads.head.weight" for n in _VITS},
}

TORCHVISION_NAMES: tuple[str, ...] = tuple(_CLASSIFIER)
"""The torchvision model names :func:`from_torchvision` converts."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in _CLASSIFIER:
        raise ValueError(
            f"from_torchvision: name must be one of {list(TORCHVISION_NAMES)}, got {name!r}"
        )
    return name.lower()


def torchvision_model(name: str, num_classes: int = 1000, **kwargs: Any) -> Any:
    """The jaxdl module matching torchvision's ``name`` (``"resnet50"``, ``"efficientnet_b3"``, ...).

    Its defaults are already torchvision's (BatchNorm epsilon and momentum, ResNet v1.5 stride on
    the bottleneck's 3x3 conv, EfficientNet's dropout and stochastic-depth rate 0.2); ``kwargs``
    override any attribute (``dtype=jnp.bfloat16``, ``norm=...``).
    """
    name = _check_name(name)
    if name in _RESNETS:
        return _RESNETS[name](num_classes=num_classes, **kwargs)
    if name in _DENSENETS:
        return _DENSENETS[name](num_classes=num_classes, **kwargs)
    if name in _VITS:
        from jaxdl.models.transformer import ViT

        return ViT(**{**_VITS[name], **kwargs}, num_classes=num_classes)
    return efficientnet(_EFFICIENTNETS[name], num_classes=num_classes, **kwargs)


# --- jaxdl module path -> torchvision module prefix, one function per family --------------------


def _resnet_prefix(path: Path) -> str:
    top = {"conv_init": "conv1", "bn_init": "bn1", "head": "fc"}
    if path[0] in top:
        return top[path[0]]
    m = re.fullmatch(r"stage(\d+)_block(\d+)", path[0])
    if m is None or len(path) != 2:
        raise KeyError(path)
    sub = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(path[1], path[1])
    return f"layer{m[1]}.{int(m[2]) - 1}.{sub}"


def _densenet_prefix(path: Path) -> str:
    top = {
        "conv_init": "features.conv0",
        "bn_init": "features.norm0",
        "bn_final": "features.norm5",
        "head": "classifier",
    }
    if path[0] in top:
        return top[path[0]]
    m = re.fullmatch(r"transition(\d+)_(bn|conv)", path[0])
    if m is not None:
        return f"features.transition{m[1]}.{'norm' if m[2] == 'bn' else 'conv'}"
    m = re.fullmatch(r"block(\d+)_layer(\d+)", path[0])
    if m is None or len(path) != 2:
        raise KeyError(path)
    sub = {"bn1": "norm1", "bn2": "norm2"}.get(path[1], path[1])
    return f"features.denseblock{m[1]}.denselayer{m[2]}.{sub}"


def _efficientnet_prefix(path: Path, tree: Mapping[str, Any]) -> str:
    stages = sum(1 for k in tree if re.fullmatch(r"stage\d+_block1", k))
    top = {
        "stem_conv": "features.0.0",
        "stem_bn": "features.0.1",
        "head_conv": f"features.{stages + 1}.0",
        "head_bn": f"features.{stages + 1}.1",
        "classifier": "classifier.1",
    }
    if path[0] in top:
        return top[path[0]]
    m = re.fullmatch(r"stage(\d+)_block(\d+)", path[0])
    if m is None or len(path) != 2:
        raise KeyError(path)
    # torchvision's MBConv is a Sequential: [expand (when t > 1)], depthwise, SE, project.
    offset = 1 if "expand_conv" in tree[path[0]] else 0
    sub = {
        "expand_conv": "0.0",
        "expand_bn": "0.1",
        "depthwise_conv": f"{offset}.0",
        "depthwise_bn": f"{offset}.1",
        "se_reduce": f"{offset + 1}.fc1",
        "se_expand": f"{offset + 1}.fc2",
        "project_conv": f"{offset + 2}.0",
        "project_bn": f"{offset + 2}.1",
    }[path[1]]
    return f"features.{m[1]}.{int(m[2]) - 1}.block.{sub}"


# flax leaf name -> torchvision leaf name, per collection.
_LEAVES = {
    "params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}

_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|"
    r"num_batches_tracked))$"
)


def _to_numpy(value: Any, key: str, caller: str = "from_torchvision") -> np.ndarray:
    """A state_dict value (torch tensor, floats as float32, or array) as a NumPy array."""
    if hasattr(value, "detach"):  # a torch.Tensor; torch itself is not imported here
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 (re-raised with the key named)
        raise TypeError(
            f"{caller}: state_dict[{key!r}] must be a tensor or array, got {type(value)}"
        ) from e


def _torch_layout(array: np.ndarray, expected_ndim: int) -> np.ndarray:
    """A torchvision parameter in flax's layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if expected_ndim == 4 and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if expected_ndim == 2 and array.ndim == 2:
        return array.T
    return array


def from_torchvision(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Convert torchvision's ``state_dict`` for model ``name`` into jaxdl variables.

    Args:
      name: one of :data:`TORCHVISION_NAMES`: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``,
        ``"resnet101"``, ``"resnet152"``, ``"densenet121"``, ``"densenet169"``,
        ``"densenet201"``, ``"efficientnet_b0"`` ... ``"efficientnet_b7"``, ``"vit_b_16"``,
        ``"vit_b_32"``, ``"vit_l_16"``, ``"vit_l_32"`` (ViTs have no ``batch_stats``: ``{}``).
      state_dict: ``model.state_dict()`` of the torchvision model, or the file torchvision's
        weights download to (``torch.load``-ed); values are torch tensors or NumPy arrays. The
        classifier may have any number of classes (a fine-tuned model's).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (float32 ``jax.Array`` leaves) for
      ``torchvision_model(name, num_classes)``, where ``num_classes`` is the classifier's width:
      ``apply(variables, x_nhwc, train=False)`` computes torchvision's eval-mode forward pass.

    Raises:
      ValueError: unknown ``name``; a key the model needs is missing; an array's shape differs
        from the model's; a key is left over (named, with the count of the others).
      TypeError: a value that is not an array or tensor.
    """
    name = _check_name(name)
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"from_torchvision: state_dict must be a mapping of names to tensors, got {type(state_dict)}"
        )
    remaining: dict[str, Any] = {}
    for key, value in state_dict.items():
        if name in _DENSENETS:
            key = _LEGACY_DENSENET.sub(r"\1\2", key)
        remaining[key] = value
    classifier = _CLASSIFIER[name]
    if classifier not in remaining:
        raise ValueError(
            f"from_torchvision: state_dict for {name} has no key {classifier!r} (the classifier)"
        )
    num_classes = int(np.shape(_to_numpy(remaining[classifier], classifier))[0])
    if name in _VITS:
        return _vit_from_torchvision(name, remaining, _VITS[name], num_classes)
    model = torchvision_model(name, num_classes=num_classes)
    side = model.downsampling  # the smallest input: the trace needs shapes only
    expected = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3), jnp.float32)
    )
    if name in _RESNETS:
        prefix: Callable[[Path], str] = _resnet_prefix
    elif name in _DENSENETS:
        prefix = _densenet_prefix
    else:
        params_tree = expected["params"]
        prefix = lambda path: _efficientnet_prefix(path, params_tree)  # noqa: E731

    out: dict[str, Any] = {}
    norm_prefixes = set()
    for collection in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(expected.get(collection, {}))
        converted = {}
        for path, shape_dtype in flat.items():
            module, leaf = path[:-1], path[-1]
            try:
                key = f"{prefix(module)}.{_LEAVES[collection][leaf]}"
            except KeyError:
                raise ValueError(
                    f"from_torchvision: no torchvision name for jaxdl's {collection}/"
                    f"{'/'.join(path)} in {name}"
                ) from None
            if key not in remaining:
                raise ValueError(
                    f"from_torchvision: state_dict for {name} is missing key {key!r} "
                    f"(jaxdl's {collection}/{'/'.join(path)})"
                )
            raw = _to_numpy(remaining.pop(key), key)
            array = _torch_layout(raw, len(shape_dtype.shape))
            if array.shape != shape_dtype.shape:
                raise ValueError(
                    f"from_torchvision: state_dict[{key!r}] has shape {raw.shape} ({array.shape} "
                    f"in flax's layout); {name}'s {collection}/{'/'.join(path)} needs "
                    f"{shape_dtype.shape}"
                )
            converted[path] = jnp.asarray(array, shape_dtype.dtype)
            if collection == "batch_stats":
                norm_prefixes.add(prefix(module))
        out[collection] = traverse_util.unflatten_dict(converted)
    for p in norm_prefixes:  # PyTorch's BatchNorm step counters: flax has no use for them
        remaining.pop(f"{p}.num_batches_tracked", None)
    if remaining:
        keys = sorted(remaining)
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        raise ValueError(
            f"from_torchvision: state_dict for {name} has key {keys[0]!r}{more} that the jaxdl "
            f"model does not use (a different architecture?)"
        )
    return out


def _vit_from_torchvision(
    name: str, remaining: dict[str, Any], cfg: Mapping[str, int], num_classes: int
) -> dict[str, Any]:
    """torchvision's ``VisionTransformer`` state_dict -> :class:`jaxdl.models.ViT` params.

    The fused attention input projection ``in_proj_weight`` ``(3D, D)`` (rows: query, key, value;
    PyTorch's ``y = x W^T + b``) becomes three kernels ``(D, heads, head_dim)`` (flax's
    ``MultiHeadDotProductAttention`` layout), ``out_proj.weight`` ``(D, D)`` the ``out`` kernel
    ``(heads, head_dim, D)``; the patch convolution OIHW -> HWIO; linear layers transposed.
    """
    from jaxdl.models.transformer import ViT

    d, h = cfg["embed_dim"], cfg["num_heads"]
    hd = d // h

    def take(key: str) -> np.ndarray:
        if key not in remaining:
            raise ValueError(f"from_torchvision: state_dict for {name} is missing key {key!r}")
        return _to_numpy(remaining.pop(key), key).astype(np.float32)

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": take(f"{prefix}.weight"), "bias": take(f"{prefix}.bias")}

    def linear(prefix: str) -> dict[str, np.ndarray]:
        return {"kernel": take(f"{prefix}.weight").T, "bias": take(f"{prefix}.bias")}

    encoder: dict[str, Any] = {"pos_embedding": take("encoder.pos_embedding")}
    for i in range(cfg["num_layers"]):
        pre = f"encoder.layers.encoder_layer_{i}"
        w_in = take(f"{pre}.self_attention.in_proj_weight")  # (3D, D)
        b_in = take(f"{pre}.self_attention.in_proj_bias")  # (3D,)
        attention = {
            n: {
                "kernel": w_in[j * d : (j + 1) * d].T.reshape(d, h, hd),
                "bias": b_in[j * d : (j + 1) * d].reshape(h, hd),
            }
            for j, n in enumerate(("query", "key", "value"))
        }
        attention["out"] = {
            "kernel": take(f"{pre}.self_attention.out_proj.weight").T.reshape(h, hd, d),
            "bias": take(f"{pre}.self_attention.out_proj.bias"),
        }
        encoder[f"encoder_layer_{i}"] = {
            "ln_1": norm(f"{pre}.ln_1"),
            "self_attention": attention,
            "ln_2": norm(f"{pre}.ln_2"),
            "mlp_0": linear(f"{pre}.mlp.0"),
            "mlp_3": linear(f"{pre}.mlp.3"),
        }
    encoder["ln"] = norm("encoder.ln")
    params = {
        "class_token": take("class_token"),
        "conv_proj": {
            "kernel": take("conv_proj.weight").transpose(2, 3, 1, 0),
            "bias": take("conv_proj.bias"),
        },
        "encoder": encoder,
        "head": linear("heads.head"),
    }
    if remaining:
        keys = sorted(remaining)
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        raise ValueError(
            f"from_torchvision: state_dict for {name} has key {keys[0]!r}{more} that the jaxdl "
            "model does not use (a different architecture?)"
        )
    model = ViT(**cfg, num_classes=num_classes)
    side = cfg["image_size"]
    expected = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3), jnp.float32)
    )["params"]
    want = traverse_util.flatten_dict(expected)
    got = traverse_util.flatten_dict(params)
    for path, spec in want.items():
        if path not in got or got[path].shape != spec.shape:
            found = None if path not in got else got[path].shape
            raise ValueError(
                f"from_torchvision: {name}'s params/{'/'.join(path)} needs shape {spec.shape}, "
                f"the state_dict gives {found}"
            )
    return {"params": jax.tree.map(jnp.asarray, params), "batch_stats": {}}
