"""Optimizers re-derived as optax-compatible gradient transformations.

Every optimizer is an :class:`optax.GradientTransformation` built by :func:`chain`-ing small
``scale_by_*`` transforms written here (:mod:`jaxdl.optim.transforms`); use them as optax's::

    opt = optim.adam(1e-3)                      # or a schedule: optim.adam(optim.cosine_decay(1e-3, 10_000))
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

Changing the learning rate of a running optimizer (e.g. a ReduceLROnPlateau callback between
epochs): each alias keeps a :class:`ScaleByLearningRateState` whose float32 ``scale`` multiplies
the learning rate (or the schedule's value). :func:`scale_learning_rate` /
:func:`set_learning_rate` return a new opt_state with it changed, and :func:`get_learning_rate`
reads the rate the next update will use. The scale is an array in the state, so a jitted step is
not recompiled. Inside a training step, :func:`reduce_on_plateau` does the same from a
``value=loss`` argument. ``optax.inject_hyperparams(optim.adam)(learning_rate=...)`` also works.
"""

from jaxdl.optim.alias import adam, adamax, adamw, get, momentum, radam, rmsprop, sgd
from jaxdl.optim.clipping import clip_by_global_norm, clip_by_value, global_norm
from jaxdl.optim.hyperparams import (
    get_learning_rate,
    get_learning_rate_scale,
    has_learning_rate_state,
    injected_learning_rate,
    scale_learning_rate,
    set_learning_rate,
)
from jaxdl.optim.plateau import ReduceOnPlateauState, is_improvement, reduce_on_plateau
from jaxdl.optim.regularizers import (
    RegularizerState,
    add_decayed_weights,
    add_l1,
    weight_decay_mask,
)
from jaxdl.optim.schedules import (
    constant,
    cosine_decay,
    exponential_decay,
    piecewise_constant,
    warmup_cosine_decay,
)
from jaxdl.optim.transforms import (
    ScaleByAdamState,
    ScaleByCenteredRmsState,
    ScaleByLearningRateState,
    ScaleByMomentumState,
    ScaleByRmsState,
    chain,
    radam_rho,
    scale_by_adam,
    scale_by_adamax,
    scale_by_learning_rate,
    scale_by_momentum,
    scale_by_radam,
    scale_by_rms,
)

__all__ = [
    "ReduceOnPlateauState",
    "RegularizerState",
    "ScaleByAdamState",
    "ScaleByCenteredRmsState",
    "ScaleByLearningRateState",
    "ScaleByMomentumState",
    "ScaleByRmsState",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "add_l1",
    "chain",
    "clip_by_global_norm",
    "clip_by_value",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "get",
    "get_learning_rate",
    "get_learning_rate_scale",
    "global_norm",
    "momentum",
    "piecewise_constant",
    "radam",
    "radam_rho",
    "reduce_on_plateau",
    "is_improvement",
    "has_learning_rate_state",
    "injected_learning_rate",
    "rmsprop",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_momentum",
    "scale_by_radam",
    "scale_by_rms",
    "scale_learning_rate",
    "set_learning_rate",
    "sgd",
    "warmup_cosine_decay",
    "weight_decay_mask",
]

# AMSGrad (appended; kept as its own block so merges with other optimizer work stay trivial).
from jaxdl.optim.alias import amsgrad  # noqa: E402
from jaxdl.optim.transforms import ScaleByAmsgradState, scale_by_amsgrad  # noqa: E402

__all__ += ["ScaleByAmsgradState", "amsgrad", "scale_by_amsgrad"]
