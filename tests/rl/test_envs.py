"""The on-device environments against gymnasium's own, step for step from identical states.

gymnasium keeps a float64 state. Under ``enable_x64`` our state is float64 too and the whole
trajectory (no re-synchronisation within an episode) must agree to rounding; in the default
float32 mode we re-synchronise gymnasium to our state before every step and compare one step.
"""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit

from jaxdl import rl


def _time_limit(env):
    while not isinstance(env, TimeLimit):
        env = env.env
    return env


def _gym(name):
    env = gym.make(name)
    env.reset(seed=0)
    return env


def _set(genv, physics, time):
    genv.unwrapped.state = np.asarray(physics, np.float64).copy()
    if hasattr(genv.unwrapped, "steps_beyond_terminated"):
        genv.unwrapped.steps_beyond_terminated = None
    _time_limit(genv)._elapsed_steps = int(time)


def _replay(name, num_steps, seed, atol, resync_every_step, start_time=0):
    env = rl.make(name)
    genv = _gym(name)
    step = jax.jit(env.step_physics)
    reset = jax.jit(env.reset)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    state, obs = reset(key)
    state = state._replace(time=jnp.int32(start_time))
    _set(genv, state.physics, start_time)
    counts = {"terminated": 0, "truncated": 0}
    for _ in range(num_steps):
        if resync_every_step:
            _set(genv, state.physics, int(state.time))
        action = int(rng.integers(env.num_actions))
        state, obs, reward, term, trunc = step(state, jnp.int32(action))
        gobs, greward, gterm, gtrunc, _ = genv.step(action)
        np.testing.assert_allclose(np.asarray(obs), gobs, rtol=0, atol=atol)
        if state.physics.dtype == jnp.float64:  # the float64 states agree to rounding
            np.testing.assert_allclose(np.asarray(state.physics), genv.unwrapped.state, atol=1e-12)
        assert float(reward) == greward
        assert bool(term) == gterm and bool(trunc) == gtrunc
        counts["terminated"] += gterm
        counts["truncated"] += gtrunc
        if gterm or gtrunc:
            key, sub = jax.random.split(key)
            state, obs = reset(sub)
            if start_time:
                state = state._replace(time=jnp.int32(start_time))
            _set(genv, state.physics, int(state.time))
    return counts


@pytest.mark.parametrize("name", ["CartPole-v1", "Acrobot-v1"])
def test_float64_trajectories_match_gymnasium(name):
    with jax.enable_x64(True):
        counts = _replay(name, 400, seed=1, atol=1e-6, resync_every_step=False)
    if name == "CartPole-v1":
        assert counts["terminated"] >= 10  # random play ends episodes often: thresholds exercised


@pytest.mark.parametrize("name", ["CartPole-v1", "Acrobot-v1"])
def test_float32_steps_match_gymnasium(name):
    _replay(name, 200, seed=2, atol=2e-5, resync_every_step=True)


@pytest.mark.parametrize("name", ["CartPole-v1", "Acrobot-v1"])
def test_500_step_truncation_matches_gymnasium(name):
    # Start every episode at step 480: episodes that survive 20 steps hit the 500-step limit.
    with jax.enable_x64(True):
        counts = _replay(name, 400, seed=3, atol=1e-6, resync_every_step=False, start_time=480)
    assert counts["truncated"] >= 1


def test_cartpole_termination_thresholds():
    env = rl.CartPole()
    genv = _gym("CartPole-v1")
    eps = 1e-3
    states = [
        [2.4 - eps, 0.1, 0.0, 0.0],  # crosses x = 2.4 in one step (x += 0.02 * 0.1)
        [2.4 - eps, 0.01, 0.0, 0.0],  # stays inside
        [-2.4 + eps, -0.1, 0.0, 0.0],
        [0.0, 0.0, 0.2094 - eps, 0.1],  # crosses 12 degrees = 0.20944 rad
        [0.0, 0.0, -0.2094 + eps, -0.1],
        [0.0, 0.0, 0.2, 0.0],
    ]
    with jax.enable_x64(True):
        for s in states:
            state = rl.EnvState(jnp.asarray(s, jnp.float64), jnp.int32(3), jnp.float32(0))
            for action in (0, 1):
                _set(genv, s, 3)
                _, obs, reward, term, trunc = env.step_physics(state, jnp.int32(action))
                gobs, greward, gterm, gtrunc, _ = genv.step(action)
                assert bool(term) == gterm, (s, action)
                assert float(reward) == greward and bool(trunc) == gtrunc
                np.testing.assert_allclose(np.asarray(obs), gobs, atol=1e-7)


def test_autoreset_returns_final_obs_and_fresh_episode():
    env = rl.CartPole()
    state = rl.EnvState(jnp.asarray([2.39, 1.0, 0.0, 0.0]), jnp.int32(7), jnp.float32(7.0))
    state2, obs, reward, term, trunc, info = jax.jit(env.step)(jax.random.PRNGKey(0), state, 1)
    assert bool(term) and not bool(trunc)
    assert float(info["final_obs"][0]) > 2.4  # the observation the episode ended on
    assert int(state2.time) == 0 and float(state2.episode_return) == 0.0
    assert np.all(np.abs(np.asarray(obs)) <= 0.05)  # a fresh reset state
    assert float(info["returned_episode_return"]) == 8.0


def test_vmapped_batch_and_errors():
    env = rl.CartPole()
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    states, obs = jax.jit(jax.vmap(env.reset))(keys)
    assert obs.shape == (8, 4) and obs.dtype == jnp.float32
    out = jax.jit(jax.vmap(env.step))(keys, states, jnp.ones(8, jnp.int32))
    assert out[1].shape == (8, 4)
    with pytest.raises(ValueError, match="env name"):
        rl.make("Pong-v0")
