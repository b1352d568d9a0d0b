"""Training: TrainState, jitted steps, fit with Keras-style callbacks, orbax checkpoints."""

from jaxdl.train.callbacks import Callback, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from jaxdl.train.checkpoint import Checkpointer
from jaxdl.train.loop import History, NonFiniteLossError, Trainer, default_optimizer, evaluate, fit
from jaxdl.train.state import TrainState, create_train_state
from jaxdl.train.step import make_eval_step, make_train_step

__all__ = [
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "History",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "ReduceLROnPlateau",
    "TrainState",
    "Trainer",
    "create_train_state",
    "default_optimizer",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_train_step",
]

# Scale: data-parallel/sharded training and mixed precision (train.parallel.make_mesh, ...).
from jaxdl.train import parallel, precision  # noqa: E402
from jaxdl.train.precision import Policy, dynamic_loss_scale  # noqa: E402

__all__ += ["Policy", "dynamic_loss_scale", "parallel", "precision"]
