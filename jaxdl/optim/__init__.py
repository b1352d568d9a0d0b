"""Optimizers re-derived as optax-compatible gradient transformations."""
