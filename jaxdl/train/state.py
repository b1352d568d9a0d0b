"""The training state: one pytree holding everything a run needs to continue."""

from __future__ import annotations

import inspect
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as a pytree of arrays.

    The model and the optimizer are *functions* and stay outside; the state is pure data, so it
    can be donated to a jitted step, sharded, and checkpointed with orbax as it is.

    Attributes:
      step: number of optimizer updates applied so far (int32 scalar).
      params: the model's ``'params'`` collection.
      batch_stats: the ``'batch_stats'`` collection (BatchNorm running statistics); ``{}`` when the
        model has none.
      opt_state: the optimizer's state.
      rng: a raw ``uint32[2]`` PRNG key. The key for step ``t`` is ``fold_in(rng, t)``, so random
        draws depend only on the step number and a resumed run repeats them exactly.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    def step_key(self) -> jax.Array:
        """The PRNG key of the current step, ``fold_in(rng, step)``."""
        return jax.random.fold_in(self.rng, self.step)


MODE_ARGUMENTS = ("train", "training", "deterministic")


def train_kwargs(model: nn.Module, train: bool) -> dict[str, bool]:
    """The keyword that tells ``model`` whether it is training, read from its ``__call__``.

    ``train=`` (the jaxdl convention) or ``training=`` receive ``train``; ``deterministic=``
    (flax's ``Dropout`` convention) receives ``not train``. A model whose ``__call__`` names none
    of them gets no flag (plain ``nn.Dense``); one that names several is ambiguous.

    Raises:
      ValueError: ``__call__`` names more than one of ``train``, ``training``, ``deterministic``.
    """
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return {}
    named = [a for a in MODE_ARGUMENTS if a in params]
    if len(named) > 1:
        raise ValueError(
            f"{type(model).__name__}.__call__ takes {named}: jaxdl cannot tell which one switches "
            "training mode; keep one of train / training / deterministic"
        )
    if not named:
        return {}
    return {named[0]: (not train) if named[0] == "deterministic" else train}


def model_inputs(x: Any) -> tuple[tuple, dict]:
    """How a batch ``x`` is passed to the model: an array positionally, a tuple or list of arrays
    as several positional arguments, a dict by keyword (``SequenceClassifier(tokens,
    seq_lengths)`` trains from ``x = (tokens, lengths)`` or ``{"x": tokens, "seq_lengths": ...}``)."""
    if isinstance(x, tuple | list):
        return tuple(x), {}
    if isinstance(x, dict):
        return (), dict(x)
    return (x,), {}


def apply_model(model: nn.Module, variables: dict, x: Any, train: bool, **kwargs: Any) -> Any:
    """``model.apply(variables, *inputs, <mode flag>, **kwargs)`` for a batch ``x`` of any of the
    forms :func:`model_inputs` accepts."""
    args, named = model_inputs(x)
    return model.apply(variables, *args, **named, **train_kwargs(model, train), **kwargs)


def path_str(path: tuple) -> str:
    """A pytree key path as ``'Conv_0/kernel'``: one spelling whether the tree holds dicts,
    dataclasses, NamedTuples or lists (a raw orbax restore gives dicts where the saved tree had
    dataclasses, and both must name a leaf alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def batch_rows(x: Any) -> int:
    """The number of examples in a batch of any form (the first axis of its first array)."""
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x holds no array")
    return int(jnp.shape(leaves[0])[0])


def as_raw_key(rng: int | jax.Array) -> jax.Array:
    """Accept a seed, a typed key or a raw key; return the raw ``uint32[2]`` form orbax can store."""
    if isinstance(rng, int):
        return jax.random.PRNGKey(rng)
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    if rng.dtype != jnp.uint32 or rng.shape != (2,):
        raise ValueError(
            f"rng must be an int seed, a typed key or a uint32[2] key, got {rng.dtype}{rng.shape}"
        )
    return rng


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_x: Any,
    rng: int | jax.Array = 0,
) -> TrainState:
    """Initialise parameters, BatchNorm statistics and optimizer state.

    Args:
      model: a flax.linen module called as ``model(x, train=...)``.
      optimizer: an ``optax.GradientTransformation``.
      sample_x: an input batch (only its shape and dtype matter): an array, a tuple of arrays
        (several positional inputs) or a dict (keyword inputs).
      rng: a seed or PRNG key, split into an initialisation key (the ``'params'`` and ``'dropout'``
        streams of ``model.init``) and the state's key for the training steps.
    """
    init_key, step_rng = jax.random.split(as_raw_key(rng))
    k_params, k_dropout = jax.random.split(init_key)
    init_keys = {"params": k_params, "dropout": k_dropout}

    def init(x):
        args, named = model_inputs(x)
        return model.init(init_keys, *args, **named, **train_kwargs(model, False))

    variables = jax.jit(init)(sample_x)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=optimizer.init(params),
        rng=step_rng,
    )
