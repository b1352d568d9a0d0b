"""PPO's pieces against plain formulas, a short training run, and the saved policy in gymnasium."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import rl
from jaxdl.rl import ppo


def _gae_numpy(rewards, values, next_values, dones, gamma, lam):
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    running = np.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * (1.0 - dones[t]) * running
        adv[t] = running
    return adv


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_gae_matches_numpy_loop(lam):
    rng = np.random.default_rng(0)
    T, N = 37, 5
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    next_values = rng.normal(size=(T, N)).astype(np.float32)
    dones = rng.random((T, N)) < 0.15
    got = jax.jit(rl.gae, static_argnums=(4, 5))(
        rewards, values, next_values, jnp.asarray(dones), 0.99, lam
    )
    want = _gae_numpy(rewards, values, next_values, dones.astype(np.float32), 0.99, lam)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_gae_lambda_one_no_values_is_discounted_return():
    rewards = np.ones((4, 1), np.float32)
    zeros = np.zeros_like(rewards)
    dones = np.array([[0], [1], [0], [0]], bool)
    got = rl.gae(rewards, zeros, zeros, jnp.asarray(dones), 0.5, 1.0)
    np.testing.assert_allclose(np.asarray(got)[:, 0], [1.5, 1.0, 1.5, 1.0])


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share one shape"):
        rl.gae(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((3,)), jnp.zeros((3, 2)), 0.9, 0.9)


def test_clipped_surrogate_formula():
    rng = np.random.default_rng(1)
    logp = rng.normal(size=200) * 0.3
    old = rng.normal(size=200) * 0.3
    adv = rng.normal(size=200)
    eps = 0.2
    ratio = np.exp(logp - old)
    want = np.where(
        adv >= 0, np.minimum(ratio, 1 + eps) * adv, np.maximum(ratio, 1 - eps) * adv
    )  # the case-wise form of min(r A, clip(r) A) (Schulman et al. 2017, Fig. 1)
    got = ppo.clipped_surrogate(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), eps)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    unclipped = ppo.clipped_surrogate(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), None)
    np.testing.assert_allclose(np.asarray(unclipped), ratio * adv, rtol=1e-5, atol=1e-6)
    # The gradient vanishes where the ratio has left the trust region in the advantage's direction.
    g = jax.grad(lambda lp: ppo.clipped_surrogate(lp, 0.0, 1.0, eps))(jnp.log(1.5))
    assert float(g) == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="num_minibatches"):
        ppo.make_train(ppo.PPOConfig(num_envs=3, num_steps=5, num_minibatches=4))
    with pytest.raises(ValueError, match="learning_rate"):
        ppo.make_train(ppo.PPOConfig(learning_rate=0.0))
    with pytest.raises(ValueError, match="env name"):
        ppo.make_train(ppo.PPOConfig(env_name="CartPole-v0"))


def _random_params(net, seed):
    # Random parameters of the right shapes without running flax's orthogonal initialiser,
    # whose QR decomposition takes seconds to compile on a loaded CPU.
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


SHORT = ppo.PPOConfig(total_timesteps=40_960, num_envs=8, num_steps=64, learning_rate=1e-3)


@pytest.fixture(scope="module")
def short_run():
    params, metrics = jax.jit(ppo.make_train(SHORT))(jax.random.PRNGKey(0))
    return params, jax.tree.map(np.asarray, metrics)


@pytest.mark.slow  # ~30 s on the shared 2-core machine, almost all of it XLA compilation
def test_short_ppo_run_improves_return(short_run):
    _, m = short_run
    mean = m["return_sum"] / np.maximum(m["episodes"], 1)
    first, last = mean[:5].mean(), mean[-10:][m["episodes"][-10:] > 0].mean()
    assert first < 40  # a random policy balances about 20 steps
    assert last > 3 * first, (first, last)
    assert m["env_steps"][-1] == SHORT.num_updates * 512


def _play(act, episodes):
    env = gym.make("CartPole-v1")
    returns = []
    for seed in range(episodes):
        o, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            a = act(o)
            assert isinstance(a, int)
            o, r, term, trunc, _ = env.step(a)
            total += r
            done = term or trunc
        returns.append(total)
    return returns


def test_load_policy_round_trip_plays_gymnasium(tmp_path):
    # An untrained network: checks the save/load contract and the NumPy interface quickly.
    net = rl.ActorCritic(2)
    params = _random_params(net, 3)
    rl.save_policy(str(tmp_path), net, params, "CartPole-v1")
    act = rl.load_policy(str(tmp_path))
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    logits, _ = net.apply({"params": params}, obs)
    assert [act(o) for o in obs] == list(np.argmax(np.asarray(logits), -1))
    assert all(r >= 1 for r in _play(act, 1))
    with pytest.raises(ValueError, match="observation"):
        act(np.zeros(3, np.float32))


@pytest.mark.slow
def test_saved_policy_plays_gymnasium(short_run, tmp_path):
    params, _ = short_run
    net = ppo.make_network(SHORT, rl.CartPole())
    rl.save_policy(str(tmp_path), net, params, "CartPole-v1", {"algorithm": "ppo"})
    act = rl.load_policy(str(tmp_path))  # a fresh load: nothing but the directory
    assert act.config["network"]["kind"] == "actor_critic"
    # Greedy = argmax of the logits of the trained parameters.
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    logits, _ = net.apply({"params": params}, obs)
    assert [act(o) for o in obs] == list(np.argmax(np.asarray(logits), -1))
    returns = _play(act, 3)
    assert np.mean(returns) > 100, returns


def test_load_policy_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved policy"):
        rl.load_policy(str(tmp_path / "nothing"))
