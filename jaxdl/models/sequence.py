"""Sequence models built from :mod:`jaxdl.nn`'s recurrent cells.

* :class:`SequenceClassifier` -- token ids ``(B, T)`` -> embedding -> one or more (bi)directional
  LSTM/GRU/Elman layers -> dense logits ``(B, num_classes)``, from the final states.
* :class:`Forecaster` -- the course's time-series model ``LSTM(64) -> Dense(1)`` on windows of shape
  ``(B, timesteps, features)``. With ``return_sequences=True`` the dense layer reads every step,
  which is the course's Elman output equation ``y_t = h_t W_y + b_y``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp

from jaxdl import nn

CELLS = {"elman": nn.ElmanCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


def make_cell(kind: str, features: int, **kwargs: Any) -> fnn.Module:
    """``"elman"``, ``"lstm"`` or ``"gru"`` -> the jaxdl cell with ``features`` units."""
    if kind not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {kind!r}")
    # parent=None: an unbound cell, adopted by the RNN it is given to (its params nest under it)
    return CELLS[kind](features, parent=None, **kwargs)


def final_hidden(carry: Any) -> jax.Array:
    """The hidden state ``h`` of a cell's carry: ``h`` itself, or the second half of LSTM's ``(c, h)``."""
    return carry[1] if isinstance(carry, tuple) else carry


class SequenceClassifier(fnn.Module):
    """Embedding -> ``num_layers`` recurrent layers -> dropout -> dense logits.

    ``h = [h_T^fwd ; h_1^bwd]`` (the forward state after each sequence's last valid token and the
    backward state after reading the first token; Keras's ``Bidirectional(LSTM(H))`` output), or
    ``h_T`` when unidirectional; ``logits = dropout(h) W + b``. Dropout (``dropout_rate``) also sits
    between stacked layers; it is active only with ``train=True`` ('dropout' rng stream).

    ``__call__(tokens (B, T) int, seq_lengths (B,) | None = None, train=False) -> (B, num_classes)``.
    Sequences are right-padded; pass ``seq_lengths`` so padding does not enter the states.
    """

    vocab_size: int
    num_classes: int = 2
    embed_dim: int = 64
    hidden: int = 64
    cell: str = "lstm"
    bidirectional: bool = True
    num_layers: int = 1
    dropout_rate: float = 0.0
    unroll: int = 1
    dtype: Any = None  # computation dtype (mixed precision); parameters stay in param_dtype
    param_dtype: Any = jnp.float32

    @fnn.compact
    def __call__(
        self, tokens: jax.Array, seq_lengths: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"SequenceClassifier: tokens must be integer ids of shape (batch, time), got "
                f"{tokens.dtype}{tokens.shape}"
            )
        if self.num_layers < 1:
            raise ValueError(f"SequenceClassifier: num_layers must be >= 1, got {self.num_layers}")

        def layer():
            def rnn():
                cell = make_cell(self.cell, self.hidden, **self._dtypes())
                return nn.RNN(cell, unroll=self.unroll, parent=None)

            return nn.Bidirectional(rnn(), rnn(), parent=None) if self.bidirectional else rnn()

        x = fnn.Embed(self.vocab_size, self.embed_dim, **self._dtypes(), name="embed")(
            tokens
        )  # (B, T, E)
        stack = nn.StackedRNN(
            [layer() for _ in range(self.num_layers)], self.dropout_rate, name="rnn"
        )
        carries, _ = stack(x, seq_lengths=seq_lengths, train=train, return_carry=True)
        last = carries[-1]
        if self.bidirectional:
            h = jnp.concatenate([final_hidden(last[0]), final_hidden(last[1])], axis=-1)  # (B, 2H)
        else:
            h = final_hidden(last)  # (B, H)
        h = fnn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return fnn.Dense(self.num_classes, **self._dtypes(), name="head")(h)

    def _dtypes(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


class Forecaster(fnn.Module):
    """The course's forecaster: a recurrent layer then a dense read-out.

    ``return_sequences=False``: ``y = h_T W_y + b_y``, shape ``(B, out_features)`` (Keras's
    ``LSTM(64)`` then ``Dense(1)``; 18,753 parameters on 8 features). ``return_sequences=True``:
    ``y_t = h_t W_y + b_y`` at every step, shape ``(B, T, out_features)``.

    ``__call__(x (B, T, features), train=False)``; ``train`` is accepted for the trainer's calling
    convention (the model has no dropout).
    """

    hidden: int = 64
    cell: str = "lstm"
    out_features: int = 1
    return_sequences: bool = False
    unroll: int = 1
    hoist_inputs: bool | None = None  # see jaxdl.nn.RNN
    batch_splits: int | None = None  # see jaxdl.nn.RNN (LSTM only)
    dtype: Any = None  # computation dtype (mixed precision); parameters stay in param_dtype
    param_dtype: Any = jnp.float32

    @fnn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        if x.ndim != 3:
            raise ValueError(
                f"Forecaster: x must have shape (batch, timesteps, features), got {x.shape}"
            )
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        cell = make_cell(self.cell, self.hidden, **dtypes)
        rnn = nn.RNN(
            cell,
            unroll=self.unroll,
            hoist_inputs=self.hoist_inputs,
            batch_splits=self.batch_splits,
            name="rnn",
        )
        carry, ys = rnn(x, return_carry=True)  # (B, T, H)
        h = ys if self.return_sequences else final_hidden(carry)  # (B, T, H) or (B, H)
        return fnn.Dense(self.out_features, **dtypes, name="head")(h)
