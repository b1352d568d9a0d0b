"""Each jaxdl optimizer against its optax counterpart on one stream of random gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

from jaxdl import optim

STEPS = 35


def _params():
    """A nested pytree with mixed shapes and ranks, including a scalar leaf."""
    k = jax.random.split(jax.random.key(0), 5)
    return {
        "dense": {"kernel": jax.random.normal(k[0], (4, 3)), "bias": jax.random.normal(k[1], (3,))},
        "conv": {"kernel": jax.random.normal(k[2], (3, 3, 2, 5))},
        "norm": [jax.random.normal(k[3], (5,)), jax.random.normal(k[4], ())],
    }


def _grad_stream(params, steps=STEPS, seed=1):
    """Gradients of differing magnitude per leaf, so adaptive methods really rescale."""
    keys = jax.random.split(jax.random.key(seed), steps)
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for key in keys:
        ks = jax.random.split(key, len(leaves))
        out.append(
            jax.tree.unflatten(
                treedef,
                [
                    (10.0**i) * jax.random.normal(kk, jnp.shape(p)) - 0.1 * p
                    for i, (kk, p) in enumerate(zip(ks, leaves, strict=True))
                ],
            )
        )
    return out


def _decay_mask(params):
    return optim.weight_decay_mask(params)


def schedule(step):
    # Identical callable handed to both libraries; jnp so it traces.
    return 0.05 * 0.97 ** jnp.asarray(step, jnp.float32)


CASES = [
    ("sgd", lambda lr: optim.sgd(lr), lambda lr: optax.sgd(lr)),
    ("momentum", lambda lr: optim.momentum(lr, 0.9), lambda lr: optax.sgd(lr, momentum=0.9)),
    (
        "nesterov",
        lambda lr: optim.momentum(lr, 0.8, nesterov=True),
        lambda lr: optax.sgd(lr, momentum=0.8, nesterov=True),
    ),
    (
        "momentum_ema",
        lambda lr: optim.momentum(lr, 0.9, ema=True),
        lambda lr: optax.chain(optax.ema(0.9, debias=False), optax.scale_by_learning_rate(lr)),
    ),
    ("rmsprop", lambda lr: optim.rmsprop(lr), lambda lr: optax.rmsprop(lr)),
    (
        "rmsprop_eps_outside",
        lambda lr: optim.rmsprop(lr, decay=0.95, eps=1e-3, eps_in_sqrt=False),
        lambda lr: optax.rmsprop(lr, decay=0.95, eps=1e-3, eps_in_sqrt=False),
    ),
    (
        "rmsprop_centered_momentum",
        lambda lr: optim.rmsprop(lr, eps=1e-4, centered=True, momentum=0.9),
        lambda lr: optax.rmsprop(lr, eps=1e-4, centered=True, momentum=0.9),
    ),
    (
        "rmsprop_nesterov",
        lambda lr: optim.rmsprop(lr, momentum=0.5, nesterov=True),
        lambda lr: optax.rmsprop(lr, momentum=0.5, nesterov=True),
    ),
    ("adam", lambda lr: optim.adam(lr), lambda lr: optax.adam(lr)),
    (
        "adam_eps",
        lambda lr: optim.adam(lr, b1=0.8, b2=0.99, eps=1e-3, eps_root=1e-6),
        lambda lr: optax.adam(lr, b1=0.8, b2=0.99, eps=1e-3, eps_root=1e-6),
    ),
    (
        "adamw",
        lambda lr: optim.adamw(lr, weight_decay=0.1),
        lambda lr: optax.adamw(lr, weight_decay=0.1),
    ),
    (
        "adamw_masked",
        lambda lr: optim.adamw(lr, weight_decay=0.1, mask=_decay_mask),
        lambda lr: optax.adamw(lr, weight_decay=0.1, mask=_decay_mask),
    ),
    ("adamax", lambda lr: optim.adamax(lr), lambda lr: optax.adamax(lr)),
    # optax evaluates rho_t = rho_inf - 2t b2^t / (1 - b2^t) in float32, which cancels two numbers
    # near 2000 (about 1% error in the first rectified step); ours is exact to float32 (checked against float64 in
    # test_boundaries.py), so RAdam agrees with optax only to that error.
    ("radam", lambda lr: optim.radam(lr), lambda lr: optax.radam(lr), 3e-2),
    (
        "radam_threshold4",
        lambda lr: optim.radam(lr, b2=0.99, threshold=4.0),
        lambda lr: optax.radam(lr, b2=0.99, threshold=4.0),
        3e-2,
    ),
]


_REFERENCE = {}


def _run(opt, params, grads, update):
    state = opt.init(params)
    trajectory = []
    for g in grads:
        updates, state = update(opt, g, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append((updates, params))
    return trajectory


class AliasesMatchOptax(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    # Cases by name: test ids must not hold function reprs (they differ between pytest-xdist workers).
    @parameterized.product(case_name=[c[0] for c in CASES], lr_kind=("float", "schedule"))
    def test_matches_optax(self, case_name, lr_kind):
        name, ours, theirs, *tol = next(c for c in CASES if c[0] == case_name)
        rtol = tol[0] if tol else 1e-4  # optax rounds 1 - beta^t (see _bias_correction)
        lr = 0.02 if lr_kind == "float" else schedule
        params = _params()
        grads = _grad_stream(params)

        got = _run(ours(lr), params, grads, lambda o, *a: self.variant(o.update)(*a))
        key = (name, lr_kind)  # the optax reference is shared by the jit and no-jit variants
        if key not in _REFERENCE:
            _REFERENCE[key] = _run(theirs(lr), params, grads, lambda o, *a: jax.jit(o.update)(*a))
        want = _REFERENCE[key]
        # Stack the 35 steps so one comparison covers the whole trajectory.
        stack = lambda traj: jax.tree.map(lambda *xs: jnp.stack(xs), *traj)  # noqa: E731
        (u, p), (u_ref, p_ref) = stack(got), stack(want)
        chex.assert_trees_all_close(u, u_ref, rtol=rtol, atol=1e-7, custom_message=name)
        chex.assert_trees_all_close(p, p_ref, rtol=rtol, atol=1e-5, custom_message=name)
        # The stream really moved the parameters, so agreement is not vacuous.
        moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got[-1][1], params)
        self.assertGreater(max(jax.tree.leaves(moved)), 1e-3)


def test_schedule_is_called_with_count_before_the_update():
    calls = []

    def lr(step):
        calls.append(step)
        return 0.1 * (jnp.asarray(step) + 1)

    opt = optim.sgd(lr)
    p = {"w": jnp.ones(2)}
    s = opt.init(p)
    u1, s = opt.update({"w": jnp.ones(2)}, s, p)
    u2, s = opt.update({"w": jnp.ones(2)}, s, p)
    np.testing.assert_allclose(u1["w"], [-0.1, -0.1], rtol=1e-6)
    np.testing.assert_allclose(u2["w"], [-0.2, -0.2], rtol=1e-6)
    np.testing.assert_allclose(optim.get_learning_rate(s), 0.3, rtol=1e-6)


def test_get_by_name_and_unknown_name():
    p = {"w": jnp.ones(3)}
    g = {"w": jnp.arange(3.0)}
    u, _ = optim.get("ADAM", 0.1, b2=0.99).update(g, optim.adam(0.1, b2=0.99).init(p), p)
    u_ref, _ = optax.adam(0.1, b2=0.99).update(g, optax.adam(0.1, b2=0.99).init(p), p)
    chex.assert_trees_all_close(u, u_ref)
    with np.testing.assert_raises_regex(ValueError, "name must be one of"):
        optim.get("adagrad", 0.1)
