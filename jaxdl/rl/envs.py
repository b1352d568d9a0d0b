r"""Classic-control environments as pure JAX functions, so that a whole training run (acting,
stepping the world, learning) is one jitted program on the device (the PureJaxRL idea).

Each environment is a frozen dataclass of constants with two pure methods,

* ``reset(key) -> (state, obs)``
* ``step(key, state, action) -> (state, obs, reward, terminated, truncated, info)``

``step`` resets automatically: when an episode ends (``terminated | truncated``) it returns the
first observation of a fresh episode, and the observation the old episode ended on in
``info["final_obs"]`` (the successor state a learner must bootstrap from on a time-limit
truncation). ``step_physics(state, action)`` is the same transition without the reset, used by
the tests that replay gymnasium. ``jax.vmap`` over ``key``/``state``/``action`` gives a batch
of environments.

The dynamics are gymnasium 1.x's ``CartPole-v1`` and ``Acrobot-v1`` written again (same
constants, same order of floating-point operations), and tests/rl/test_envs.py checks them step
for step against gymnasium from identical states. The physical state has the default float
dtype: float32 normally, float64 under ``jax.enable_x64(True)`` (then it matches
gymnasium's float64 arithmetic to rounding). Observations are float32, as in gymnasium.
gymnax was tried first: gymnax 1.0.1 installs without changing jax, but imports seaborn (a
plotting library) at import time and computes in JAX's default float32 only, so it could not be
checked tightly against gymnasium's float64 state; the dynamics are written here instead, their
float dtype following JAX's x64 flag.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class EnvState(NamedTuple):
    """``physics``: the physical state (cart-pole ``(x, x_dot, theta, theta_dot)``; acrobot
    ``(theta1, theta2, dtheta1, dtheta2)``); ``time``: steps taken in the current episode
    (int32); ``episode_return``: reward summed over the current episode (float32)."""

    physics: jax.Array
    time: jax.Array
    episode_return: jax.Array


def _float_dtype():
    return jnp.zeros(()).dtype  # float32, or float64 under enable_x64


class _Env:
    """Shared auto-reset wrapper around ``reset`` / ``step_physics``."""

    name: str
    num_actions: int
    observation_shape: tuple[int, ...]
    max_steps: int

    def _init_physics(self, key: jax.Array) -> jax.Array:
        raise NotImplementedError

    def observation(self, physics: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _transition(
        self, physics: jax.Array, action: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        raise NotImplementedError

    def reset(self, key: jax.Array) -> tuple[EnvState, jax.Array]:
        """Start an episode: ``(state, obs)``."""
        physics = self._init_physics(key)
        state = EnvState(physics, jnp.int32(0), jnp.float32(0.0))
        return state, self.observation(physics)

    def step_physics(
        self, state: EnvState, action: jax.Array
    ) -> tuple[EnvState, jax.Array, jax.Array, jax.Array, jax.Array]:
        """One transition without reset: ``(state, obs, reward, terminated, truncated)``.

        ``truncated`` is gymnasium's ``TimeLimit``: true on the ``max_steps``-th step of an episode
        (also when that step terminates)."""
        physics, reward, terminated = self._transition(state.physics, action)
        time = state.time + 1
        truncated = time >= self.max_steps
        new_state = EnvState(physics, time, state.episode_return + reward)
        return new_state, self.observation(physics), reward, terminated, truncated

    def step(
        self, key: jax.Array, state: EnvState, action: jax.Array
    ) -> tuple[EnvState, jax.Array, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
        """One transition with auto-reset.

        Returns ``(state, obs, reward, terminated, truncated, info)``; after an episode ends,
        ``state``/``obs`` start the next one and ``info`` holds ``final_obs`` (the observation the
        episode ended on) and ``returned_episode_return`` (its total reward, valid where
        ``terminated | truncated``)."""
        next_state, obs, reward, terminated, truncated = self.step_physics(state, action)
        done = terminated | truncated
        reset_state, reset_obs = self.reset(key)
        state_out = jax.tree.map(lambda r, n: jnp.where(done, r, n), reset_state, next_state)
        obs_out = jnp.where(done, reset_obs, obs)
        info = {"final_obs": obs, "returned_episode_return": next_state.episode_return}
        return state_out, obs_out, reward, terminated, truncated, info


@dataclasses.dataclass(frozen=True)
class CartPole(_Env):
    r"""CartPole-v1 (Barto, Sutton & Anderson 1983; gymnasium's constants and Euler integrator).

    With :math:`F = \pm 10` N, :math:`m_p = 0.1`, :math:`M = m_c + m_p = 1.1`, half-length
    :math:`l = 0.5` and :math:`\tau = 0.02` s:

    .. math::
        t = \frac{F + m_p l \dot\theta^2 \sin\theta}{M},\quad
        \ddot\theta = \frac{g\sin\theta - t\cos\theta}{l\,(4/3 - m_p\cos^2\theta / M)},\quad
        \ddot x = t - \frac{m_p l \ddot\theta\cos\theta}{M},

    then :math:`x \leftarrow x + \tau\dot x,\ \dot x \leftarrow \dot x + \tau\ddot x` (same for
    :math:`\theta`). Reward 1 every step; terminated when :math:`|x| > 2.4` or
    :math:`|\theta| > 12°`; truncated after 500 steps. Action 0 pushes left, 1 right.
    """

    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5
    force_mag: float = 10.0
    tau: float = 0.02
    theta_threshold_radians: float = 12 * 2 * math.pi / 360
    x_threshold: float = 2.4
    max_steps: int = 500
    name: str = "CartPole-v1"
    num_actions: int = 2
    observation_shape: tuple[int, ...] = (4,)

    def _init_physics(self, key):
        return jax.random.uniform(key, (4,), _float_dtype(), -0.05, 0.05)

    def observation(self, physics):
        return physics.astype(jnp.float32)

    def _transition(self, physics, action):
        total_mass = self.masspole + self.masscart
        polemass_length = self.masspole * self.length
        x, x_dot, theta, theta_dot = physics[0], physics[1], physics[2], physics[3]
        force = jnp.where(action == 1, self.force_mag, -self.force_mag).astype(physics.dtype)
        costheta, sintheta = jnp.cos(theta), jnp.sin(theta)
        temp = (force + polemass_length * jnp.square(theta_dot) * sintheta) / total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * jnp.square(costheta) / total_mass)
        )
        xacc = temp - polemass_length * thetaacc * costheta / total_mass
        # Euler, in gymnasium's order (positions advance with the old velocities).
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        physics = jnp.stack([x, x_dot, theta, theta_dot])
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        # gymnasium pays 1.0 on every step, the terminating one included.
        return physics, jnp.float32(1.0), terminated


@dataclasses.dataclass(frozen=True)
class Acrobot(_Env):
    r"""Acrobot-v1 (Sutton 1996; gymnasium's "book" dynamics, integrated with one RK4 step).

    Two links of mass 1 and length 1, torque :math:`a \in \{-1, 0, 1\}` on the joint between them,
    :math:`dt = 0.2` s. Observation :math:`(\cos\theta_1, \sin\theta_1, \cos\theta_2, \sin\theta_2,
    \dot\theta_1, \dot\theta_2)`; reward -1 per step, 0 on the terminating step; terminated when
    :math:`-\cos\theta_1 - \cos(\theta_1 + \theta_2) > 1` (the tip above the bar); truncated
    after 500 steps. Angles are wrapped to :math:`[-\pi, \pi]`, velocities clipped to
    :math:`4\pi` and :math:`9\pi`.
    """

    dt: float = 0.2
    link_length_1: float = 1.0
    link_mass_1: float = 1.0
    link_mass_2: float = 1.0
    link_com_pos_1: float = 0.5
    link_com_pos_2: float = 0.5
    link_moi: float = 1.0
    max_vel_1: float = 4 * math.pi
    max_vel_2: float = 9 * math.pi
    max_steps: int = 500
    name: str = "Acrobot-v1"
    num_actions: int = 3
    observation_shape: tuple[int, ...] = (6,)

    def _init_physics(self, key):
        return jax.random.uniform(key, (4,), _float_dtype(), -0.1, 0.1)

    def observation(self, physics):
        s = physics
        obs = jnp.stack([jnp.cos(s[0]), jnp.sin(s[0]), jnp.cos(s[1]), jnp.sin(s[1]), s[2], s[3]])
        return obs.astype(jnp.float32)

    def _dsdt(self, s):
        # s = (theta1, theta2, dtheta1, dtheta2, torque); the torque's derivative is 0.
        m1, m2, l1 = self.link_mass_1, self.link_mass_2, self.link_length_1
        lc1, lc2, i1, i2, g = (
            self.link_com_pos_1,
            self.link_com_pos_2,
            self.link_moi,
            self.link_moi,
            9.8,
        )
        theta1, theta2, dtheta1, dtheta2, a = s[0], s[1], s[2], s[3], s[4]
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * jnp.cos(theta2)) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * jnp.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * jnp.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * jnp.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * jnp.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * jnp.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * jnp.sin(theta2) - phi2) / (
            m2 * lc2**2 + i2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return jnp.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, jnp.zeros_like(a)])

    @staticmethod
    def _wrap(x, m, big_m):
        # gymnasium's two while-loops, unrolled: a step moves an angle by less than 3 turns.
        diff = big_m - m
        for _ in range(3):
            x = jnp.where(x > big_m, x - diff, x)
        for _ in range(3):
            x = jnp.where(x < m, x + diff, x)
        return x

    def _transition(self, physics, action):
        torque = (action.astype(physics.dtype) - 1.0).astype(physics.dtype)  # 0, 1, 2 -> -1, 0, 1
        y0 = jnp.concatenate([physics, torque[None]])  # (5,)
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:4]
        ns = jnp.stack(
            [
                self._wrap(ns[0], -math.pi, math.pi),
                self._wrap(ns[1], -math.pi, math.pi),
                jnp.clip(ns[2], -self.max_vel_1, self.max_vel_1),
                jnp.clip(ns[3], -self.max_vel_2, self.max_vel_2),
            ]
        )
        terminated = -jnp.cos(ns[0]) - jnp.cos(ns[1] + ns[0]) > 1.0
        reward = jnp.where(terminated, 0.0, -1.0).astype(jnp.float32)
        return ns, reward, terminated


_REGISTRY = {"CartPole-v1": CartPole, "Acrobot-v1": Acrobot}


def make(name: str) -> CartPole | Acrobot:
    """The environment called ``name``: ``"CartPole-v1"`` or ``"Acrobot-v1"``."""
    if name not in _REGISTRY:
        raise ValueError(f"env name: expected one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]()
