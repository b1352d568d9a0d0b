"""Training: TrainState, jitted steps, fit with Keras-style callbacks, orbax checkpoints,
data-parallel and mixed-precision training, and a debugging toolkit.

Submodules: :mod:`~jaxdl.train.parallel` (sharding, pmap, multi-process),
:mod:`~jaxdl.train.precision` (dtype policies, loss scaling), :mod:`~jaxdl.train.debug`
(overfit-one-batch, layer statistics, NaN finder, learning-rate range test).
"""

from jaxdl.train import debug, parallel, precision
from jaxdl.train.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    RunContext,
    TensorBoard,
)
from jaxdl.train.checkpoint import Checkpointer, CorruptCheckpointError, load_variables
from jaxdl.train.debug import LayerStatsLogger, lr_range_test, overfit_one_batch
from jaxdl.train.history import History
from jaxdl.train.loop import NonFiniteLossError, default_optimizer, evaluate, fit, predict
from jaxdl.train.precision import Policy, dynamic_loss_scale
from jaxdl.train.state import TrainState, create_train_state
from jaxdl.train.step import jit_inference, jit_train_step, make_eval_step, make_train_step

__all__ = [
    "CSVLogger",
    "Callback",
    "Checkpointer",
    "CorruptCheckpointError",
    "RunContext",
    "TensorBoard",
    "jit_inference",
    "jit_train_step",
    "load_variables",
    "predict",
    "EarlyStopping",
    "History",
    "LayerStatsLogger",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "Policy",
    "ReduceLROnPlateau",
    "TrainState",
    "create_train_state",
    "debug",
    "default_optimizer",
    "dynamic_loss_scale",
    "evaluate",
    "fit",
    "lr_range_test",
    "make_eval_step",
    "make_train_step",
    "overfit_one_batch",
    "parallel",
    "precision",
]
