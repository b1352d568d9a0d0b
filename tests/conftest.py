"""Test-wide settings.

Rank promotion raises so that a silent broadcast of (N,) against (N, 1) fails a test instead of
producing a wrong answer (the Equinox practice named in DESIGN.md).
"""

import os

# Tests never touch the network: TFDS paths are exercised through tfds.testing.mock_data.
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
