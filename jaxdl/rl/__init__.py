"""Reinforcement learning on the device: pure-JAX environments, agents, saved policies."""

from jaxdl.rl.envs import Acrobot, CartPole, EnvState, make

__all__ = ["Acrobot", "CartPole", "EnvState", "make"]
