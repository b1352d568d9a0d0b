"""Synthetic long-memory sequence tasks, generated on the fly from a PRNG key (jittable).

* :func:`copy_task` -- the copy memory problem of Hochreiter & Schmidhuber 1997 (Experiment 2's
  long-delay recall) in the form of Arjovsky, Shah & Bengio 2016 ("Unitary evolution recurrent
  neural networks", section 4.1): ``n`` random symbols, a delay of blanks, a cue, then the model
  must output the ``n`` symbols in order. Per-step targets (sequence labelling), so causal
  Transformers and many-to-many RNNs both apply.
* :func:`copy_baseline` -- the analytic scores of the best memoryless predictor.

Token layout (``alphabet = A``): ``0`` = blank, ``1 .. A`` = data symbols, ``A + 1`` = the cue
(delimiter); the vocabulary has ``A + 2`` tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BLANK", "copy_baseline", "copy_task", "copy_vocab_size"]

BLANK = 0


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def copy_vocab_size(alphabet: int = 8) -> int:
    """Number of tokens of :func:`copy_task`: blank, ``alphabet`` symbols, the cue."""
    _check_int("alphabet", alphabet, 1)
    return alphabet + 2


def copy_task(
    key: jax.Array, batch: int, delay: int, num_symbols: int = 10, alphabet: int = 8
) -> tuple[jax.Array, jax.Array]:
    """A batch of the copy memory problem (Arjovsky et al. 2016's layout).

    With ``n = num_symbols``, ``A = alphabet`` and ``T = delay``, each sequence has length
    ``L = T + 2n``::

        inputs  = s_1 .. s_n   0 .. 0 (T - 1)   A+1    0 .. 0 (n)
        targets = 0 .. 0 (T + n)                       s_1 .. s_n

    with ``s_i ~ U{1, .., A}`` i.i.d. The cue ``A + 1`` sits at index ``T + n - 1``, the step
    just before the first symbol is due, and ``targets[:, T + n + i] = inputs[:, i]``: every
    recalled symbol was seen ``T + n`` steps before it is asked for, whatever ``n`` is.

    Args:
      key: PRNG key.
      batch: number of sequences, ``>= 1``.
      delay: ``T >= 1``; the blank stretch between the last symbol and the cue is ``T - 1``.
      num_symbols: ``n >= 1``.
      alphabet: ``A >= 1`` data symbols.

    Returns:
      ``(inputs, targets)``, both int32 ``(batch, T + 2n)``.
    """
    for name, value, minimum in (("batch", batch, 1), ("delay", delay, 1),
                                 ("num_symbols", num_symbols, 1), ("alphabet", alphabet, 1)):  # fmt: skip
        _check_int(name, value, minimum)
    symbols = jax.random.randint(key, (batch, num_symbols), 1, alphabet + 1, dtype=jnp.int32)

    def blank(n: int) -> jax.Array:
        return jnp.zeros((batch, n), jnp.int32)

    cue = jnp.full((batch, 1), alphabet + 1, jnp.int32)
    inputs = jnp.concatenate([symbols, blank(delay - 1), cue, blank(num_symbols)], axis=1)
    targets = jnp.concatenate([blank(delay + num_symbols), symbols], axis=1)
    return inputs, targets  # (B, T + 2n) each


def copy_baseline(delay: int, num_symbols: int = 10, alphabet: int = 8) -> dict[str, float]:
    """Scores of the best predictor without memory of the symbols (Arjovsky et al. 2016).

    It outputs blank with certainty on the first ``T + n`` steps (their targets are always blank)
    and the uniform distribution over the ``A`` symbols on the last ``n``; so its cross-entropy is
    ``log A`` on each recall step, ``0`` elsewhere, and ``n log A / (T + 2n)`` averaged over all
    steps; its recall accuracy is ``1 / A``.

    Returns:
      ``{"loss_all_steps", "loss_recall", "accuracy_recall"}`` (natural log, nats).
    """
    _check_int("delay", delay, 1)
    _check_int("num_symbols", num_symbols, 1)
    _check_int("alphabet", alphabet, 1)
    log_a = math.log(alphabet)
    return {
        "loss_all_steps": num_symbols * log_a / (delay + 2 * num_symbols),
        "loss_recall": log_a,
        "accuracy_recall": 1.0 / alphabet,
    }
