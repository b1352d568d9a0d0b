"""Data-parallel and sharded training with JAX's own runtime: ``jit`` + sharding, ``shard_map``
and ``pmap``.

Three ways to run the same train step (:func:`jaxdl.train.make_train_step`) on ``D`` devices:

- **Sharding (the main path).** A 1-D device :class:`~jax.sharding.Mesh` with a ``"data"`` axis;
  each batch is placed with ``NamedSharding(mesh, P("data"))`` (device ``d`` holds rows
  ``d*B/D ... (d+1)*B/D - 1``), the state replicated (``P()``) or, with ``shard_params=True``,
  each parameter and optimizer-state array split along one axis over the devices (FSDP /
  ZeRO-3 style). The step is written for the *global* batch; ``jax.jit`` hands it to XLA's GSPMD
  partitioner, which runs each device on its rows and inserts the collectives the maths needs:
  an all-reduce of the gradient (the mean over the global batch is a sum over devices of partial
  sums), an all-gather of a sharded parameter before the layer that uses it, a reduce-scatter of
  its gradient. Results are those of one device on the global batch -- dropout masks included,
  since JAX's partitionable threefry draws the same bits under any sharding -- and BatchNorm
  statistics are global-batch statistics (synchronised) automatically.
- **shard_map (per-device code on the same runtime).** :func:`make_shard_map_train_step`:
  ``jax.jit(jax.shard_map(step))``, the state replicated and the batch split as above, but each
  device runs the single-device step on its own ``B/D`` rows and the step itself averages the
  gradients (``lax.pmean``) -- pmap's maths without pmap. Each device then runs exactly the
  program one device would run for a batch of ``B/D``, so layers that pick their lowering from
  the batch (:class:`jaxdl.nn.RNN`'s batch splits) or carry a hand-written backward pass
  (:func:`jaxdl.nn.lstm_layer`) keep it; the partitioner of the first path can instead
  gather whole activations where such a backward pass reshapes across the batch axis.
  **On a multi-core CPU** this is how jaxdl uses the cores for small recurrent models: with one
  CPU device per core (``jax.config.update("jax_num_cpu_devices", os.cpu_count())`` before the
  first computation) the devices' programs run on different cores at once, where one device
  leaves them mostly idle inside the LSTM's sequential loop (``docs/performance.md``).
- **pmap (the classic variant).** :func:`make_pmap_train_step`: the state carries a leading
  device axis, the batch is reshaped to ``(D, B/D, ...)``, and the step itself calls
  ``lax.pmean`` on the gradients and ``lax.psum`` on the metric sums over the named axis.
  BatchNorm synchronises only if the model's norm layers are given the same ``axis_name``
  (``functools.partial(nn.BatchNorm, axis_name="batch")``); otherwise each device normalises
  with its own ``B/D`` rows and the running statistics are averaged after each step.

Multi-process (several hosts, or several processes on one host for testing):
:func:`initialize_distributed` wraps ``jax.distributed.initialize``; afterwards ``jax.devices()``
lists every process's devices, the mesh spans them all, and :func:`put_global` builds each
global array from the identical host copy every process holds. ``python -m jaxdl.train.launch``
starts ``N`` local processes.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdl.train.state import TrainState
from jaxdl.train.step import jit_train_step, make_train_step

DATA_AXIS = "data"


# ----------------------------------------------------------------------------------------------
# Meshes and placements


def make_mesh(num_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh of ``num_devices`` devices (default: all of ``jax.devices()``) on axis ``"data"``.

    Raises:
      ValueError: ``num_devices`` is not a positive int or exceeds the devices available.
    """
    available = list(devices) if devices is not None else jax.devices()
    if num_devices is None:
        num_devices = len(available)
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive int, got {num_devices!r}")
    if num_devices > len(available):
        raise ValueError(
            f"num_devices={num_devices} but only {len(available)} devices are available "
            f"({available[0].platform}); on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before importing jax"
        )
    if jax.process_count() > 1 and num_devices != len(available):
        raise ValueError(
            f"a multi-process mesh must use every device: num_devices={num_devices}, "
            f"jax.devices() has {len(available)}"
        )
    return Mesh(np.asarray(available[:num_devices]), (DATA_AXIS,))


def check_mesh(mesh: Mesh) -> Mesh:
    """Validate a user-supplied mesh: it has a ``"data"`` axis and only devices JAX knows.

    Raises:
      ValueError: the mesh is not a ``Mesh``, has no ``"data"`` axis, has other axes of size > 1,
        or names devices that ``jax.devices()`` does not list.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have a {DATA_AXIS!r} axis, got axes {mesh.axis_names}")
    others = {a: n for a, n in mesh.shape.items() if a != DATA_AXIS and n > 1}
    if others:
        raise ValueError(f"mesh: only the {DATA_AXIS!r} axis may exceed size 1, got {others}")
    known = set(jax.devices())
    unknown = [d for d in mesh.devices.flat if d not in known]
    if unknown:
        raise ValueError(f"mesh holds devices not in jax.devices(): {unknown}")
    return mesh


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the ``"data"`` axis: ``P("data")``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: ``P()``."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise ``ValueError`` unless the global batch splits evenly over the data axis."""
    d = mesh.shape[DATA_AXIS]
    if batch_size % d:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {d} devices of the mesh's "
            f"{DATA_AXIS!r} axis; use a multiple of {d} (e.g. {max(d, batch_size // d * d)})"
        )


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 2**10) -> P:
    """Where to split one array for FSDP: along its largest axis that ``num_shards`` divides;
    replicated (``P()``) if none does or the array has fewer than ``min_size`` elements (a
    collective costs more than storing a small array ``D`` times)."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_shards == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(
    state: TrainState, mesh: Mesh, shard_params: bool = False, min_size: int = 2**10
):
    """The sharding of every leaf of ``state``: replicated, or (``shard_params``) parameters and
    optimizer-state arrays split by :func:`fsdp_spec`. ``step``, ``rng`` and the BatchNorm
    statistics stay replicated. Works on arrays or ``jax.ShapeDtypeStruct`` leaves."""
    d = mesh.shape[DATA_AXIS]
    rep = replicated(mesh)

    def split(leaf):
        return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), d, min_size))

    if not shard_params:
        return jax.tree.map(lambda _: rep, state)
    return state.replace(
        step=rep,
        rng=rep,
        batch_stats=jax.tree.map(lambda _: rep, state.batch_stats),
        params=jax.tree.map(split, state.params),
        opt_state=jax.tree.map(split, state.opt_state),
    )


def put_global(tree: Any, shardings: Any) -> Any:
    """Place host values (identical on every process) with the given shardings.

    In one process this is ``jax.device_put``; across processes each process fills only the
    shards of its own devices, through ``jax.make_array_from_callback``.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def shard_state(state: TrainState, mesh: Mesh, shard_params: bool = False) -> TrainState:
    """``state`` placed on ``mesh``: replicated, or FSDP-sharded with ``shard_params=True``.

    The result may share device buffers with ``state`` (``device_put`` need not copy to a device
    that already holds the array), so after a donating step has consumed it, treat ``state`` as
    consumed too."""
    return put_global(state, state_shardings(state, mesh, shard_params))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place a global batch: rows split over ``"data"`` when the row count divides the devices,
    otherwise replicated (a final short batch of an epoch; every device computes it whole, and the
    result is the same)."""
    leaves = jax.tree.leaves(batch)
    rows = len(leaves[0])
    d = mesh.shape[DATA_AXIS]
    sharding = data_sharding(mesh) if rows % d == 0 else replicated(mesh)
    return put_global(batch, jax.tree.map(lambda _: sharding, batch))


def prefetch_sharded(batches: Iterable[Any], mesh: Mesh, size: int = 2) -> Iterator[Any]:
    """:func:`shard_batch` each batch, keeping ``size`` transfers in flight ahead of the step
    (``device_put`` is asynchronous). Works across processes, unlike a plain ``device_put``."""
    queue: collections.deque = collections.deque()
    it = iter(batches)
    for batch in itertools.islice(it, size):
        queue.append(shard_batch(batch, mesh))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(it, 1):
            queue.append(shard_batch(batch, mesh))


def gather(tree: Any) -> Any:
    """Host NumPy copies of (possibly sharded, possibly multi-process) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# ----------------------------------------------------------------------------------------------
# The sharding path


def make_sharded_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    shardings: Any,
    *,
    donate: bool = True,
    **step_kwargs: Any,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The train step of :func:`jaxdl.train.make_train_step`, jitted for ``mesh``.

    The input batch's sharding (from :func:`shard_batch`) tells XLA how to split the work; the new
    state keeps ``shardings`` (from :func:`state_shardings`) and the metric sums come back
    replicated. ``step_kwargs`` are ``make_train_step``'s (``loss_fn``, ``class_weights``,
    ``augment``).
    """
    check_mesh(mesh)
    step = make_train_step(model, optimizer, jit=False, **step_kwargs)
    return jit_train_step(step, donate, out_shardings=(shardings, replicated(mesh)))


def make_shard_map_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    donate: bool = True,
    **step_kwargs: Any,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Data parallelism with per-device code: :func:`jaxdl.train.make_train_step`'s step (with
    ``axis_name="data"``) under ``jax.shard_map`` over ``mesh``, jitted.

    Call it as ``step(shard_state(state, mesh), *shard_batch((x, y), mesh))``. Device ``d`` takes
    rows ``d*B/D ... (d+1)*B/D - 1``, computes the gradient ``g_d`` of its mean loss, and every
    device applies the optimizer to ``g = (1/D) sum_d g_d`` -- the gradient of the mean over all
    ``B`` rows, since the shards are of equal size -- so the replicated state stays identical
    everywhere. Metric sums are ``psum``-ed (the totals over ``B``); BatchNorm statistics are
    ``pmean``-ed after the step, or synchronised inside it if the norm layers are given
    ``axis_name="data"``. Dropout keys are folded with the device index, as under :func:`jax.pmap`.

    The varying-type checks of ``shard_map`` are off (``check_vma=False``): the step's own
    ``pmean`` turns per-device gradients into the global one, as under pmap; with the checks on,
    JAX would already sum the gradients of the replicated parameters over devices.

    Raises:
      ValueError: the mesh is not valid (:func:`check_mesh`), or, per call, the batch's rows do
        not divide over the ``"data"`` axis (:func:`check_batch_size`).
    """
    check_mesh(mesh)
    step = make_train_step(model, optimizer, jit=False, axis_name=DATA_AXIS, **step_kwargs)
    per_device = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
        out_specs=(P(), P()),
        check_vma=False,
    )
    jitted = jit_train_step(per_device, donate)

    def train_step(state: TrainState, x: Any, y: jax.Array, mask: jax.Array | None = None):
        check_batch_size(int(np.shape(jax.tree.leaves(x)[0])[0]), mesh)
        return jitted(state, x, y, mask)

    # ahead-of-time lowering, as on any jitted function
    train_step.lower = lambda state, x, y, mask=None: jitted.lower(state, x, y, mask)
    return train_step


# ----------------------------------------------------------------------------------------------
# The pmap path


def replicate(tree: Any, num_devices: int | None = None) -> Any:
    """Give every leaf a leading device axis of size ``num_devices`` (pmap's layout)."""
    devices = jax.local_devices()[: num_devices or jax.local_device_count()]
    stacked = NamedSharding(Mesh(np.asarray(devices), ("d",)), P("d"))
    n = len(devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), stacked), tree
    )


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated pmap tree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(batch: Any, num_devices: int) -> Any:
    """``(B, ...) -> (D, B/D, ...)`` for :func:`jax.pmap`.

    Raises:
      ValueError: ``B`` is not divisible by ``num_devices``.
    """

    def split(a):
        a = np.asarray(a)
        if a.shape[0] % num_devices:
            raise ValueError(
                f"batch of {a.shape[0]} rows is not divisible by num_devices={num_devices}"
            )
        return a.reshape(num_devices, a.shape[0] // num_devices, *a.shape[1:])

    return jax.tree.map(split, batch)


def make_pmap_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    axis_name: str = "batch",
    num_devices: int | None = None,
    donate: bool = True,
    **step_kwargs: Any,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The classic data-parallel step: ``jax.pmap`` of the train step over ``axis_name``.

    Call it as ``state, metrics = step(replicate(state), *split_batch((x, y), D))``; inside,
    each device computes the gradient of the mean loss over its ``B/D`` rows, and
    ``g = lax.pmean(g_d, axis_name)`` is the gradient of the mean over all ``B`` rows (the shards
    are of equal size). Metric sums are ``psum``-ed, so ``unreplicate(metrics)`` holds the totals.
    Dropout keys are folded with ``lax.axis_index``: the masks differ per device and hence from a
    single-device run (the sharding path reproduces a single-device run exactly).
    """
    n = num_devices or jax.local_device_count()
    if n > jax.local_device_count():
        raise ValueError(
            f"num_devices={n} but only {jax.local_device_count()} local devices are available"
        )
    step = make_train_step(model, optimizer, jit=False, axis_name=axis_name, **step_kwargs)
    # pmap takes no compiler options; inside jit_train_step it gets the ones every step uses.
    mapped = jax.pmap(step, axis_name=axis_name, devices=jax.local_devices()[:n])
    return jit_train_step(mapped, donate)


# ----------------------------------------------------------------------------------------------
# Multi-process

ENV_COORDINATOR = "JAXDL_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXDL_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXDL_PROCESS_ID"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start ``jax.distributed`` if this run has more than one process; return whether it did.

    Arguments left ``None`` (or empty) are read from the environment variables the launcher sets
    (``JAXDL_COORDINATOR_ADDRESS``, ``JAXDL_NUM_PROCESSES``, ``JAXDL_PROCESS_ID``). On CPU the
    cross-process collectives use gloo. Call it before anything else touches JAX's devices.

    Raises:
      ValueError: ``num_processes > 1`` without a coordinator address or a valid ``process_id``.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None or num_processes == 0:
        num_processes = int(os.environ.get(ENV_NUM_PROCESSES, "1"))
    if process_id is None or process_id < 0:
        process_id = int(os.environ.get(ENV_PROCESS_ID, "0"))
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        return False
    if not coordinator_address:
        raise ValueError("num_processes > 1 needs a coordinator_address such as 'localhost:12355'")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def resolve_mesh(mesh: Mesh | None, num_devices: int | None, batch_size: int) -> Mesh | None:
    """The mesh ``fit`` trains on, or ``None`` for plain single-device training.

    An explicit ``mesh`` or ``num_devices`` must fit the batch (``ValueError`` otherwise); with
    neither, all devices are used when there are several and ``batch_size`` divides among them.
    """
    if mesh is not None and num_devices is not None:
        raise ValueError("give mesh or num_devices, not both")
    if mesh is not None:
        check_mesh(mesh)
        check_batch_size(batch_size, mesh)
        return mesh
    if num_devices is not None:
        mesh = make_mesh(num_devices)
        check_batch_size(batch_size, mesh)
        return None if num_devices == 1 else mesh
    n = jax.device_count()
    if n > 1 and batch_size % n == 0:
        return make_mesh(n)
    return None


__all__ = [
    "DATA_AXIS",
    "check_batch_size",
    "check_mesh",
    "data_sharding",
    "fsdp_spec",
    "gather",
    "initialize_distributed",
    "make_mesh",
    "make_pmap_train_step",
    "make_sharded_train_step",
    "prefetch_sharded",
    "put_global",
    "replicate",
    "replicated",
    "resolve_mesh",
    "shard_batch",
    "shard_state",
    "split_batch",
    "state_shardings",
    "unreplicate",
]
