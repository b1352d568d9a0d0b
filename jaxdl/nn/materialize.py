"""An identity that XLA computes once into memory instead of re-deriving it inside its consumers.

XLA fuses cheap elementwise producers into every consumer, duplicating them when a value has
several. On a residual path that compounds: a ResNet block's output
``x_b = relu(BN(conv(h_b)) + x_{b-1})`` is itself made of the previous block's output, so each
consumer fusion of ``x_b`` (the next block's shortcut add, the transposed copies that XLA:CPU makes
for every convolution's kernel gradient) can recompute the whole chain of batch-norms and adds back
to the stage's first block from the convolution outputs: work and memory traffic that grow with the
square of the depth. A profile of CIFAR ResNet-20's train step on XLA:CPU showed these
``transpose_copy`` fusions, with up to 20 operands each (four blocks' worth of batch-norm inputs),
taking 170 of 1,080 CPU-ms; ResNet-56's step ran 4.3x slower than ResNet-20's for 2.8x the FLOPs
(``docs/performance.md``).

:func:`materialize` returns its argument unchanged but through a ``dynamic_update_slice`` that
writes one element of the array back onto itself: XLA does not fuse a dynamic-update-slice into
the ops that read its result, so they read the stored array. ``jax.lax.optimization_barrier``
would say the same, but XLA:CPU removes barriers before fusion. The gradient is the identity,
materialised the same way (the residual path's gradient is a chain of adds too). The cost is one
write of one channel vector per call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["materialize"]


def _stored(x: jax.Array) -> jax.Array:
    if x.ndim == 0:
        return x
    zero = jnp.zeros((), jnp.int32)
    start = (zero,) * x.ndim
    corner = lax.dynamic_slice(x, start, (1,) * (x.ndim - 1) + (x.shape[-1],))
    return lax.dynamic_update_slice(x, corner, start)


@jax.custom_vjp
def materialize(x: jax.Array) -> jax.Array:
    """``x``, computed once into a buffer that XLA's fusion cannot look through (module docstring).

    Use it on values that many later operations read and that are cheap elementwise functions of
    other such values, e.g. a residual block's output. Shapes: any; returns ``x``'s shape and dtype.
    """
    return _stored(x)


def _materialize_fwd(x):
    return _stored(x), None


def _materialize_bwd(_, g):
    return (_stored(g),)


materialize.defvjp(_materialize_fwd, _materialize_bwd)
