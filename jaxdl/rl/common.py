r"""Pieces the agents share: rollouts over a batch of on-device environments, generalized
advantage estimation, episode statistics, and the linear learning-rate decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdl.rl.envs import EnvState


class Transition(NamedTuple):
    """One step of ``N`` environments; a rollout stacks ``T`` of them: every field ``(T, N, ...)``.

    ``next_obs`` is the true successor observation (the final one when the episode ended, not
    the reset one); ``episode_return`` is the finished episode's return where ``done``."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    episode_return: jax.Array
    aux: Any  # what the policy computed while acting (log-probabilities, values)

    @property
    def done(self) -> jax.Array:
        return self.terminated | self.truncated


def rollout(
    env: Any,
    act: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]],
    env_state: EnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
) -> tuple[EnvState, jax.Array, Transition]:
    """Step ``N`` vmapped environments ``num_steps`` times with ``act(key, obs (N, D)) ->
    (action (N,), aux)``, in one ``lax.scan``. Returns the last env state and observation and the
    stacked :class:`Transition` ``(T, N, ...)``."""

    def one_step(carry, step_key):
        env_state, obs = carry
        k_act, k_env = jax.random.split(step_key)
        action, aux = act(k_act, obs)
        env_keys = jax.random.split(k_env, obs.shape[0])
        env_state, next_obs, reward, term, trunc, info = jax.vmap(env.step)(
            env_keys, env_state, action
        )
        tr = Transition(
            obs,
            action,
            reward,
            term,
            trunc,
            info["final_obs"],
            info["returned_episode_return"],
            aux,
        )
        return (env_state, next_obs), tr

    (env_state, obs), traj = jax.lax.scan(
        one_step, (env_state, obs), jax.random.split(key, num_steps)
    )
    return env_state, obs, traj


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    dones: jax.Array,
    gamma: float,
    lam: float,
) -> jax.Array:
    r"""Generalized advantage estimation (Schulman et al. 2016), over time axis 0.

    .. math::
        \delta_t = r_t + \gamma\, V'_t - V(s_t), \qquad
        \hat A_t = \delta_t + \gamma\lambda\,(1 - d_t)\, \hat A_{t+1}, \qquad \hat A_T = 0,

    where ``next_values`` :math:`V'_t` is the value of the true successor of step ``t`` (0 when
    the episode terminated there, :math:`V` of the final observation when it was truncated by
    the time limit, :math:`V(s_{t+1})` otherwise) and ``dones`` :math:`d_t` cuts the sum where an
    episode ended (terminated or truncated). All arrays ``(T, ...)``; returns ``(T, ...)``.
    """
    shapes = {a.shape for a in (rewards, values, next_values, dones)}
    if len(shapes) != 1:
        raise ValueError(
            f"gae: rewards, values, next_values, dones must share one shape (T, ...), got {shapes}"
        )
    if not 0.0 <= lam <= 1.0 or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gae: gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    deltas = rewards + gamma * next_values - values
    not_done = 1.0 - dones.astype(rewards.dtype)

    def backward(carry, xs):
        delta, nd = xs
        adv = delta + gamma * lam * nd * carry
        return adv, adv

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(rewards[0]), (deltas, not_done), reverse=True
    )
    return advantages


def episode_stats(traj: Transition) -> dict[str, jax.Array]:
    """Sum and count of the returns of the episodes that finished in ``traj``."""
    done = traj.done
    return {
        "return_sum": jnp.sum(jnp.where(done, traj.episode_return, 0.0)),
        "episodes": jnp.sum(done.astype(jnp.int32)),
    }


def linear_decay(learning_rate: float, num_updates: int, steps_per_update: int) -> Callable:
    """``count -> learning_rate * (1 - update / num_updates)``, the PPO paper's annealing."""

    def schedule(count):
        update = count // steps_per_update
        return learning_rate * (1.0 - update / num_updates)

    return schedule


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
