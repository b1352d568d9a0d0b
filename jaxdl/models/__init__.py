"""Models: flax.linen modules. Images are NHWC; BatchNorm state lives in 'batch_stats'."""

from jaxdl.models.cnn import MnistCNN

__all__ = ["MnistCNN"]

# CNN zoo (issue 6): ResNet, DenseNet, EfficientNet, model summaries.
from jaxdl.models.resnet import (  # noqa: E402
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    plain_cifar,
    resnet_cifar,
)

__all__ += [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "plain_cifar",
    "resnet_cifar",
]
from jaxdl.models.densenet import (  # noqa: E402
    DenseNet,
    DenseNet121,
    DenseNet169,
    DenseNet201,
    densenet_cifar,
)

__all__ += ["DenseNet", "DenseNet121", "DenseNet169", "DenseNet201", "densenet_cifar"]
from jaxdl.models.efficientnet import (  # noqa: E402
    EfficientNet,
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
    MBConv,
    compound_scaling,
    round_filters,
    round_repeats,
)

__all__ += [
    "EfficientNet",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "MBConv",
    "compound_scaling",
    "round_filters",
    "round_repeats",
]

# Sequence models (issue 5): recurrent classifier and forecaster.
from jaxdl.models.sequence import Forecaster, SequenceClassifier  # noqa: E402

__all__ += ["Forecaster", "SequenceClassifier"]
from jaxdl.models.summary import ModelSummary, count_params, summary  # noqa: E402

__all__ += ["ModelSummary", "count_params", "summary"]

# Graph neural networks (issue 18): GCN/GAT node classifiers, GIN/GCN graph classifier.
from jaxdl.models.gnn import GAT, GCN, GraphClassifier  # noqa: E402

__all__ += ["GAT", "GCN", "GraphClassifier"]

# Diffusion (issue 19): the U-Net noise predictor.
from jaxdl.models.unet import UNet, timestep_embedding  # noqa: E402

__all__ += ["UNet", "timestep_embedding"]

# torchvision weights (issue 24): from_torchvision converts a state_dict to jaxdl variables.
from jaxdl.models.torchvision import (  # noqa: E402
    TORCHVISION_NAMES,
    from_torchvision,
    torchvision_model,
)

__all__ += ["TORCHVISION_NAMES", "from_torchvision", "torchvision_model"]

# Transformers (issue 17): GPT with KV-cache sampling, ViT.
from jaxdl.models.transformer import GPT, ViT, generate, init_cache  # noqa: E402

__all__ += ["GPT", "ViT", "generate", "init_cache"]

# GPT-2 weights (issue 17): Hugging Face's GPT-2 checkpoints in and out of models.GPT.
from jaxdl.models.gpt2 import from_gpt2, load_gpt2, to_gpt2  # noqa: E402

__all__ += ["from_gpt2", "load_gpt2", "to_gpt2"]
