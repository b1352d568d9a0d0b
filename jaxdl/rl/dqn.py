r"""Deep Q-learning (Mnih et al. 2015) with the replay buffer and the target network on the device.

Every iteration steps ``num_envs`` environments once with an :math:`\epsilon`-greedy policy
(:math:`\epsilon` decays linearly from ``eps_start`` to ``eps_end`` over the first
``eps_decay_fraction`` of the run), writes the transitions into a circular buffer of
``buffer_size`` (arrays on the device), and from ``learning_starts`` on takes one gradient step
every ``train_every`` iterations on a uniformly sampled minibatch of

.. math::
    L(\theta) = \mathbb{E}\big[\ell\big(y - Q_\theta(s, a)\big)\big], \qquad
    y = r + \gamma\,(1 - \text{terminated})\,\max_{a'} Q_{\theta^-}(s', a'),

with :math:`\ell` the square (CleanRL's choice on CartPole) or the Huber loss (Mnih et al.'s
error clipping, ``huber_delta``). The target parameters :math:`\theta^-` are copied from
:math:`\theta` every ``target_update_every`` environment steps; ``use_target_network=False``
bootstraps from :math:`\theta` itself (the ablation). :math:`s'` is the true successor, so a
time-limit truncation still bootstraps. Defaults are CleanRL's ``dqn.py`` CartPole settings.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdl import optim
from jaxdl.rl import envs as envs_lib
from jaxdl.rl.common import check_positive, episode_stats, rollout
from jaxdl.rl.networks import QNetwork


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    env_name: str = "CartPole-v1"
    num_envs: int = 10
    total_timesteps: int = 500_000
    buffer_size: int = 10_000
    batch_size: int = 128
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_fraction: float = 0.5
    learning_starts: int = 10_000
    train_every: int = 1  # iterations (of num_envs env steps) per gradient step
    target_update_every: int = 500  # env steps
    use_target_network: bool = True
    huber_delta: float | None = None
    max_grad_norm: float = 10.0
    hidden: tuple[int, ...] = (120, 84)
    activation: str = "relu"
    log_every: int = 50  # iterations per metrics entry

    @property
    def num_iterations(self) -> int:
        return self.total_timesteps // self.num_envs

    def validate(self) -> None:
        check_positive(
            num_envs=self.num_envs,
            buffer_size=self.buffer_size,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            train_every=self.train_every,
            target_update_every=self.target_update_every,
            log_every=self.log_every,
            max_grad_norm=self.max_grad_norm,
        )
        if self.num_iterations < self.log_every:
            raise ValueError(
                f"total_timesteps: expected at least num_envs * log_every = "
                f"{self.num_envs * self.log_every}, got {self.total_timesteps}"
            )
        if self.buffer_size < self.num_envs:
            raise ValueError(f"buffer_size: expected >= num_envs, got {self.buffer_size}")
        if not 0.0 <= self.eps_end <= self.eps_start <= 1.0:
            raise ValueError(
                f"eps_start, eps_end: expected 0 <= eps_end <= eps_start <= 1, got "
                f"{self.eps_start}, {self.eps_end}"
            )


class Buffer(NamedTuple):
    """A circular replay buffer; ``obs``/``next_obs`` ``(size, D)``, the rest ``(size,)``."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminated: jax.Array
    position: jax.Array  # next slot to write
    count: jax.Array  # number of valid entries


def buffer_init(size: int, obs_shape: tuple[int, ...]) -> Buffer:
    z = jnp.zeros
    return Buffer(
        z((size,) + obs_shape),
        z((size,), jnp.int32),
        z((size,)),
        z((size,) + obs_shape),
        z((size,), bool),
        jnp.int32(0),
        jnp.int32(0),
    )


def buffer_add(buf: Buffer, obs, action, reward, next_obs, terminated) -> Buffer:
    """Write ``n`` transitions (leading axis ``n``) at the next slots, overwriting the oldest."""
    size = buf.obs.shape[0]
    n = obs.shape[0]
    idx = (buf.position + jnp.arange(n)) % size
    return Buffer(
        buf.obs.at[idx].set(obs),
        buf.action.at[idx].set(action),
        buf.reward.at[idx].set(reward),
        buf.next_obs.at[idx].set(next_obs),
        buf.terminated.at[idx].set(terminated),
        (buf.position + n) % size,
        jnp.minimum(buf.count + n, size),
    )


def td_target(
    reward: jax.Array, terminated: jax.Array, next_q_target: jax.Array, gamma: float
) -> jax.Array:
    r""":math:`y = r + \gamma (1 - \text{terminated}) \max_{a'} Q^-(s', a')`;
    ``next_q_target (B, A)``, the rest ``(B,)``."""
    return reward + gamma * (1.0 - terminated.astype(reward.dtype)) * jnp.max(next_q_target, -1)


def epsilon(config: DQNConfig, env_steps: jax.Array) -> jax.Array:
    """The linear exploration schedule, as a function of environment steps taken."""
    decay_steps = max(config.eps_decay_fraction * config.total_timesteps, 1.0)
    frac = jnp.clip(env_steps / decay_steps, 0.0, 1.0)
    return config.eps_start + frac * (config.eps_end - config.eps_start)


def make_network(config: DQNConfig, env) -> QNetwork:
    return QNetwork(env.num_actions, tuple(config.hidden), config.activation)


def make_train(config: DQNConfig):
    """``train(key) -> (params, metrics)``; one metrics entry per ``log_every`` iterations."""
    config.validate()
    env = envs_lib.make(config.env_name)
    net = make_network(config, env)
    tx = optim.chain(
        optim.clip_by_global_norm(config.max_grad_norm), optim.adam(config.learning_rate)
    )
    num_logs = config.num_iterations // config.log_every

    def loss_fn(params, target_params, batch):
        obs, action, reward, next_obs, terminated = batch
        q = net.apply({"params": params}, obs)  # (B, A)
        q_sa = jnp.take_along_axis(q, action[:, None], -1)[:, 0]
        bootstrap = target_params if config.use_target_network else params
        next_q = jax.lax.stop_gradient(net.apply({"params": bootstrap}, next_obs))  # (B, A)
        err = td_target(reward, terminated, next_q, config.gamma) - q_sa
        if config.huber_delta is None:
            return jnp.mean(jnp.square(err))
        return jnp.mean(optax.huber_loss(err, delta=config.huber_delta))

    def iteration(carry, it):
        # ``it`` comes from the scan's xs, so it is not batched by a vmap over seeds and the
        # lax.conds below stay real branches instead of selects that compute both sides.
        params, target_params, opt_state, buf, env_state, obs, key = carry
        key, k_roll, k_sample = jax.random.split(key, 3)
        env_steps = (it + 1) * config.num_envs
        eps = epsilon(config, it * config.num_envs)

        def act(k, o):
            k_explore, k_random = jax.random.split(k)
            greedy = jnp.argmax(net.apply({"params": params}, o), -1)
            random = jax.random.randint(k_random, greedy.shape, 0, env.num_actions)
            explore = jax.random.uniform(k_explore, greedy.shape) < eps
            return jnp.where(explore, random, greedy), ()

        env_state, obs, traj = rollout(env, act, env_state, obs, k_roll, 1)
        step = jax.tree.map(lambda x: x[0], traj)  # drop the time axis of length 1
        buf = buffer_add(buf, step.obs, step.action, step.reward, step.next_obs, step.terminated)

        def learn(args):
            params, opt_state = args
            idx = jax.random.randint(k_sample, (config.batch_size,), 0, buf.count)
            batch = (buf.obs[idx], buf.action[idx], buf.reward[idx], buf.next_obs[idx])
            batch = batch + (buf.terminated[idx],)
            loss, grads = jax.value_and_grad(loss_fn)(params, target_params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        do_learn = (env_steps >= config.learning_starts) & (it % config.train_every == 0)
        params, opt_state, loss = jax.lax.cond(
            do_learn, learn, lambda a: (a[0], a[1], jnp.float32(0.0)), (params, opt_state)
        )
        # Copy theta -> theta^- when the env-step counter crosses a multiple of the interval.
        crossed = (env_steps // config.target_update_every) > (
            (env_steps - config.num_envs) // config.target_update_every
        )
        target_params = jax.lax.cond(crossed, lambda: params, lambda: target_params)
        metrics = episode_stats(step) | {"loss": loss, "learn_steps": do_learn.astype(jnp.int32)}
        return (params, target_params, opt_state, buf, env_state, obs, key), metrics

    def log_chunk(carry, its):
        carry, m = jax.lax.scan(iteration, carry, its)
        summed = {k: jnp.sum(v) for k, v in m.items()}
        summed["loss"] = jnp.sum(m["loss"]) / jnp.maximum(jnp.sum(m["learn_steps"]), 1)
        return carry, summed

    def train(key: jax.Array):
        k_init, k_env, key = jax.random.split(key, 3)
        params = net.init(k_init, jnp.zeros((1,) + env.observation_shape))["params"]
        opt_state = tx.init(params)
        buf = buffer_init(config.buffer_size, env.observation_shape)
        env_state, obs = jax.vmap(env.reset)(jax.random.split(k_env, config.num_envs))
        carry = (params, params, opt_state, buf, env_state, obs, key)
        its = jnp.arange(num_logs * config.log_every).reshape(num_logs, config.log_every)
        (params, *_), metrics = jax.lax.scan(log_chunk, carry, its)
        metrics["env_steps"] = (jnp.arange(num_logs) + 1) * config.log_every * config.num_envs
        return params, metrics

    return train
