"""Saving a trained policy (orbax) and loading it back as a plain NumPy-callable greedy policy.

Layout under ``workdir``::

    policy/config.json   # {"env_name", "network": {kind, num_actions, hidden, activation}, ...}
    policy/params/       # the network's parameters, an orbax checkpoint (no pickles)

so that :func:`load_policy` needs nothing but the directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdl.rl import envs as envs_lib
from jaxdl.rl.networks import build_network, greedy_action, network_config

_CONFIG = "config.json"
_PARAMS = "params"


def _policy_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "policy")


def save_policy(
    workdir: str,
    net: nn.Module,
    params: Any,
    env_name: str,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write ``params`` of ``net`` (an :class:`~jaxdl.rl.networks.ActorCritic` or
    :class:`~jaxdl.rl.networks.QNetwork`) and the config that rebuilds it into
    ``workdir/policy``, replacing an earlier save. Returns that directory."""
    env = envs_lib.make(env_name)  # validates the name
    config = {
        "env_name": env_name,
        "observation_shape": list(env.observation_shape),
        "network": network_config(net),
        "metadata": metadata or {},
    }
    if config["network"]["num_actions"] != env.num_actions:
        raise ValueError(
            f"net: has {config['network']['num_actions']} actions, {env_name} has {env.num_actions}"
        )
    directory = _policy_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    params = jax.tree.map(np.asarray, jax.device_get(params))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(directory, _PARAMS), params, force=True)
    tmp = os.path.join(directory, _CONFIG + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, os.path.join(directory, _CONFIG))  # atomic: config appears last
    return directory


def load_policy(workdir: str) -> Callable[[np.ndarray], int]:
    """``act(observation) -> int``: the greedy action of the policy saved in ``workdir``.

    ``observation`` is one observation (a NumPy array of the environment's observation shape,
    e.g. ``(4,)`` for CartPole-v1, as gymnasium returns it); the network runs jitted inside.
    The greedy action is the argmax of the policy's logits (PPO, REINFORCE) or of the Q-values
    (DQN). ``act.config`` holds the saved config.
    """
    directory = _policy_dir(workdir)
    config_path = os.path.join(directory, _CONFIG)
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"workdir: no saved policy at {config_path}; run e.g. "
            f"`python -m experiments.cartpole --workdir {workdir}` first"
        )
    with open(config_path) as f:
        config = json.load(f)
    net = build_network(config["network"])
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(os.path.join(directory, _PARAMS))
    obs_shape = tuple(config["observation_shape"])
    greedy = jax.jit(lambda p, o: greedy_action(net, p, o))

    def act(observation: np.ndarray) -> int:
        obs = np.asarray(observation, dtype=np.float32)
        if obs.shape != obs_shape:
            raise ValueError(
                f"observation: expected shape {obs_shape} for {config['env_name']}, got {obs.shape}"
            )
        return int(greedy(params, obs))

    act.config = config
    return act


def evaluate_greedy(
    env: Any, net: nn.Module, params: Any, key: jax.Array, num_episodes: int = 10
) -> jax.Array:
    """Returns ``(num_episodes,)`` of the greedy policy: ``num_episodes`` environments run in
    parallel for ``env.max_steps`` steps and each keeps the return of its first episode. Jittable
    and vmappable over ``params``/``key`` (the seeds of a vmapped run)."""
    state, obs = jax.vmap(env.reset)(jax.random.split(key, num_episodes))

    def step(carry, k):
        state, obs, finished, ret = carry
        action = greedy_action(net, params, obs)
        state, obs, reward, term, trunc, _ = jax.vmap(env.step)(
            jax.random.split(k, num_episodes), state, action
        )
        ret = ret + jnp.where(finished, 0.0, reward)
        return (state, obs, finished | term | trunc, ret), None

    init = (state, obs, jnp.zeros(num_episodes, bool), jnp.zeros(num_episodes))
    keys = jax.random.split(jax.random.fold_in(key, 1), env.max_steps)
    (_, _, _, returns), _ = jax.lax.scan(step, init, keys)
    return returns
