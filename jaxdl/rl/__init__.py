"""Reinforcement learning on the device: pure-JAX environments, agents, saved policies.

Environments (:mod:`jaxdl.rl.envs`) are pure functions, so acting, stepping the world and
learning compile into one XLA program; agents (:mod:`jaxdl.rl.ppo`, :mod:`jaxdl.rl.dqn`,
:mod:`jaxdl.rl.reinforce`) each expose ``make_train(config) -> train(key)``, which
``jax.vmap`` runs for several seeds at once. :func:`load_policy` turns a saved run back into a
greedy ``act(observation: np.ndarray) -> int``.
"""

from jaxdl.rl import common, dqn, envs, networks, ppo, reinforce
from jaxdl.rl.common import gae
from jaxdl.rl.envs import Acrobot, CartPole, EnvState, make
from jaxdl.rl.networks import ActorCritic, QNetwork
from jaxdl.rl.policy import evaluate_greedy, load_policy, save_policy

__all__ = [
    "Acrobot",
    "ActorCritic",
    "CartPole",
    "EnvState",
    "QNetwork",
    "common",
    "dqn",
    "envs",
    "evaluate_greedy",
    "gae",
    "load_policy",
    "make",
    "networks",
    "ppo",
    "reinforce",
    "save_policy",
]
