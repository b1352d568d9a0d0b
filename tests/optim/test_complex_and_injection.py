"""Complex parameters and injected hyper-parameters, as optax's own alias tests exercise them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import optim

CASES = [
    ("adam", lambda: optim.adam(1e-2), lambda: optax.adam(1e-2)),
    ("adamw", lambda: optim.adamw(1e-2), lambda: optax.adamw(1e-2, weight_decay=1e-4)),
    ("rmsprop", lambda: optim.rmsprop(1e-2, eps_in_sqrt=False), lambda: optax.rmsprop(1e-2)),
    (
        "rmsprop_centered",
        lambda: optim.rmsprop(1e-2, eps_in_sqrt=False, centered=True),
        lambda: optax.rmsprop(1e-2, centered=True),
    ),
    ("radam", lambda: optim.radam(1e-2), lambda: optax.radam(1e-2)),
    ("sgd_momentum", lambda: optim.sgd(1e-2, momentum=0.9), lambda: optax.sgd(1e-2, 0.9)),
    (
        "sgd_nesterov",
        lambda: optim.sgd(1e-2, momentum=0.9, nesterov=True),
        lambda: optax.sgd(1e-2, 0.9, nesterov=True),
    ),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_complex_parameters_follow_optax(name, ours, theirs):
    """|g|^2 = g conj(g): the second moment of a complex gradient is real and non-negative."""
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(5,)) + 1j * rng.normal(size=(5,)), jnp.complex64)
    target = jnp.asarray(rng.normal(size=(5,)) + 1j * rng.normal(size=(5,)), jnp.complex64)

    def loss(p):  # a real loss of a complex parameter; JAX's grad is the conjugate Wirtinger one
        return jnp.sum(jnp.abs(p - target) ** 2)

    results = []
    for tx in (ours(), theirs()):
        p, s = z, tx.init(z)
        for _ in range(25):
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
        results.append(p)
    # RAdam: optax's rectification differs from ours (and PyTorch's) in float32 rounding of rho_t,
    # as the real-valued alias tests document; the complex bug moved parameters by O(1).
    tol = 1e-4 if name == "radam" else 2e-6
    chex.assert_trees_all_close(results[0], results[1], rtol=tol * 10, atol=tol)


@pytest.mark.parametrize(
    "factory,kwargs",
    [
        (optim.rmsprop, {"learning_rate": 1e-2, "momentum": 0.9}),
        (optim.rmsprop, {"learning_rate": 1e-2, "momentum": 0.0}),
        (optim.sgd, {"learning_rate": 1e-2, "momentum": 0.9}),
        (optim.adam, {"learning_rate": 1e-2, "b1": 0.8}),
        (optim.momentum, {"learning_rate": 1e-2, "beta": 0.5}),
    ],
)
def test_every_numeric_hyperparameter_is_injectable(factory, kwargs):
    """``optax.inject_hyperparams`` calls the factory with traced values: it must neither fail
    nor change the maths."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.linspace(0.5, -0.3, 6)}
    plain = factory(**kwargs)
    injected = optax.inject_hyperparams(factory)(**kwargs)
    s1, s2 = plain.init(params), injected.init(params)
    p1 = p2 = params
    for _ in range(4):
        u1, s1 = plain.update(grads, s1, p1)
        u2, s2 = injected.update(grads, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    chex.assert_trees_all_close(p1, p2, rtol=1e-6)
    assert optim.get_learning_rate(s2) == pytest.approx(kwargs["learning_rate"])


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        optim.sgd(0.1, nesterov=True)
