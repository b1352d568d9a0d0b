"""The recurrent workloads beyond the course's LSTM: ``gru_train`` and ``bilstm_train``, added to
the harness's tables (:mod:`._harness`) when this module is imported.

Both have ``lstm_train``'s shapes and data (batch 128, ``T`` = 100, 8 features, hidden 64, one
target per sequence, MSE, Adam):

* ``gru_train``: ``GRU(64) -> Dense(1)`` on the last state. The GRU is the reset-after form
  (cuDNN's, PyTorch's ``nn.GRU``, Keras's ``GRU(reset_after=True)`` default, jaxdl's
  ``GRUCell(reset_after=True)`` default): ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, two
  bias vectors, so every framework has exactly ``3 (in H + H H + 2 H) + H + 1`` = 14,273
  parameters at the default sizes.
* ``bilstm_train``: ``Bidirectional(LSTM(64))`` -> ``Dense(1)``: a forward and a backward LSTM
  over the whole window, their final hidden states concatenated (``(B, 2H)``, Keras's
  ``Bidirectional(LSTM(H))`` output; in PyTorch ``h_n`` of ``nn.LSTM(bidirectional=True)``, not
  ``y[:, -1]``, whose backward half has read one step only). 37,505 parameters in jaxdl, flax and
  Keras (one bias per gate block); PyTorch's ``nn.LSTM`` has two bias vectors per direction, 512
  more (the same function: the sum of two biases is one bias).

Analytic FLOPs (multiply-adds counted twice, matmuls only, the train step three times the
forward pass as for ``lstm_train``): GRU ``T`` steps of ``[x_t, h] (in + H) @ (in + H, 3H)`` plus
the read-out; the bidirectional LSTM twice ``lstm_train``'s recurrence plus a ``2H``-wide read-out.

The harness's own module is the lead's; this one extends its workload tuple, descriptions, data
and FLOP counts in place (the functions :func:`._harness.main` calls are looked up on the
module at call time), so ``--workload gru_train`` is accepted by every ``bench_*`` process that
imports it. Importing it twice is harmless.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.benchmarks import _harness

RECURRENT_WORKLOADS = ("gru_train", "bilstm_train")
DESCRIPTIONS = {
    "gru_train": "GRU(64) (reset-after) -> Dense(1) train step (MSE, Adam)",
    "bilstm_train": "Bidirectional(LSTM(64)) -> Dense(1) train step (MSE, Adam)",
}
SEQUENCE_WORKLOADS = ("lstm_train", *RECURRENT_WORKLOADS)  # the same (B, T, features) data


def gru_fwd_flops(timesteps: int, features: int, hidden: int) -> int:
    """Per sequence: ``T`` steps of ``(in + H) @ (in + H, 3H)``, then ``Dense(1)``."""
    return 2 * timesteps * (features + hidden) * 3 * hidden + 2 * hidden


def bilstm_fwd_flops(timesteps: int, features: int, hidden: int) -> int:
    """Per sequence: two LSTMs' ``T`` steps of ``(in + H) @ (in + H, 4H)``, then ``Dense(1)`` on
    the ``2H`` concatenated states."""
    return 2 * (2 * timesteps * (features + hidden) * 4 * hidden) + 2 * 2 * hidden


def flops_per_example(workload: str, cfg: dict[str, Any]) -> float | None:
    t, n, h = cfg["timesteps"], cfg["features"], cfg["hidden"]
    if workload == "gru_train":
        return 3.0 * gru_fwd_flops(t, n, h)
    if workload == "bilstm_train":
        return 3.0 * bilstm_fwd_flops(t, n, h)
    return _BASE_FLOPS(workload, cfg)


def make_data(workload: str, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """``lstm_train``'s arrays (same seed, so the same numbers) for the recurrent workloads."""
    if workload in RECURRENT_WORKLOADS:
        workload = "lstm_train"
    return _BASE_DATA(workload, cfg)


def _register() -> None:
    if getattr(_harness, "_recurrent_registered", False) or all(
        w in _harness.WORKLOADS for w in RECURRENT_WORKLOADS
    ):
        return
    global _BASE_FLOPS, _BASE_DATA
    _BASE_FLOPS, _BASE_DATA = _harness.flops_per_example, _harness.make_data
    # before cnn_tta, which the harness runs last
    base = [w for w in _harness.WORKLOADS if w != "cnn_tta"]
    tail = [w for w in _harness.WORKLOADS if w == "cnn_tta"]
    _harness.WORKLOADS = (*base, *RECURRENT_WORKLOADS, *tail)
    _harness.DESCRIPTIONS.update(DESCRIPTIONS)
    _harness.flops_per_example = flops_per_example
    _harness.make_data = make_data
    _harness._recurrent_registered = True


_BASE_FLOPS = _harness.flops_per_example
_BASE_DATA = _harness.make_data
_register()
WORKLOADS = _harness.WORKLOADS
