r"""Proximal policy optimisation with GAE (Schulman et al. 2017), the whole run one jitted program.

Each update: roll out ``num_envs`` on-device environments for ``num_steps`` steps with the
current policy, compute GAE advantages and value targets, then ``update_epochs`` passes of
``num_minibatches`` minibatch steps on

.. math::
    L(\theta) = -\mathbb{E}\big[\min(\rho_t \hat A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\hat A_t)\big]
      + c_v\, \mathbb{E}\big[\tfrac12 (V_\theta(s_t) - \hat R_t)^2\big] - c_e\, \mathbb{E}[H(\pi_\theta(\cdot|s_t))],
    \qquad \rho_t = \frac{\pi_\theta(a_t|s_t)}{\pi_{\theta_\text{old}}(a_t|s_t)},

with :math:`\hat R_t = \hat A_t + V_{\theta_\text{old}}(s_t)`. Defaults are PureJaxRL's CartPole
settings (which follow CleanRL's ``ppo.py``). ``make_train(config)`` returns ``train(key)``; vmap
it over keys to train several seeds in one program:
``jax.jit(jax.vmap(make_train(cfg)))(jax.random.split(key, 5))``.

Ablations: ``clip_eps=None`` maximises the unclipped :math:`\rho_t \hat A_t` over the same
epochs; ``use_baseline=False`` replaces :math:`\hat A_t` by the discounted reward-to-go inside the
rollout (no value function, no mean subtraction).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxdl import optim
from jaxdl.rl import envs as envs_lib
from jaxdl.rl.common import check_positive, episode_stats, gae, linear_decay, rollout
from jaxdl.rl.networks import ActorCritic


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    env_name: str = "CartPole-v1"
    num_envs: int = 4
    num_steps: int = 128
    total_timesteps: int = 500_000
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float | None = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
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
            update_epochs=self.update_epochs,
            num_minibatches=self.num_minibatches,
            learning_rate=self.learning_rate,
            max_grad_norm=self.max_grad_norm,
        )
        if self.num_updates < 1:
            raise ValueError(
                f"total_timesteps: expected at least num_envs * num_steps = "
                f"{self.num_envs * self.num_steps}, got {self.total_timesteps}"
            )
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: must divide num_envs * num_steps = "
                f"{self.num_envs * self.num_steps}, got {self.num_minibatches}"
            )
        if self.clip_eps is not None and not self.clip_eps > 0:
            raise ValueError(f"clip_eps: expected a positive number or None, got {self.clip_eps}")


def clipped_surrogate(
    log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array, clip_eps: float | None
) -> jax.Array:
    r"""The per-sample PPO objective (to maximise):
    :math:`\min(\rho A, \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon) A)` with
    :math:`\rho = \exp(\log\pi - \log\pi_\text{old})`; ``clip_eps=None`` gives :math:`\rho A`."""
    ratio = jnp.exp(log_prob - old_log_prob)
    if clip_eps is None:
        return ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return jnp.minimum(ratio * advantages, clipped * advantages)


def make_network(config: PPOConfig, env: Any) -> ActorCritic:
    return ActorCritic(env.num_actions, tuple(config.hidden), config.activation)


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    steps_per_update = config.update_epochs * config.num_minibatches
    lr = (
        linear_decay(config.learning_rate, config.num_updates, steps_per_update)
        if config.anneal_lr
        else config.learning_rate
    )
    # Clip the global gradient norm, then Adam with eps=1e-5 (CleanRL / PureJaxRL).
    return optim.chain(optim.clip_by_global_norm(config.max_grad_norm), optim.adam(lr, eps=1e-5))


def make_train(config: PPOConfig):
    """``train(key) -> (params, metrics)``; ``metrics[name]`` has one entry per update."""
    config.validate()
    env = envs_lib.make(config.env_name)
    net = make_network(config, env)
    tx = make_optimizer(config)
    batch = config.num_envs * config.num_steps
    minibatch = batch // config.num_minibatches

    def act(params, key, obs):
        logits, value = net.apply({"params": params}, obs)
        action = jax.random.categorical(key, logits)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
        return action, (log_prob, value)

    def loss_fn(params, mb):
        obs, action, old_log_prob, adv, target = mb
        logits, value = net.apply({"params": params}, obs)
        log_probs = jax.nn.log_softmax(logits)  # (M, A)
        log_prob = jnp.take_along_axis(log_probs, action[:, None], -1)[:, 0]
        if config.use_baseline:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        else:  # scale only: subtracting the mean would itself be a (constant) baseline
            adv = adv / (adv.std() + 1e-8)
        pg_loss = -jnp.mean(clipped_surrogate(log_prob, old_log_prob, adv, config.clip_eps))
        v_loss = 0.5 * jnp.mean(jnp.square(value - target))
        entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, -1))
        vf_coef = config.vf_coef if config.use_baseline else 0.0
        total = pg_loss + vf_coef * v_loss - config.ent_coef * entropy
        # How far the policy has moved from the one that collected the data: the k3 estimator
        # of KL(pi_old || pi) (Schulman 2020) and the fraction of samples outside the clip range.
        log_ratio = log_prob - old_log_prob
        approx_kl = jnp.mean(jnp.exp(log_ratio) - 1.0 - log_ratio)
        clip_frac = jnp.mean((jnp.abs(jnp.exp(log_ratio) - 1.0) > 0.2).astype(jnp.float32))
        return total, {
            "pg_loss": pg_loss,
            "v_loss": v_loss,
            "entropy": entropy,
            "approx_kl": approx_kl,
            "clip_frac": clip_frac,
        }

    def update(runner, _):
        params, opt_state, env_state, obs, key = runner
        key, k_roll, k_perm = jax.random.split(key, 3)
        env_state, last_obs, traj = rollout(
            env, lambda k, o: act(params, k, o), env_state, obs, k_roll, config.num_steps
        )
        log_prob, values = traj.aux  # (T, N) each
        # V of the true successors: 0 after termination, V(final obs) after truncation.
        _, last_value = net.apply({"params": params}, last_obs)  # (N,)
        _, final_values = net.apply({"params": params}, traj.next_obs)  # (T, N)
        following = jnp.concatenate([values[1:], last_value[None]], 0)  # V(s_{t+1})
        next_values = jnp.where(traj.truncated, final_values, following)
        next_values = jnp.where(traj.terminated, 0.0, next_values)
        if config.use_baseline:
            advantages = gae(
                traj.reward, values, next_values, traj.done, config.gamma, config.gae_lambda
            )
            targets = advantages + values
        else:  # discounted reward-to-go within the rollout
            zeros = jnp.zeros_like(values)
            advantages = gae(traj.reward, zeros, zeros, traj.done, config.gamma, 1.0)
            targets = advantages

        flat = jax.tree.map(
            lambda x: x.reshape((batch,) + x.shape[2:]),
            (traj.obs, traj.action, log_prob, advantages, targets),
        )

        def epoch(carry, k):
            params, opt_state = carry
            perm = jax.random.permutation(k, batch)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((config.num_minibatches, minibatch) + x.shape[1:]), flat
            )

            def minibatch_step(carry, mb):
                params, opt_state = carry
                (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), aux

            return jax.lax.scan(minibatch_step, (params, opt_state), shuffled)

        (params, opt_state), losses = jax.lax.scan(
            epoch, (params, opt_state), jax.random.split(k_perm, config.update_epochs)
        )
        metrics = {k: v.mean() for k, v in losses.items()} | episode_stats(traj)
        return (params, opt_state, env_state, last_obs, key), metrics

    def train(key: jax.Array):
        k_init, k_env, key = jax.random.split(key, 3)
        params = net.init(k_init, jnp.zeros((1,) + env.observation_shape))["params"]
        opt_state = tx.init(params)
        env_state, obs = jax.vmap(env.reset)(jax.random.split(k_env, config.num_envs))
        runner = (params, opt_state, env_state, obs, key)
        (params, *_), metrics = jax.lax.scan(update, runner, None, config.num_updates)
        metrics["env_steps"] = (jnp.arange(config.num_updates) + 1) * batch
        return params, metrics

    return train
