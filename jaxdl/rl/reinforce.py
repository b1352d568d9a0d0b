r"""REINFORCE (Williams 1992) with a learned state-value baseline, on vmapped on-device envs.

Each update rolls out ``num_envs`` environments for ``num_steps`` steps and takes ONE gradient
step (the data are on-policy only for the parameters that collected them, so unlike PPO they are
used once) on

.. math::
    L(\theta, \phi) = -\frac{1}{TN}\sum_{t,n} \log\pi_\theta(a_t|s_t)\,\big(G_t - V_\phi(s_t)\big)
      + c_v \frac{1}{TN}\sum_{t,n} \tfrac12 \big(V_\phi(s_t) - G_t\big)^2
      - c_e\, \bar H(\pi_\theta),

where :math:`G_t = \sum_{k \ge 0} \gamma^k r_{t+k}` runs to the end of the episode. An episode
still running at the end of the rollout (or cut by the time limit) is completed by the baseline,
:math:`\gamma^{K} V_\phi(s_{t+K})`, the only place the value function enters :math:`G_t`; that is
:func:`~jaxdl.rl.gae` with :math:`\lambda = 1`. ``use_baseline=False`` drops
:math:`V_\phi` everywhere (plain REINFORCE, returns cut at the rollout end).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxdl import optim
from jaxdl.rl import envs as envs_lib
from jaxdl.rl.common import check_positive, episode_stats, gae, rollout
from jaxdl.rl.networks import ActorCritic


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
    env_name: str = "CartPole-v1"
    num_envs: int = 8
    num_steps: int = 128
    total_timesteps: int = 500_000
    gamma: float = 0.99
    learning_rate: float = 1e-3
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    use_baseline: bool = True
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)

    def validate(self) -> None:
        check_positive(
            num_envs=self.num_envs,
            num_steps=self.num_steps,
            learning_rate=self.learning_rate,
            max_grad_norm=self.max_grad_norm,
        )
        if self.num_updates < 1:
            raise ValueError(
                f"total_timesteps: expected at least num_envs * num_steps = "
                f"{self.num_envs * self.num_steps}, got {self.total_timesteps}"
            )


def make_network(config: ReinforceConfig, env) -> ActorCritic:
    return ActorCritic(env.num_actions, tuple(config.hidden), config.activation)


def make_train(config: ReinforceConfig):
    """``train(key) -> (params, metrics)``; ``metrics[name]`` has one entry per update."""
    config.validate()
    env = envs_lib.make(config.env_name)
    net = make_network(config, env)
    tx = optim.chain(
        optim.clip_by_global_norm(config.max_grad_norm), optim.adam(config.learning_rate)
    )
    batch = config.num_envs * config.num_steps

    def act(params, key, obs):
        logits, _ = net.apply({"params": params}, obs)
        return jax.random.categorical(key, logits), ()

    def loss_fn(params, traj, returns):
        logits, values = net.apply({"params": params}, traj.obs)  # (T, N, A), (T, N)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, traj.action[..., None], -1)[..., 0]
        baseline = jax.lax.stop_gradient(values) if config.use_baseline else 0.0
        pg_loss = -jnp.mean(log_prob * (returns - baseline))
        v_loss = 0.5 * jnp.mean(jnp.square(values - returns))
        entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, -1))
        vf_coef = config.vf_coef if config.use_baseline else 0.0
        total = pg_loss + vf_coef * v_loss - config.ent_coef * entropy
        return total, {"pg_loss": pg_loss, "v_loss": v_loss, "entropy": entropy}

    def update(runner, _):
        params, opt_state, env_state, obs, key = runner
        key, k_roll = jax.random.split(key)
        env_state, last_obs, traj = rollout(
            env, lambda k, o: act(params, k, o), env_state, obs, k_roll, config.num_steps
        )
        zeros = jnp.zeros(traj.reward.shape)
        if config.use_baseline:
            # Complete unfinished episodes with V: at the rollout end and at truncations.
            _, last_value = net.apply({"params": params}, last_obs)  # (N,)
            _, final_values = net.apply({"params": params}, traj.next_obs)  # (T, N)
            at_end = jnp.zeros(traj.reward.shape, bool).at[-1].set(True)
            next_values = jnp.where(traj.truncated, final_values, 0.0)
            next_values = jnp.where(
                at_end & ~traj.done, jnp.broadcast_to(last_value, zeros.shape), next_values
            )
            next_values = jnp.where(traj.terminated, 0.0, next_values)
        else:
            next_values = zeros
        # lambda = 1 with zero values: the discounted return G_t (bootstrapped as above).
        returns = gae(traj.reward, zeros, next_values, traj.done, config.gamma, 1.0)
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, traj, returns)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = aux | episode_stats(traj)
        return (params, opt_state, env_state, last_obs, key), metrics

    def train(key: jax.Array):
        k_init, k_env, key = jax.random.split(key, 3)
        params = net.init(k_init, jnp.zeros((1,) + env.observation_shape))["params"]
        opt_state = tx.init(params)
        env_state, obs = jax.vmap(env.reset)(jax.random.split(k_env, config.num_envs))
        (params, *_), metrics = jax.lax.scan(
            update, (params, opt_state, env_state, obs, key), None, config.num_updates
        )
        metrics["env_steps"] = (jnp.arange(config.num_updates) + 1) * batch
        return params, metrics

    return train
