"""optim.amsgrad against a float64 NumPy loop of PyTorch's formula, against
torch.optim.Adam(amsgrad=True) on the same gradient stream, and against optax.amsgrad where the
two forms agree (and a check that they differ where they should)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import optim

STEPS = 30


def _grads(steps=STEPS, shape=(3, 4), seed=0, decay=0.7):
    """A stream whose magnitude shrinks geometrically: the raw v falls below its running maximum,
    so the max really acts (with a steady stream AMSGrad equals Adam)."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 1, size=shape)  # per-element magnitudes over three decades
    return [scales * decay**t * rng.standard_normal(shape) for t in range(steps)]


def _numpy_amsgrad(theta, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """PyTorch's Adam(amsgrad=True) in float64; ``lr`` a number or a function of the step t-1."""
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_max = np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        eta = lr(t - 1) if callable(lr) else lr
        theta = theta - eta * (m / (1 - b1**t)) / (np.sqrt(v_max / (1 - b2**t)) + eps)
        out.append(theta.copy())
    return np.stack(out)


def _run(opt, theta, grads, jit=True):
    params = {"w": jnp.asarray(theta, jnp.float32)}
    state = opt.init(params)
    update = jax.jit(opt.update) if jit else opt.update
    out = []
    for g in grads:
        u, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(params["w"]))
    return np.stack(out), state


def _schedule(step):
    return 0.05 * 0.95 ** jnp.asarray(step, jnp.float32)


@pytest.mark.parametrize("lr_kind", ["float", "schedule"])
@pytest.mark.parametrize("jit", [True, False])
def test_matches_float64_loop_of_pytorch_formula(lr_kind, jit):
    grads = _grads()
    theta0 = np.linspace(-1, 1, 12).reshape(3, 4)
    lr = 0.05 if lr_kind == "float" else (lambda s: 0.05 * 0.95**s)
    want = _numpy_amsgrad(theta0, grads, lr, b1=0.8, b2=0.9, eps=1e-6)
    opt = optim.amsgrad(0.05 if lr_kind == "float" else _schedule, b1=0.8, b2=0.9, eps=1e-6)
    got, state = _run(opt, theta0, grads, jit=jit)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    amsgrad_state = state[0]
    assert int(amsgrad_state.count) == STEPS
    # The max is over the raw v and has really been used: it stays above the final v somewhere.
    assert np.all(np.asarray(amsgrad_state.nu_max["w"]) >= np.asarray(amsgrad_state.nu["w"]))
    assert np.any(np.asarray(amsgrad_state.nu_max["w"]) > 2 * np.asarray(amsgrad_state.nu["w"]))


def test_matches_torch_adam_amsgrad():
    torch = pytest.importorskip("torch")
    grads = _grads(seed=1)
    theta0 = np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32)
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt_t = torch.optim.Adam([p], lr=0.02, betas=(0.9, 0.95), eps=1e-8, amsgrad=True)
    want = []
    for g in grads:
        p.grad = torch.tensor(np.asarray(g, np.float32))
        opt_t.step()
        want.append(p.detach().numpy().copy())
    got, _ = _run(optim.amsgrad(0.02, b2=0.95), theta0, grads)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)
    # And against Adam, to show the stream separates the two (else the test is vacuous).
    adam, _ = _run(optim.adam(0.02, b2=0.95), theta0, grads)
    assert np.max(np.abs(adam[-1] - got[-1])) > 1e-2


def test_matches_optax_when_corrected_second_moment_never_falls():
    """With |g| growing, v_t/(1-b2^t) rises every step: max of raw v then correction (ours,
    PyTorch) and max of the corrected v (optax) coincide."""
    rng = np.random.default_rng(2)
    grads = [(1.1**t) * np.sign(rng.standard_normal((5,))) for t in range(STEPS)]
    theta0 = np.zeros(5)
    got, _ = _run(optim.amsgrad(0.1), theta0, grads)
    want, _ = _run(optax.amsgrad(0.1), theta0, grads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_differs_from_optax_when_corrected_second_moment_falls():
    """A large first gradient, then small ones: optax keeps max_s v_s/(1-b2^s) = g_1^2 for
    ever; ours divides max_s v_s = (1-b2) g_1^2 by the growing 1-b2^t, so its denominator
    shrinks and its steps are larger by sqrt((1-b2^t)/(1-b2)), at most 1/sqrt(1-b2)."""
    grads = [np.full((2,), 10.0)] + [np.full((2,), 0.1)] * 20
    ours, s = _run(optim.amsgrad(0.1, b2=0.9), np.zeros(2), grads)
    theirs, _ = _run(optax.amsgrad(0.1, b2=0.9), np.zeros(2), grads)
    step_ours, step_theirs = np.diff(ours[:, 0]), np.diff(theirs[:, 0])
    # Step 2 onwards: both are dominated by the first gradient in m, but our denominator is
    # sqrt(v_max/(1-b2^t)) = 10 sqrt(0.1/(1-0.9^t)) < 10 = optax's.
    t = np.arange(2, 22)
    ratio = step_ours / step_theirs
    np.testing.assert_allclose(ratio, np.sqrt((1 - 0.9**t) / 0.1), rtol=1e-3)


def test_step_one_is_sign_of_gradient_times_lr():
    """t = 1: m_hat = g, v_max/(1-b2) = g^2, so u = -lr g/(|g| + eps)."""
    g = jnp.array([3.0, -0.5, 1e-3])
    p = {"w": jnp.zeros(3)}
    opt = optim.amsgrad(0.1)
    u, _ = opt.update({"w": g}, opt.init(p), p)
    chex.assert_trees_all_close(u["w"], -0.1 * g / (jnp.abs(g) + 1e-8), rtol=1e-5)


def test_zero_gradients_give_zero_update_and_no_nan():
    p = {"w": jnp.ones((2, 2)), "b": jnp.ones(())}
    opt = optim.amsgrad(0.1)
    s = opt.init(p)
    for _ in range(3):
        u, s = opt.update(jax.tree.map(jnp.zeros_like, p), s, p)
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, p))


def test_get_by_name_and_state_structure():
    p = {"w": jnp.ones(3)}
    opt = optim.get("amsgrad", 0.1)
    s = opt.init(p)
    assert isinstance(s[0], optim.ScaleByAmsgradState)
    chex.assert_trees_all_equal_shapes(s[0].nu_max, p)


def test_bfloat16_params_with_float32_moments():
    p = {"w": jnp.ones(4, jnp.bfloat16)}
    opt = optim.amsgrad(0.1, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    s = opt.init(p)
    u, s = opt.update({"w": jnp.full(4, 0.5, jnp.bfloat16)}, s, p)
    assert u["w"].dtype == jnp.bfloat16
    assert s[0].mu["w"].dtype == jnp.float32 and s[0].nu_max["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"b1": 1.0}, "b1"),
        ({"b2": -0.1}, "b2"),
        ({"eps": -1.0}, "eps"),
        ({"eps_root": float("nan")}, "eps_root"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        optim.amsgrad(0.1, **kwargs)


def test_bad_learning_rate_raises():
    with pytest.raises(ValueError, match="learning_rate"):
        optim.amsgrad(-0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.amsgrad("fast")
