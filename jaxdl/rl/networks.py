"""Policy and value networks as flax.linen modules, and the plain config that rebuilds them.

The sizes follow CleanRL's and PureJaxRL's classic-control agents: two hidden layers of 64 with
tanh for the actor-critic (separate actor and critic trunks, orthogonal initialisation with gain
sqrt(2) on hidden layers, 0.01 on the policy head and 1 on the value head, as in the PPO
implementation details of Huang et al. 2022), ReLU layers for the Q-network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


def _mlp(x: jax.Array, hidden: Sequence[int], activation: str, name: str) -> jax.Array:
    act = _ACTIVATIONS[activation]
    for i, width in enumerate(hidden):
        x = nn.Dense(
            width,
            kernel_init=nn.initializers.orthogonal(np.sqrt(2)),
            bias_init=nn.initializers.zeros,
            name=f"{name}_{i}",
        )(x)
        x = act(x)
    return x


class ActorCritic(nn.Module):
    """``obs (..., D) -> (logits (..., A), value (...))``: a categorical policy and a state value."""

    num_actions: int
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        actor = _mlp(obs, self.hidden, self.activation, "actor")
        logits = nn.Dense(
            self.num_actions, kernel_init=nn.initializers.orthogonal(0.01), name="policy"
        )(actor)  # (..., A)
        critic = _mlp(obs, self.hidden, self.activation, "critic")
        value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0), name="value")(critic)
        return logits, value[..., 0]


class QNetwork(nn.Module):
    """``obs (..., D) -> Q(s, .) (..., A)``, the action values of DQN."""

    num_actions: int
    hidden: Sequence[int] = (120, 84)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _mlp(obs, self.hidden, self.activation, "q")
        return nn.Dense(self.num_actions, name="q_out")(x)  # (..., A)


def network_config(net: nn.Module) -> dict[str, Any]:
    """A JSON-able description of ``net`` that :func:`build_network` turns back into it."""
    kinds = {ActorCritic: "actor_critic", QNetwork: "q_network"}
    if type(net) not in kinds:
        raise TypeError(f"net: expected ActorCritic or QNetwork, got {type(net).__name__}")
    if net.activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {sorted(_ACTIVATIONS)}, got {net.activation!r}"
        )
    return {
        "kind": kinds[type(net)],
        "num_actions": int(net.num_actions),
        "hidden": [int(h) for h in net.hidden],
        "activation": net.activation,
    }


def build_network(config: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`network_config`."""
    kind = config.get("kind")
    cls = {"actor_critic": ActorCritic, "q_network": QNetwork}.get(kind)
    if cls is None:
        raise ValueError(f"network kind: expected 'actor_critic' or 'q_network', got {kind!r}")
    return cls(
        num_actions=int(config["num_actions"]),
        hidden=tuple(config["hidden"]),
        activation=config["activation"],
    )


def greedy_action(net: nn.Module, params: Any, obs: jax.Array) -> jax.Array:
    """The greedy action: argmax of the policy's logits or of the Q-values."""
    out = net.apply({"params": params}, obs)
    scores = out[0] if isinstance(net, ActorCritic) else out
    return jnp.argmax(scores, axis=-1)
