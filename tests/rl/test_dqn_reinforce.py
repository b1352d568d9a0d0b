"""DQN's target, buffer and schedule against plain formulas; short DQN/REINFORCE runs (slow)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import rl
from jaxdl.rl import dqn, reinforce


def test_td_target_formula():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=6).astype(np.float32)
    terminated = np.array([0, 1, 0, 0, 1, 0], bool)
    next_q = rng.normal(size=(6, 3)).astype(np.float32)
    got = dqn.td_target(jnp.asarray(reward), jnp.asarray(terminated), jnp.asarray(next_q), 0.9)
    want = np.array(
        [reward[i] + (0.0 if terminated[i] else 0.9 * next_q[i].max()) for i in range(6)]
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_buffer_wraps_around_and_counts():
    buf = dqn.buffer_init(5, (2,))
    add = jax.jit(dqn.buffer_add)
    for step in range(3):  # 3 writes of 2: slots 0,1 / 2,3 / 4,0
        v = jnp.arange(2) + 2 * step
        buf = add(
            buf, jnp.stack([v, v], -1).astype(jnp.float32), v, v.astype(jnp.float32),
            jnp.zeros((2, 2)), jnp.zeros(2, bool),
        )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(buf.action), [5, 1, 2, 3, 4])
    assert int(buf.position) == 1 and int(buf.count) == 5


def test_epsilon_schedule():
    cfg = dqn.DQNConfig(total_timesteps=1000, eps_decay_fraction=0.5, log_every=10)
    eps = [float(dqn.epsilon(cfg, s)) for s in (0, 250, 500, 900)]
    np.testing.assert_allclose(eps, [1.0, 0.525, 0.05, 0.05], rtol=1e-6)


def test_dqn_config_errors():
    with pytest.raises(ValueError, match="eps_start"):
        dqn.make_train(dqn.DQNConfig(eps_start=0.01, eps_end=0.1))
    with pytest.raises(ValueError, match="batch_size"):
        dqn.make_train(dqn.DQNConfig(batch_size=0))


def test_reinforce_returns_are_discounted_sums():
    # With no bootstrapping, gae(lambda=1, V=0) is the discounted reward-to-go of each episode.
    r = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    dones = np.array([[0], [0], [1], [0]], bool)
    z = np.zeros_like(r)
    got = np.asarray(rl.gae(r, z, z, jnp.asarray(dones), 0.5, 1.0))[:, 0]
    np.testing.assert_allclose(got, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 4.0])


def _random_params(net, seed):
    # Random parameters of the right shapes without running flax's orthogonal initialiser,
    # whose QR decomposition takes seconds to compile on a loaded CPU.
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _mean_returns(m):
    return np.asarray(m["return_sum"]) / np.maximum(np.asarray(m["episodes"]), 1)


@pytest.mark.slow
def test_short_dqn_run_improves_return():
    cfg = dqn.DQNConfig(total_timesteps=60_000, learning_starts=2_000, eps_decay_fraction=0.3)
    params, m = jax.jit(dqn.make_train(cfg))(jax.random.PRNGKey(0))
    ret = _mean_returns(m)
    assert ret[-20:].mean() > 3 * ret[:5].mean()


@pytest.mark.slow
def test_short_reinforce_run_improves_return():
    cfg = reinforce.ReinforceConfig(total_timesteps=100_000)
    params, m = jax.jit(reinforce.make_train(cfg))(jax.random.PRNGKey(0))
    ret = _mean_returns(m)
    assert ret[-10:].mean() > 3 * ret[:5].mean()


def test_saved_q_network_acts_greedily(tmp_path):
    net = rl.QNetwork(2)
    params = _random_params(net, 0)
    rl.save_policy(str(tmp_path), net, params, "CartPole-v1")
    act = rl.load_policy(str(tmp_path))
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    want = np.argmax(np.asarray(net.apply({"params": params}, obs)), -1)
    assert [act(o) for o in obs] == list(want)
    with pytest.raises(ValueError, match="actions"):
        rl.save_policy(str(tmp_path), rl.QNetwork(3), params, "CartPole-v1")
