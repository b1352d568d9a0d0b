"""jaxdl.diffusion against the papers' formulas (NumPy), Gaussian closed forms, and the exact noise
predictor of Gaussian data, for which the right output distribution of each sampler is known."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import diffusion

MU, SD = 0.7, 0.5  # data x0 ~ N(MU, SD^2) in every dimension


def exact_eps_fn(schedule):
    """E[eps | x_t] for x0 ~ N(MU, SD^2): x_t ~ N(sqrt(a) MU, a SD^2 + 1 - a), and eps is jointly
    Gaussian with it, Cov(eps, x_t) = sqrt(1 - a), so E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) MU) / var."""

    def eps_fn(x, t):
        a = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * SD**2 + 1 - a)

    return eps_fn


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_matches_ho_et_al():
    s = diffusion.linear_schedule(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas, 1 - betas, rtol=1e-6)
    abar = np.array([np.prod(1 - betas[: t + 1]) for t in range(1000)])  # prod_{i<=t}
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
    assert s.num_steps == 1000 and s.betas.dtype == jnp.float32
    np.testing.assert_allclose(s.alphas_cumprod_prev[0], 1.0)
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s_ = 1000, 0.008
    s = diffusion.cosine_schedule(T, s_)

    def f(t):  # the paper's f(t), t = 0..T
        return math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2

    # Paper (1-indexed): abar_t = f(t)/f(0), beta_t = min(1 - abar_t/abar_{t-1}, 0.999), t = 1..T.
    betas = np.array([min(1 - (f(t) / f(0)) / (f(t - 1) / f(0)), 0.999) for t in range(1, T + 1)])
    np.testing.assert_allclose(s.betas, betas, rtol=1e-5, atol=1e-7)
    assert float(s.betas[-1]) == pytest.approx(0.999)  # clipped at the end
    assert np.all(np.asarray(s.betas) <= 0.999 + 1e-7)
    # Where nothing is clipped, alphas_cumprod[t] is the target abar(t+1) = f(t+1)/f(0).
    target = np.array([f(t + 1) / f(0) for t in range(T)])
    np.testing.assert_allclose(s.alphas_cumprod[:990], target[:990], rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)


def test_schedule_is_a_pytree_through_jit():
    s = diffusion.linear_schedule(10)
    out = jax.jit(lambda sch: sch.alphas_cumprod * 2)(s)
    chex.assert_trees_all_close(out, s.alphas_cumprod * 2)


@pytest.mark.parametrize(
    "fn,kwargs",
    [
        (diffusion.linear_schedule, {"num_steps": 0}),
        (diffusion.linear_schedule, {"beta_start": 0.03, "beta_end": 0.02}),
        (diffusion.linear_schedule, {"beta_start": -1.0}),
        (diffusion.linear_schedule, {"beta_end": 1.0}),
        (diffusion.cosine_schedule, {"num_steps": -5}),
        (diffusion.cosine_schedule, {"s": -0.1}),
    ],
)
def test_bad_schedule_arguments(fn, kwargs):
    with pytest.raises(ValueError):
        fn(**kwargs)
    with pytest.raises(TypeError, match="num_steps"):
        diffusion.linear_schedule(10.5)


# ----------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("jit", [False, True])
def test_q_sample_formula(jit):
    s = diffusion.cosine_schedule(100)
    x0 = jnp.asarray([[1.5, -0.3], [0.2, 0.9], [-1.0, 0.0]])  # (3, 2)
    t = jnp.asarray([0, 40, 99])
    noise = jax.random.normal(jax.random.key(0), (3, 2))
    out = (jax.jit(diffusion.q_sample) if jit else diffusion.q_sample)(s, x0, t, noise)
    a = np.asarray(s.alphas_cumprod)[np.asarray(t)][:, None]
    np.testing.assert_allclose(out, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-6)


def test_q_sample_mean_and_variance():
    s = diffusion.linear_schedule(1000)
    n = 20000
    x0 = jnp.full((n, 1), 2.0)
    t = jnp.full((n,), 300)
    xt = diffusion.q_sample(s, x0, t, jax.random.normal(jax.random.key(1), (n, 1)))
    a = float(s.alphas_cumprod[300])
    se = math.sqrt((1 - a) / n)
    assert abs(float(xt.mean()) - math.sqrt(a) * 2.0) < 5 * se
    assert float(xt.var()) == pytest.approx(1 - a, rel=0.05)


@pytest.mark.parametrize("t", [0, 1, 17, 49])
def test_posterior_matches_gaussian_conditioning(t):
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0."""
    s = diffusion.linear_schedule(50, 1e-3, 0.2)
    b = np.asarray(s.betas, np.float64)
    abar = np.cumprod(1 - b)
    abar_prev = 1.0 if t == 0 else abar[t - 1]
    x0 = np.array([[0.3, -1.2]])
    xt = np.array([[1.1, 0.4]])
    # x_{t-1} ~ N(sqrt(abar_prev) x0, 1 - abar_prev);  x_t = sqrt(1 - b_t) x_{t-1} + sqrt(b_t) e
    m1, v11 = np.sqrt(abar_prev) * x0, 1 - abar_prev
    m2, v12 = np.sqrt(1 - b[t]) * m1, np.sqrt(1 - b[t]) * v11
    v22 = (1 - b[t]) * v11 + b[t]
    mean_ref = m1 + v12 / v22 * (xt - m2)
    var_ref = v11 - v12**2 / v22
    mean, var = diffusion.q_posterior(
        s, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray([t])
    )
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var, [var_ref], rtol=1e-4, atol=1e-7)
    if t == 0:
        np.testing.assert_allclose(mean, x0, rtol=1e-4)  # float32 beta_0 / (1 - abar_0)
        assert float(var[0]) == 0.0


def test_v_prediction_round_trip_and_loss():
    s = diffusion.cosine_schedule(100)
    key = jax.random.key(3)
    x0 = jax.random.normal(key, (4, 3, 3, 1))
    t = jnp.asarray([0, 10, 50, 99])
    noise = jax.random.normal(jax.random.key(4), x0.shape)
    xt = diffusion.q_sample(s, x0, t, noise)
    v = diffusion.training_target(s, x0, t, noise, "v")
    a = np.asarray(s.alphas_cumprod)[np.asarray(t)].reshape(4, 1, 1, 1)
    np.testing.assert_allclose(v, np.sqrt(a) * noise - np.sqrt(1 - a) * x0, rtol=1e-5, atol=1e-6)
    eps = diffusion.eps_from_v(lambda x, tt: v, s)(xt, t)
    np.testing.assert_allclose(eps, noise, atol=2e-5)
    np.testing.assert_allclose(diffusion.predict_x0(s, xt, t, noise), x0, atol=3e-4)
    # The loss is the mean squared error to the target at the t and noise drawn from key.
    kt, kn = jax.random.split(key)
    t_ = jax.random.randint(kt, (4,), 0, 100, dtype=jnp.int32)
    n_ = jax.random.normal(kn, x0.shape)

    def zero(x, tt):
        return jnp.zeros_like(x)

    for pred in ("epsilon", "v"):
        target = diffusion.training_target(s, x0, t_, n_, pred)
        loss = diffusion.denoising_loss(zero, s, x0, key, prediction=pred)
        np.testing.assert_allclose(loss, jnp.mean(target**2), rtol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        diffusion.denoising_loss(zero, s, x0, key, prediction="x0")


# ----------------------------------------------------------------------------- samplers


def _affine_ddim(schedule, tau):
    """DDIM (eta=0) with the exact predictor is an affine map x_0 = k x_T + c: propagate it in float64."""
    ab = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
    k, c = 1.0, 0.0
    tau = list(tau)[::-1]
    for i, t in enumerate(tau):
        a = ab[t]
        b = ab[tau[i + 1]] if i + 1 < len(tau) else 1.0
        g = np.sqrt(1 - a) / (a * SD**2 + 1 - a)  # eps = g (x - sqrt(a) MU)
        k_step = np.sqrt(b) * (1 - np.sqrt(1 - a) * g) / np.sqrt(a) + np.sqrt(1 - b) * g
        c_step = np.sqrt(b) * np.sqrt(1 - a) * g * MU - np.sqrt(1 - b) * g * np.sqrt(a) * MU
        k, c = k_step * k, k_step * c + c_step
    return k, c


@pytest.mark.parametrize("num_steps", [1, 7, 50])
def test_ddim_eta0_is_the_exact_affine_map(num_steps):
    s = diffusion.linear_schedule(200, 1e-4, 0.05)
    x_T = jax.random.normal(jax.random.key(0), (64, 2))
    out = diffusion.ddim_sample(exact_eps_fn(s), s, (64, 2), jax.random.key(9), num_steps, x_T=x_T)
    k, c = _affine_ddim(s, diffusion.ddim_timesteps(200, num_steps))
    np.testing.assert_allclose(out, k * np.asarray(x_T) + c, rtol=2e-4, atol=2e-4)


def test_ddim_eta0_is_deterministic_given_x_T():
    s = diffusion.cosine_schedule(100)
    x_T = jax.random.normal(jax.random.key(0), (8, 3))
    f = exact_eps_fn(s)
    a = diffusion.ddim_sample(f, s, (8, 3), jax.random.key(1), 20, x_T=x_T)
    b = diffusion.ddim_sample(f, s, (8, 3), jax.random.key(2), 20, x_T=x_T)
    chex.assert_trees_all_equal(a, b)
    c = diffusion.ddim_sample(f, s, (8, 3), jax.random.key(1), 20, eta=1.0, x_T=x_T)
    d = diffusion.ddim_sample(f, s, (8, 3), jax.random.key(2), 20, eta=1.0, x_T=x_T)
    assert float(jnp.abs(c - d).max()) > 1e-3  # eta > 0 draws fresh noise from the key


def test_ddim_all_steps_eta1_is_ddpm_with_posterior_variance():
    s = diffusion.linear_schedule(100, 1e-4, 0.1)
    f = exact_eps_fn(s)
    key = jax.random.key(5)
    a = diffusion.ddim_sample(f, s, (256, 1), key, num_steps=100, eta=1.0)
    b = diffusion.ddpm_sample(f, s, (256, 1), key, variance="posterior")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_ddpm_one_step_is_algorithm_2():
    """A single reverse step from x_t by hand: 1/sqrt(alpha)(x - beta/sqrt(1-abar) eps) + sqrt(beta) z."""
    s = diffusion.schedule_from_betas([0.1, 0.3])
    f = exact_eps_fn(s)
    x_T = jnp.asarray([[0.5], [-1.0]])
    out = diffusion.ddpm_sample(f, s, (2, 1), jax.random.key(0), x_T=x_T)
    b, ab = np.array([0.1, 0.3]), np.cumprod([0.9, 0.7])
    x = np.asarray(x_T, np.float64)
    # The sampler's own noise for step t=1 (same key derivation) ; step t=0 adds none.
    z1 = np.asarray(
        jax.random.normal(jax.random.fold_in(jax.random.split(jax.random.key(0))[1], 1), (2, 1))
    )
    for t in (1, 0):
        eps = np.sqrt(1 - ab[t]) * (x - np.sqrt(ab[t]) * MU) / (ab[t] * SD**2 + 1 - ab[t])
        x = (x - b[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(1 - b[t]) + (
            np.sqrt(b[t]) * z1 if t else 0
        )
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-6)


def test_ddpm_moments_match_propagated_linear_gaussian():
    """With the exact predictor each DDPM step is x <- k x + c + sigma z: the output's mean and
    variance propagate exactly, even for a short schedule where they miss the data's."""
    s = diffusion.linear_schedule(20, 1e-2, 0.3)
    ab = np.cumprod(1 - np.asarray(s.betas, np.float64))
    b = np.asarray(s.betas, np.float64)
    m, v = 0.0, 1.0
    for t in range(19, -1, -1):
        g = np.sqrt(1 - ab[t]) / (ab[t] * SD**2 + 1 - ab[t])
        k = (1 - b[t] / np.sqrt(1 - ab[t]) * g) / np.sqrt(1 - b[t])
        c = b[t] / np.sqrt(1 - ab[t]) * g * np.sqrt(ab[t]) * MU / np.sqrt(1 - b[t])
        m, v = k * m + c, k * k * v + (b[t] if t > 0 else 0.0)
    n = 40000
    out = np.asarray(diffusion.ddpm_sample(exact_eps_fn(s), s, (n, 1), jax.random.key(2)))
    assert abs(out.mean() - m) < 5 * math.sqrt(v / n)
    assert out.var() == pytest.approx(v, rel=0.04)


@pytest.mark.parametrize("schedule", ["linear", pytest.param("cosine", marks=pytest.mark.slow)])
def test_samplers_recover_gaussian_data(schedule):
    """T = 1000 with the exact predictor: DDPM and DDIM with every step give N(MU, SD^2). (DDIM with
    fewer steps is biased by its discretisation: its exact output is checked by the affine-map test.)"""
    s = diffusion.linear_schedule() if schedule == "linear" else diffusion.cosine_schedule()
    f = exact_eps_fn(s)
    n = 20000
    runs = {
        "ddpm": jax.jit(lambda k: diffusion.ddpm_sample(f, s, (n, 1), k)),
        "ddim1000": jax.jit(lambda k: diffusion.ddim_sample(f, s, (n, 1), k, num_steps=1000)),
    }
    for name, run in runs.items():
        x = np.asarray(run(jax.random.key(11)))
        assert abs(x.mean() - MU) < 0.02, (name, x.mean())
        assert x.std() == pytest.approx(SD, rel=0.03), (name, x.std())


def test_samplers_jit_with_images():
    s = diffusion.cosine_schedule(30)
    f = exact_eps_fn(s)
    out = jax.jit(lambda k: diffusion.ddim_sample(f, s, (2, 4, 4, 1), k, 5, eta=0.5, clip_x0=1.0))(
        jax.random.key(0)
    )
    chex.assert_shape(out, (2, 4, 4, 1))
    assert float(jnp.abs(out).max()) <= 1.0 + 1e-6  # the last step returns the clipped x0_hat
    out = jax.jit(lambda k: diffusion.ddpm_sample(f, s, (2, 4, 4, 1), k, clip_x0=1.0))(
        jax.random.key(0)
    )
    chex.assert_shape(out, (2, 4, 4, 1))
    chex.assert_tree_all_finite(out)


def test_ddim_timesteps():
    np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 50), np.arange(50) * 20)
    np.testing.assert_array_equal(diffusion.ddim_timesteps(10, 10), np.arange(10))
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.ddim_timesteps(100, 101)


# ----------------------------------------------------------------------------- guidance, EMA


def test_classifier_free_guidance():
    def cond(x, t, y):  # a fake conditional predictor: eps depends on the label
        return x * 0 + y.astype(x.dtype).reshape(-1, 1)

    labels = jnp.asarray([1, 2, 3])
    x, t = jnp.zeros((3, 1)), jnp.zeros((3,), jnp.int32)
    null = 10
    for s in (0.0, 1.0, 3.0):
        out = diffusion.guided_eps_fn(cond, labels, s, null)(x, t)
        expected = null + s * (np.array([[1.0], [2.0], [3.0]]) - null)  # eps_u + s (eps_c - eps_u)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="guidance_scale"):
        diffusion.guided_eps_fn(cond, labels, -1.0, null)


def test_ema_update():
    ema = {"w": jnp.ones(3)}
    new = diffusion.ema_update(ema, {"w": jnp.zeros(3)}, 0.9)
    np.testing.assert_allclose(new["w"], 0.9)
    with pytest.raises(ValueError, match="decay"):
        diffusion.ema_update(ema, ema, 1.5)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    s = diffusion.linear_schedule(10)
    x0 = jnp.zeros((2, 3))
    noise = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        diffusion.q_sample(s, x0, jnp.asarray([0, 10]), noise)
    with pytest.raises(ValueError, match=r"t must lie"):
        diffusion.q_sample(s, x0, jnp.asarray([-1, 0]), noise)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        diffusion.q_sample(s, x0, jnp.asarray([0, 1, 2]), noise)
    with pytest.raises(TypeError, match="t must be an integer"):
        diffusion.q_sample(s, x0, jnp.asarray([0.0, 1.0]), noise)
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        diffusion.q_sample(s, x0, jnp.asarray([0, 1]), jnp.zeros((2, 4)))
    with pytest.raises(TypeError, match="schedule"):
        diffusion.q_sample(np.ones(10), x0, jnp.asarray([0, 1]), noise)
    f = exact_eps_fn(s)
    with pytest.raises(ValueError, match=r"num_steps \(11\) must not exceed"):
        diffusion.ddim_sample(f, s, (2, 3), jax.random.key(0), num_steps=11)
    with pytest.raises(ValueError, match="eta"):
        diffusion.ddim_sample(f, s, (2, 3), jax.random.key(0), num_steps=5, eta=-1.0)
    with pytest.raises(ValueError, match="timesteps"):
        diffusion.ddim_sample(f, s, (2, 3), jax.random.key(0), timesteps=[3, 2])
    with pytest.raises(ValueError, match="x_T must have shape"):
        diffusion.ddpm_sample(f, s, (2, 3), jax.random.key(0), x_T=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="shape"):
        diffusion.ddpm_sample(f, s, (0, 3), jax.random.key(0))
    with pytest.raises(ValueError, match="eps_fn must return"):
        diffusion.ddpm_sample(lambda x, t: x[:, :1], s, (2, 3), jax.random.key(0))
    with pytest.raises(ValueError, match="variance"):
        diffusion.ddpm_sample(f, s, (2, 3), jax.random.key(0), variance="learned")


# ----------------------------------------------------------------------------- DiffusionModel, fit


import flax.linen as nn  # noqa: E402


class Probe(nn.Module):
    """A parameter-free stand-in network that outputs what it was given: ``x_t`` (mode "x"), the
    step ``t`` or the label ``y`` broadcast to the shape of ``x_t``, so a test can read the draws."""

    mode: str = "x"
    num_classes: int = 10

    @property
    def null_label(self):
        return self.num_classes

    @nn.compact
    def __call__(self, x, t, y=None, train=False):
        if self.mode == "x":
            return x
        if y is None:  # as UNet: no label is the null label
            y = jnp.full((x.shape[0],), self.null_label, jnp.int32)
        v = t if self.mode == "t" else y
        return jnp.broadcast_to(v.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


class TinyEps(nn.Module):
    """A small MLP noise predictor on (B, D) data, conditioned on the step's sinusoidal embedding."""

    @nn.compact
    def __call__(self, x, t, train=False):
        from jaxdl.models.unet import timestep_embedding

        h = jnp.concatenate([x, timestep_embedding(t, 16)], axis=-1)
        h = nn.silu(nn.Dense(64)(h))
        h = nn.silu(nn.Dense(64)(h))
        return nn.Dense(x.shape[-1])(h)


def _draws(model_kwargs, x0, y=None, train=True, key=0):
    """Outputs of DiffusionModel with Probe networks in modes x, t, y under the same rng: the draws
    (t, noise, label dropout) are identical across the three calls."""
    sched = diffusion.linear_schedule(50)
    out = {}
    for mode in ("x", "t", "y"):
        m = diffusion.DiffusionModel(Probe(mode), sched, **model_kwargs)
        if mode == "y" and y is None:
            continue
        out[mode] = m.apply({}, x0, y, train=train, rngs={"diffusion": jax.random.key(key)})
    return sched, out


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_diffusion_model_draws_the_ddpm_objective(prediction):
    x0 = jax.random.normal(jax.random.key(1), (64, 3, 2))
    sched, out = _draws({"prediction": prediction}, x0)
    chex.assert_shape(out["x"], (64, 2, 3, 2))
    x_t, target = out["x"][:, 0], out["x"][:, 1]
    t = np.asarray(out["t"][:, 0, 0, 0]).astype(np.int32)
    np.testing.assert_array_equal(out["t"][:, 1], out["x"][:, 1])  # same draws in every call
    assert t.min() >= 0 and t.max() < 50 and len(np.unique(t)) > 10
    a = np.asarray(sched.alphas_cumprod)[t][:, None, None]
    if prediction == "epsilon":
        noise = np.asarray(target)
    else:  # v = sqrt(a) eps - sqrt(1-a) x0  =>  eps = (v + sqrt(1-a) x0) / sqrt(a)
        noise = (np.asarray(target) + np.sqrt(1 - a) * np.asarray(x0)) / np.sqrt(a)
    np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-5)
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.15
    # The loss is the mean squared difference of the two halves.
    np.testing.assert_allclose(
        diffusion.diffusion_loss(out["x"]), np.mean((x_t - target) ** 2), rtol=1e-6
    )
    chex.assert_shape(diffusion.diffusion_loss(out["x"], reduction="none"), (64, 3, 2))
    np.testing.assert_allclose(
        diffusion.diffusion_loss(out["x"], reduction="sum"), np.sum((x_t - target) ** 2), rtol=1e-5
    )


def test_diffusion_model_label_dropout_and_keys():
    x0 = jnp.zeros((400, 2))
    y = jnp.asarray(np.arange(400) % 10, jnp.int32)
    _, kept = _draws({"p_uncond": 0.0}, x0, y)
    np.testing.assert_array_equal(kept["y"][:, 0, 0], y)
    _, half = _draws({"p_uncond": 0.5}, x0, y)
    seen = np.asarray(half["y"][:, 0, 0]).astype(int)
    dropped = seen == 10
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_array_equal(seen[~dropped], np.asarray(y)[~dropped])
    _, evaluated = _draws({"p_uncond": 1.0}, x0, y, train=False)  # no dropout outside training
    np.testing.assert_array_equal(evaluated["y"][:, 0, 0], y)
    # Keys: training without any rng is an error; evaluation without one is deterministic.
    m = diffusion.DiffusionModel(Probe("x"), diffusion.linear_schedule(50))
    with pytest.raises(ValueError, match="needs a key"):
        m.apply({}, x0, train=True)
    np.testing.assert_array_equal(m.apply({}, x0), m.apply({}, x0))
    a = m.apply({}, x0, train=True, rngs={"dropout": jax.random.key(0)})  # fit's stream
    b = m.apply({}, x0, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a, b)


def test_diffusion_model_eps_fn():
    """eps_fn: unconditional, conditional, guided; a v-network converted to a noise predictor."""
    sched = diffusion.linear_schedule(50)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    t = jnp.asarray([0, 5, 20, 49], jnp.int32)
    y = jnp.asarray([1, 2, 3, 4], jnp.int32)
    m = diffusion.DiffusionModel(Probe("y"), sched)
    cond = m.eps_fn({}, labels=y)(x, t)
    np.testing.assert_allclose(cond[:, 0], [1, 2, 3, 4])
    guided = m.eps_fn({}, labels=y, guidance_scale=3.0)(x, t)  # null + 3 (y - null)
    np.testing.assert_allclose(guided[:, 0], 10 + 3 * (np.asarray(y) - 10))
    np.testing.assert_allclose(m.eps_fn({"params": {}})(x, t)[:, 0], [10, 10, 10, 10])  # null
    v = diffusion.DiffusionModel(Probe("x"), sched, prediction="v")  # v-network returning x_t
    a = np.asarray(sched.alphas_cumprod)[np.asarray(t)][:, None]
    np.testing.assert_allclose(
        v.eps_fn({})(x, t), np.sqrt(a) * x + np.sqrt(1 - a) * x, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="guidance_scale needs labels"):
        m.eps_fn({}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="null label"):
        diffusion.DiffusionModel(TinyEps(), sched).eps_fn({}, labels=y, guidance_scale=2.0)


def test_diffusion_model_bad_inputs():
    sched = diffusion.linear_schedule(10)
    x0 = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="prediction"):
        diffusion.DiffusionModel(Probe(), sched, prediction="x0").apply({}, x0)
    with pytest.raises(ValueError, match="p_uncond"):
        diffusion.DiffusionModel(Probe(), sched, p_uncond=1.5).apply({}, x0)
    with pytest.raises(TypeError, match="schedule"):
        diffusion.DiffusionModel(Probe(), None).apply({}, x0)
    with pytest.raises(ValueError, match=r"y must be int labels \(2,\)"):
        diffusion.DiffusionModel(Probe(), sched).apply({}, x0, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="rank >= 2"):
        diffusion.DiffusionModel(Probe(), sched).apply({}, jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"\(B, 2, \.\.\.\)"):
        diffusion.diffusion_loss(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="reduction"):
        diffusion.diffusion_loss(jnp.zeros((4, 2, 3)), reduction="max")


def test_with_ema_matches_a_manual_average():
    from jaxdl import optim

    params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(0.5)}
    grads = [{"w": jnp.asarray([0.3 * i, -0.1]), "b": jnp.asarray(0.2 - 0.1 * i)} for i in range(4)]
    base = optim.adam(0.1)
    tx = diffusion.with_ema(base, decay=0.8)
    state, ref_state = tx.init(params), base.init(params)
    p, ref, ema = params, params, params
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, p)
        p = jax.tree.map(jnp.add, p, u)
        ru, ref_state = base.update(g, ref_state, ref)
        ref = jax.tree.map(jnp.add, ref, ru)
        ema = diffusion.ema_update(ema, ref, 0.8)
    chex.assert_trees_all_close(p, ref, rtol=1e-6)  # the wrapped optimizer's updates are unchanged
    chex.assert_trees_all_close(diffusion.ema_params(state), ema, rtol=1e-6)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(grads[0], state)
    with pytest.raises(ValueError, match="decay"):
        diffusion.with_ema(base, 1.5)
    with pytest.raises(ValueError, match="with_ema"):
        diffusion.ema_params(ref_state)


def test_fit_trains_a_diffusion_model_and_samples_from_its_ema():
    """train.fit on 2-d Gaussian data N(MU, SD^2): the diffusion loss falls, the EMA lives in the
    state, and DDIM samples of the EMA weights have roughly the data's mean and spread (measured:
    0.61 and 0.40 after 20 epochs)."""
    from jaxdl import optim, train

    rng = np.random.default_rng(0)
    x = (MU + SD * rng.standard_normal((512, 2))).astype(np.float32)
    model = diffusion.DiffusionModel(TinyEps(), diffusion.cosine_schedule(100))  # abar_T ~ 0
    history = train.fit(
        model,
        diffusion.with_ema(optim.adam(3e-3), decay=0.9),
        (x, np.zeros(len(x), np.int32)),  # y: ignored by the loss
        val_data=(x[:128], np.zeros(128, np.int32)),
        epochs=12,
        batch_size=64,
        loss_fn=diffusion.diffusion_loss,
        verbose=0,
    )
    loss, val = history.history["loss"], history.history["val_loss"]
    assert loss[-1] < 0.7 * loss[0] and val[-1] < val[0]
    ema = diffusion.ema_params(history.state)
    chex.assert_trees_all_equal_shapes(ema, history.state.params)
    eps_fn = model.eps_fn(ema)
    samples = diffusion.ddim_sample(eps_fn, model.schedule, (512, 2), jax.random.key(0), 20)
    assert np.all(np.isfinite(samples))
    assert abs(float(jnp.mean(samples)) - MU) < 0.2 and 0.3 < float(jnp.std(samples)) < 0.7
