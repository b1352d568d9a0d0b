"""Hand-computed boundary cases and float64 NumPy loops of each update rule as written on paper."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import optim


def _stream(steps=30, shape=(7,), seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [scale * rng.normal(size=shape).astype(np.float32) for _ in range(steps)]


def _run_ours(opt, theta0, grads):
    """Parameters after each step, as float64 NumPy, for comparison with the NumPy loops."""
    params = {"w": jnp.asarray(theta0, jnp.float32)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    out = []
    for g in grads:
        u, state = update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(params["w"], np.float64))
    return np.stack(out)


THETA0 = np.linspace(-1.0, 1.0, 7)


def test_adam_step_one_bias_correction():
    # m_1 = (1-b1) g, v_1 = (1-b2) g^2; corrected they are g and g^2, so u_1 = -lr g / (|g| + eps).
    g = np.array([3.0, -0.5, 1e-3, 0.0], np.float32)
    lr, eps = 0.1, 1e-8
    opt = optim.adam(lr, eps=eps)
    p = {"w": jnp.zeros(4)}
    u, state = opt.update({"w": jnp.asarray(g)}, opt.init(p), p)
    np.testing.assert_allclose(u["w"], -lr * g / (np.abs(g) + eps), rtol=1e-6)
    adam_state = state[0]
    np.testing.assert_allclose(adam_state.mu["w"], 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(adam_state.nu["w"], 0.001 * g * g, rtol=1e-5)
    assert int(adam_state.count) == 1


def _adam_reference(theta, grads, lr, b1, b2, eps, bias_correction=True):
    """Kingma & Ba (2015), Algorithm 1, in float64."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if bias_correction:
            theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            theta = theta - lr * m / (np.sqrt(v) + eps)
        out.append(theta)
    return np.stack(out)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_against_float64_loop(bias_correction):
    grads = _stream()
    got = _run_ours(
        optim.adam(0.01, 0.9, 0.999, 1e-8, bias_correction=bias_correction), THETA0, grads
    )
    want = _adam_reference(THETA0, grads, 0.01, 0.9, 0.999, 1e-8, bias_correction)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_adam_without_bias_correction_takes_small_first_steps():
    # The course's point: uncorrected moments start near zero, so the first step is
    # (1-b1)/sqrt(1-b2) = 0.1/0.0316 ~ 3.16 times lr * sign(g), not lr * sign(g).
    g = {"w": jnp.array([2.0])}
    p = {"w": jnp.zeros(1)}
    opt = optim.adam(1.0, bias_correction=False, eps=0.0)
    u, _ = opt.update(g, opt.init(p), p)
    np.testing.assert_allclose(u["w"], [-0.1 / np.sqrt(0.001)], rtol=1e-5)


def _radam_reference(theta, grads, lr, b1, b2, eps, threshold):
    """Liu et al. (2019), Algorithm 2, in float64 (eps added to the corrected root, as optax)."""
    rho_inf = 2 / (1 - b2) - 1
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out, rectified = [], []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            theta = theta - lr * r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            theta = theta - lr * m_hat
        out.append(theta)
        rectified.append(rho > threshold)
    return np.stack(out), rectified


def test_radam_rho_values_from_the_issue():
    rho = np.asarray(optim.radam_rho(jnp.arange(1, 8), 0.999))
    np.testing.assert_allclose(rho[4], 4.996, atol=5e-4)
    np.testing.assert_allclose(rho[5], 5.994, atol=5e-4)
    t = np.arange(1, 20_001)
    b2 = 0.999
    exact = 2 / (1 - b2) - 1 - 2 * t * b2**t / (1 - b2**t)
    np.testing.assert_allclose(optim.radam_rho(jnp.asarray(t), b2), exact, rtol=2e-6)


@pytest.mark.parametrize("threshold,first_rectified", [(5.0, 6), (4.0, 5)])
def test_radam_switches_exactly_where_rho_passes_threshold(threshold, first_rectified):
    grads = _stream(steps=12)
    lr = 0.01
    got = _run_ours(optim.radam(lr, threshold=threshold), THETA0, grads)
    want, rectified = _radam_reference(THETA0, grads, lr, 0.9, 0.999, 1e-8, threshold)
    assert rectified.index(True) + 1 == first_rectified
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Before the switch the step is exactly momentum SGD on the corrected first moment.
    m = np.zeros(7)
    theta = THETA0.copy()
    for t, g in enumerate(grads[: first_rectified - 1], start=1):
        m = 0.9 * m + 0.1 * g
        theta = theta - lr * m / (1 - 0.9**t)
    np.testing.assert_allclose(got[first_rectified - 2], theta, rtol=1e-6)
    # ... and the first rectified step is far from the momentum-SGD step it replaces, so a switch
    # one step early or late would fail the trajectory comparison above.
    m = 0.9 * m + 0.1 * grads[first_rectified - 1]
    sgd_step = -lr * m / (1 - 0.9**first_rectified)
    step = got[first_rectified - 1] - got[first_rectified - 2]
    assert np.min(np.abs(step - sgd_step) / np.abs(sgd_step)) > 0.1


def test_adamax_against_float64_loop():
    grads = _stream()
    lr, b1, b2, eps = 0.02, 0.9, 0.999, 1e-8
    m = np.zeros(7)
    u = np.zeros(7)
    theta = THETA0.copy()
    want = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)  # eps inside the max: PyTorch and optax
        theta = theta - lr / (1 - b1**t) * m / u
        want.append(theta)
    got = _run_ours(optim.adamax(lr, b1, b2, eps), THETA0, grads)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-7)


def test_course_ema_momentum_against_numpy_loop():
    # The course: v = beta v + (1 - beta) g ; theta = theta - lr v.
    grads = _stream()
    lr, beta = 0.1, 0.9
    v = np.zeros(7)
    theta = THETA0.copy()
    want = []
    for g in grads:
        v = beta * v + (1 - beta) * g
        theta = theta - lr * v
        want.append(theta)
    got = _run_ours(optim.momentum(lr, beta, ema=True), THETA0, grads)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)


def test_ema_and_heavy_ball_differ_by_one_minus_beta_in_the_learning_rate():
    grads = _stream()
    beta = 0.8
    ema = _run_ours(optim.momentum(0.1, beta, ema=True), THETA0, grads)
    heavy = _run_ours(optim.momentum(0.1 * (1 - beta), beta), THETA0, grads)
    np.testing.assert_allclose(ema, heavy, rtol=1e-5, atol=1e-6)


def test_nesterov_heavy_ball_against_numpy_loop():
    # PyTorch's SGD(nesterov=True): v = beta v + g ; theta -= lr (g + beta v).
    grads = _stream()
    lr, beta = 0.05, 0.9
    v = np.zeros(7)
    theta = THETA0.copy()
    want = []
    for g in grads:
        v = beta * v + g
        theta = theta - lr * (g + beta * v)
        want.append(theta)
    got = _run_ours(optim.momentum(lr, beta, nesterov=True), THETA0, grads)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_course_rmsprop_against_numpy_loop(eps_in_sqrt):
    # The course: s = rho s + (1 - rho) g^2 ; theta -= lr g / sqrt(s + eps)   (eps inside the root)
    grads = _stream(scale=0.01)  # small gradients, so eps = 1e-4 placement visibly matters
    lr, rho, eps = 0.01, 0.9, 1e-4
    s = np.zeros(7)
    theta = THETA0.copy()
    want = []
    for g in grads:
        s = rho * s + (1 - rho) * g * g
        denom = np.sqrt(s + eps) if eps_in_sqrt else np.sqrt(s) + eps
        theta = theta - lr * g / denom
        want.append(theta)
    opt = optim.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=eps_in_sqrt)
    got = _run_ours(opt, THETA0, grads)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-7)
    other = _run_ours(optim.rmsprop(lr, rho, eps, eps_in_sqrt=not eps_in_sqrt), THETA0, grads)
    assert np.max(np.abs(other - got)) > 1e-4  # the two placements are really different


def test_centered_rmsprop_against_numpy_loop():
    grads = _stream()
    lr, rho, eps = 0.01, 0.9, 1e-6
    m = np.zeros(7)
    s = np.zeros(7)
    theta = THETA0.copy()
    want = []
    for g in grads:
        m = rho * m + (1 - rho) * g
        s = rho * s + (1 - rho) * g * g
        theta = theta - lr * g / np.sqrt(s - m * m + eps)
        want.append(theta)
    got = _run_ours(optim.rmsprop(lr, rho, eps, centered=True), THETA0, grads)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-6)


ALIASES = {
    "sgd": lambda lr: optim.sgd(lr),
    "momentum": lambda lr: optim.momentum(lr, nesterov=True),
    "rmsprop": lambda lr: optim.rmsprop(lr, momentum=0.9, centered=True),
    "adam": lambda lr: optim.adam(lr),
    "adamw": lambda lr: optim.adamw(lr, mask=optim.weight_decay_mask),
    "adamax": lambda lr: optim.adamax(lr),
    "radam": lambda lr: optim.radam(lr),
}


def _tree():
    return {
        "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        "norm": {"scale": jnp.ones(2)},
    }


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_no_recompilation_across_steps_and_lr_changes(name):
    traces = []
    opt = ALIASES[name](optim.cosine_decay(0.1, 20))

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        u, state = opt.update(grads, state, params)
        return optax.apply_updates(params, u), state

    params = _tree()
    state = opt.init(params)
    for i in range(8):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (i + 1)), params)  # noqa: B023
        params, state = step(params, state, grads)
        if i == 3:  # what a ReduceLROnPlateau callback does between epochs
            state = optim.scale_learning_rate(state, 0.5)
    assert len(traces) == 1


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam", "adamax", "radam"])
def test_zero_gradients_leave_parameters_unchanged(name):
    params = _tree()
    opt = ALIASES[name](0.1)
    state = opt.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        u, state = opt.update(zeros, state, params)
        chex.assert_trees_all_equal(optax.apply_updates(params, u), params)
        chex.assert_tree_all_finite(u)


def test_adamw_zero_gradients_decay_only_masked_leaves():
    params = _tree()
    lr, wd = 0.1, 0.01
    opt = optim.adamw(lr, weight_decay=wd, mask=optim.weight_decay_mask)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = opt.update(zeros, opt.init(params), params)
    new = optax.apply_updates(params, u)
    np.testing.assert_allclose(new["dense"]["kernel"], 1.0 - lr * wd, rtol=1e-6)
    chex.assert_trees_all_equal(new["dense"]["bias"], params["dense"]["bias"])
    chex.assert_trees_all_equal(new["norm"]["scale"], params["norm"]["scale"])


def test_mu_dtype_keeps_float32_moments_for_bfloat16_params():
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    opt = optim.adam(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    state = opt.init(params)
    assert state[0].mu["w"].dtype == jnp.float32 and state[0].nu["w"].dtype == jnp.float32
    g = {"w": jnp.full((4,), 1e-3, jnp.bfloat16)}
    u, state = jax.jit(opt.update)(g, state, params)
    assert u["w"].dtype == jnp.bfloat16
    assert state[0].mu["w"].dtype == jnp.float32 and state[0].nu["w"].dtype == jnp.float32
    # Default: moments follow the parameters' dtype.
    assert optim.adam(1e-3).init(params)[0].mu["w"].dtype == jnp.bfloat16
    assert optim.momentum(0.1, accumulator_dtype=jnp.float32).init(params)[0].trace["w"].dtype == (
        jnp.float32
    )


def test_learning_rate_scale_from_outside_jit():
    params = {"w": jnp.ones(3)}
    g = {"w": jnp.ones(3)}
    opt = optim.adam(0.1)
    state = opt.init(params)
    assert optim.get_learning_rate(state) == pytest.approx(0.1)
    u1, _ = opt.update(g, state, params)
    half = optim.scale_learning_rate(state, 0.5)
    assert optim.get_learning_rate_scale(half) == pytest.approx(0.5)
    assert optim.get_learning_rate(half) == pytest.approx(0.05)
    u2, _ = opt.update(g, half, params)
    np.testing.assert_allclose(u2["w"], 0.5 * u1["w"], rtol=1e-6)
    set_ = optim.set_learning_rate(state, 0.02)
    assert optim.get_learning_rate(set_) == pytest.approx(0.02)
    # Reading the rate folds in a reduce_on_plateau scale too.
    chained = optim.chain(optim.sgd(0.1), optim.reduce_on_plateau())
    cs = chained.init(params)
    cs = (cs[0], cs[1]._replace(scale=jnp.float32(0.25)))
    assert optim.get_learning_rate(cs) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="ScaleByLearningRateState"):
        optim.scale_learning_rate(optax.adam(0.1).init(params), 0.5)


def test_optax_inject_hyperparams_wraps_our_aliases():
    params = {"w": jnp.linspace(-1, 1, 5)}
    grads = [{"w": jnp.asarray(g)} for g in _stream(steps=5, shape=(5,))]
    ours = optim.adam(0.05)
    injected = optax.inject_hyperparams(optim.adam)(learning_rate=0.05)
    s1, s2 = ours.init(params), injected.init(params)
    for g in grads:
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = injected.update(g, s2, params)
        chex.assert_trees_all_close(u1, u2, rtol=1e-5)


@pytest.mark.parametrize(
    "build,arg",
    [
        (lambda: optim.sgd(-0.1), "learning_rate"),
        (lambda: optim.sgd("fast"), "learning_rate"),
        (lambda: optim.momentum(0.1, beta=1.0), "beta"),
        (lambda: optim.momentum(0.1, beta=-0.1), "beta"),
        (lambda: optim.rmsprop(0.1, decay=1.5), "decay"),
        (lambda: optim.rmsprop(0.1, eps=-1e-8), "eps"),
        (lambda: optim.rmsprop(0.1, momentum=1.0), "momentum"),
        (lambda: optim.adam(0.1, b1=1.0), "b1"),
        (lambda: optim.adam(0.1, b2=-0.5), "b2"),
        (lambda: optim.adam(0.1, eps=-1.0), "eps"),
        (lambda: optim.adamw(0.1, weight_decay=-1e-4), "weight_decay"),
        (lambda: optim.adamax(0.1, b2=1.0), "b2"),
        (lambda: optim.radam(0.1, threshold=-1.0), "threshold"),
        (lambda: optim.get("nadam", 0.1), "name"),
        (lambda: optim.clip_by_global_norm(0.0), "max_norm"),
        (lambda: optim.clip_by_value(-1.0), "limit"),
        (lambda: optim.add_l1(-0.1), "l1"),
        (lambda: optim.reduce_on_plateau(factor=1.0), "factor"),
        (lambda: optim.reduce_on_plateau(patience=0), "patience"),
        (lambda: optim.reduce_on_plateau(mode="up"), "mode"),
        (lambda: optim.exponential_decay(0.1, 0, 0.5), "transition_steps"),
        (lambda: optim.cosine_decay(0.1, 10, alpha=2.0), "alpha"),
        (lambda: optim.warmup_cosine_decay(0.0, 0.1, 10, 5), "decay_steps"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_argument(build, arg):
    with pytest.raises(ValueError, match=arg):
        build()
