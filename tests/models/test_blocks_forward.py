"""The zoo's blocks compute what the papers (and torchvision) compute, checked value by value.

Each jaxdl block runs in inference mode with random weights and random BatchNorm statistics
against a PyTorch module written here, in torchvision's structure, holding the same weights.
These catch what parameter counts cannot: ResNet's last ReLU moved before the residual add, the
stride on the wrong conv of a bottleneck, an inverted squeeze-and-excitation gate
(``1 - sigmoid``), a transition that pools before its BN-ReLU (each of these was made on purpose
and seen to fail these tests).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.models.densenet import DenseLayer

torch = pytest.importorskip("torch")
tnn = torch.nn

RNG = np.random.default_rng(0)


def _randomize(module) -> None:
    """Random weights and BatchNorm statistics (torch's init leaves BN the identity)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.3, generator=gen)
                m.running_mean.normal_(0.0, 0.3, generator=gen)
                m.running_var.uniform_(0.3, 1.5, generator=gen)
            elif isinstance(m, tnn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, 1.5 / fan_in**0.5, generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.3, generator=gen)
    module.eval()


def _conv(m) -> dict:
    out = {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(2, 3, 1, 0))}  # OIHW -> HWIO
    if m.bias is not None:
        out["bias"] = jnp.asarray(m.bias.detach().numpy())
    return out


def _bn(m) -> tuple[dict, dict]:
    params = {
        "scale": jnp.asarray(m.weight.detach().numpy()),
        "bias": jnp.asarray(m.bias.detach().numpy()),
    }
    stats = {"mean": jnp.asarray(m.running_mean.numpy()), "var": jnp.asarray(m.running_var.numpy())}
    return params, stats


def _variables(pairs: dict) -> dict:
    """``{jaxdl module path ("a/b"): torch module}`` -> flax variables."""
    variables: dict = {"params": {}, "batch_stats": {}}

    def put(col, path, value):
        *outer, leaf = path.split("/")
        node = variables[col]
        for k in outer:
            node = node.setdefault(k, {})
        node[leaf] = value

    for path, m in pairs.items():
        if isinstance(m, tnn.BatchNorm2d):
            params, stats = _bn(m)
            put("batch_stats", path, stats)
        elif isinstance(m, tnn.Linear):
            params = {
                "kernel": jnp.asarray(m.weight.detach().numpy().T),
                "bias": jnp.asarray(m.bias.detach().numpy()),
            }
        else:
            params = _conv(m)
        put("params", path, params)
    return variables


def _torch_forward(module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = module(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()))
    return y.numpy().transpose(0, 2, 3, 1)


CONV = functools.partial(nn.Conv, use_bias=False)
NORM = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)


def _bn_t(c: int, eps: float = 1e-5):
    return tnn.BatchNorm2d(c, eps=eps)


# --- ResNet ---------------------------------------------------------------------------------------


class TorchBasicBlock(tnn.Module):
    """torchvision.models.resnet.BasicBlock's forward pass."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn_t(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn_t(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), _bn_t(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class TorchBottleneck(tnn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: the stride is on the 3x3 conv)."""

    def __init__(self, cin: int, width: int, stride: int, stride_in_1x1: bool = False):
        super().__init__()
        cout = 4 * width
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = tnn.Conv2d(cin, width, 1, s1, bias=False)
        self.bn1 = _bn_t(width)
        self.conv2 = tnn.Conv2d(width, width, 3, s3, 1, bias=False)
        self.bn2 = _bn_t(width)
        self.conv3 = tnn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn_t(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), _bn_t(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def _resnet_variables(t) -> dict:
    names = {
        k: getattr(t, k) for k in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3") if hasattr(t, k)
    }
    if t.down is not None:
        names |= {"proj_conv": t.down[0], "proj_bn": t.down[1]}
    return _variables(names)


@pytest.mark.parametrize("cin, cout, stride", [(8, 8, 1), (4, 8, 2)])
def test_basic_block(cin, cout, stride):
    t = TorchBasicBlock(cin, cout, stride)
    _randomize(t)
    x = RNG.standard_normal((2, 8, 8, cin)).astype(np.float32)
    block = models.BasicBlock(cout, conv=CONV, norm=NORM, strides=stride)
    y = jax.jit(block.apply)(_resnet_variables(t), jnp.asarray(x))
    np.testing.assert_allclose(y, _torch_forward(t, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cin, width, stride, v1", [(16, 4, 1, False), (8, 4, 2, False), (8, 4, 2, True)]
)
def test_bottleneck(cin, width, stride, v1):
    # v1 = False: torchvision's v1.5, stride on the 3x3 conv; v1 = True: on the first 1x1 conv.
    t = TorchBottleneck(cin, width, stride, stride_in_1x1=v1)
    _randomize(t)
    x = RNG.standard_normal((2, 8, 8, cin)).astype(np.float32)
    block = models.Bottleneck(width, conv=CONV, norm=NORM, strides=stride, stride_in_1x1=v1)
    y = jax.jit(block.apply)(_resnet_variables(t), jnp.asarray(x))
    np.testing.assert_allclose(y, _torch_forward(t, x), rtol=1e-5, atol=1e-5)


# --- DenseNet -------------------------------------------------------------------------------------


class TorchDenseLayer(tnn.Module):
    """torchvision.models.densenet._DenseLayer: BN-ReLU-conv1x1(bn_size k)-BN-ReLU-conv3x3(k)."""

    def __init__(self, cin: int, k: int, bn_size: int):
        super().__init__()
        self.norm1 = _bn_t(cin)
        self.conv1 = tnn.Conv2d(cin, bn_size * k, 1, bias=False)
        self.norm2 = _bn_t(bn_size * k)
        self.conv2 = tnn.Conv2d(bn_size * k, k, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(torch.relu(self.norm1(x)))
        return self.conv2(torch.relu(self.norm2(y)))


class TorchDenseNet(tnn.Module):
    """A two-block DenseNet-BC in torchvision's structure (CIFAR stem: one 3x3 conv)."""

    def __init__(self, k: int, layers: int, init: int, classes: int):
        super().__init__()
        self.conv0 = tnn.Conv2d(3, init, 3, 1, 1, bias=False)
        c = init
        self.block1 = tnn.ModuleList()
        for _ in range(layers):
            self.block1.append(TorchDenseLayer(c, k, 4))
            c += k
        # _Transition: BN-ReLU-conv1x1(c // 2)-AvgPool2x2
        self.t_norm, self.t_conv = _bn_t(c), tnn.Conv2d(c, c // 2, 1, bias=False)
        c //= 2
        self.block2 = tnn.ModuleList()
        for _ in range(layers):
            self.block2.append(TorchDenseLayer(c, k, 4))
            c += k
        self.norm5 = _bn_t(c)
        self.classifier = tnn.Linear(c, classes)

    def forward(self, x):
        x = self.conv0(x)
        for layer in self.block1:
            x = torch.cat([x, layer(x)], 1)
        x = torch.nn.functional.avg_pool2d(self.t_conv(torch.relu(self.t_norm(x))), 2, 2)
        for layer in self.block2:
            x = torch.cat([x, layer(x)], 1)
        x = torch.relu(self.norm5(x)).mean((2, 3))
        return self.classifier(x)


def _dense_layer_names(t: TorchDenseLayer) -> dict:
    return {"bn1": t.norm1, "conv1": t.conv1, "bn2": t.norm2, "conv2": t.conv2}


def test_dense_layer():
    t = TorchDenseLayer(12, 4, 4)
    _randomize(t)
    x = RNG.standard_normal((2, 6, 6, 12)).astype(np.float32)
    layer = DenseLayer(4, 4, 0.0, CONV, NORM)
    y = jax.jit(layer.apply, static_argnums=2)(
        _variables(_dense_layer_names(t)), jnp.asarray(x), False
    )
    np.testing.assert_allclose(y, _torch_forward(t, x), rtol=1e-5, atol=1e-5)


def test_dense_blocks_and_transition():
    # Concatenation order, the transition's BN-ReLU-conv-pool and the final BN-ReLU-pool-dense.
    t = TorchDenseNet(k=4, layers=2, init=8, classes=5)
    _randomize(t)
    x = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)
    model = models.DenseNet(
        block_sizes=(2, 2), growth_rate=4, num_init_features=8, stem="cifar", num_classes=5
    )
    names = {
        "conv_init": t.conv0,
        "transition1_bn": t.t_norm,
        "transition1_conv": t.t_conv,
        "bn_final": t.norm5,
        "head": t.classifier,
    }
    for b, block in ((1, t.block1), (2, t.block2)):
        for j, layer in enumerate(block):
            names |= {f"block{b}_layer{j + 1}/{k}": m for k, m in _dense_layer_names(layer).items()}
    variables = _variables(names)
    y = jax.jit(model.apply)(variables, jnp.asarray(x))
    with torch.no_grad():
        ref = t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# --- EfficientNet ---------------------------------------------------------------------------------


class TorchMBConv(tnn.Module):
    """torchvision.models.efficientnet.MBConv in eval mode (stochastic depth is the identity)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden, squeezed = cin * expand, max(1, cin // 4)
        self.expand = None
        if expand != 1:
            self.expand = tnn.Sequential(
                tnn.Conv2d(cin, hidden, 1, bias=False), _bn_t(hidden), tnn.SiLU()
            )
        self.dw = tnn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.dw_bn = _bn_t(hidden)
        self.fc1, self.fc2 = tnn.Conv2d(hidden, squeezed, 1), tnn.Conv2d(squeezed, hidden, 1)
        self.project = tnn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = _bn_t(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = x if self.expand is None else self.expand(x)
        h = torch.nn.functional.silu(self.dw_bn(self.dw(h)))
        s = h.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(torch.nn.functional.silu(self.fc1(s))))  # SE gate
        y = self.project_bn(self.project(h * s))
        return x + y if self.residual else y


@pytest.mark.parametrize("cin, cout, expand, kernel, stride", [(8, 8, 6, 3, 1), (8, 16, 1, 5, 2)])
def test_mbconv_with_squeeze_excitation(cin, cout, expand, kernel, stride):
    t = TorchMBConv(cin, cout, expand, kernel, stride)
    _randomize(t)
    names = {
        "depthwise_conv": t.dw,
        "depthwise_bn": t.dw_bn,
        "se_reduce": t.fc1,
        "se_expand": t.fc2,
        "project_conv": t.project,
        "project_bn": t.project_bn,
    }
    if t.expand is not None:
        names |= {"expand_conv": t.expand[0], "expand_bn": t.expand[1]}
    x = RNG.standard_normal((2, 8, 8, cin)).astype(np.float32)
    block = models.MBConv(
        cout, expand, kernel, stride, se_ratio=0.25, drop_rate=0.2, conv=CONV, norm=NORM
    )
    y = jax.jit(block.apply, static_argnums=2)(_variables(names), jnp.asarray(x), False)
    np.testing.assert_allclose(y, _torch_forward(t, x), rtol=1e-5, atol=1e-5)
