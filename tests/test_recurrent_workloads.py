"""The harness's recurrent workloads (experiments/benchmarks/_harness.py): the same data as
``lstm_train``, and analytic FLOP counts that match a count of the models' matrix products."""

import numpy as np

from experiments.benchmarks import _harness

CFG = {"timesteps": 100, "features": 8, "hidden": 64, "batch_size": 4, "seed": 0}


def test_listed_before_the_time_to_accuracy_run():
    for w in ("gru_train", "bilstm_train"):
        assert w in _harness.WORKLOADS and w in _harness.DESCRIPTIONS
    assert _harness.WORKLOADS[-1] == "cnn_tta"  # still the harness's last workload


def test_same_arrays_as_lstm_train():
    ref = _harness.make_data("lstm_train", CFG)
    for w in ("gru_train", "bilstm_train"):
        got = _harness.make_data(w, CFG)
        np.testing.assert_array_equal(got["x"], ref["x"])
        np.testing.assert_array_equal(got["y"], ref["y"])


def test_flops_count_every_matrix_product():
    t, n, h = CFG["timesteps"], CFG["features"], CFG["hidden"]
    # GRU: per step x (1, n) @ (n, 3h) and h (1, h) @ (h, 3h); read-out (1, h) @ (h, 1)
    gru = t * (2 * n * 3 * h + 2 * h * 3 * h) + 2 * h
    assert _harness.gru_fwd_flops(t, n, h) == gru
    assert _harness.flops_per_example("gru_train", CFG) == 3 * gru
    # two LSTMs: per step (1, n) @ (n, 4h) and (1, h) @ (h, 4h) each; read-out (1, 2h) @ (2h, 1)
    bi = 2 * t * (2 * n * 4 * h + 2 * h * 4 * h) + 2 * 2 * h
    assert _harness.bilstm_fwd_flops(t, n, h) == bi
    assert _harness.flops_per_example("bilstm_train", CFG) == 3 * bi
    # the harness's own workloads keep their counts
    lstm = _harness.lstm_fwd_flops(t, n, h)
    assert _harness.flops_per_example("lstm_train", CFG) == 3 * lstm
