"""The course's time-series model, LSTM(64) -> Dense(1), forecasting yearly sunspot numbers.

Data: statsmodels' yearly sunspot activity 1700-2008 (:func:`jaxdl.data.load_sunspots`; real
data, offline). Windows of ``window`` past years predict the next year
(:func:`jaxdl.data.make_windows`); the split is chronological by target year: the first 70% of
targets train, the next 15% validate (early stopping), the last 15% (1966-2008) test. Inputs and
targets are standardised with the training period's mean and standard deviation.

Baselines on the same test years, by MAE in sunspot units:

* naive (persistence): next year equals this year, ``y_hat[t] = y[t-1]``;
* seasonal naive: the value one solar cycle ago, ``y_hat[t] = y[t - period]`` (``period = 11``);
* training mean.

Run: ``python -m experiments.sunspots --workdir runs/sunspots`` (about a minute).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import data, losses, models, optim, train


@dataclasses.dataclass
class Config:
    window: int = 20
    hidden: int = 64
    cell: str = "lstm"
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    patience: int = 40
    validation: float = 0.15
    test: float = 0.15
    period: int = 11
    seed: int = 0


def get_config() -> Config:
    return Config()


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def train_and_evaluate(config: Config, workdir: str) -> dict:
    c = config
    os.makedirs(workdir, exist_ok=True)
    years, series = data.load_sunspots()
    x_all, y_all = data.make_windows(series, c.window)  # targets are years[window:]
    target_years = years[c.window :]
    tr, va, te = data.split_series(len(y_all), validation=c.validation, test=c.test)
    mean, std = float(y_all[tr].mean()), float(y_all[tr].std())

    def norm(a):
        return (a - mean) / std

    model = models.Forecaster(hidden=c.hidden, cell=c.cell)
    history = train.fit(
        model,
        optim.adam(c.learning_rate),
        train_data=(norm(x_all[tr]), norm(y_all[tr])),
        val_data=(norm(x_all[va]), norm(y_all[va])),
        epochs=c.epochs,
        batch_size=c.batch_size,
        callbacks=[train.EarlyStopping(patience=c.patience, restore_best_weights=True)],
        seed=c.seed,
        loss_fn=losses.mse,
        verbose=False,
    )
    params = history.state.params
    predict = jax.jit(lambda x: model.apply({"params": params}, x))
    pred = np.asarray(predict(norm(x_all))) * std + mean  # (N, 1), sunspot units
    pred = np.maximum(pred[:, 0], 0.0)  # activity is non-negative

    target = y_all[:, 0]
    idx = np.arange(len(target))[te]
    full_index = idx + c.window  # position of each target in the raw series
    baselines = {
        "naive (last year)": series[full_index - 1],
        f"seasonal naive (t-{c.period})": series[full_index - c.period],
        "training mean": np.full(len(idx), y_all[tr].mean()),
    }
    results = {"lstm": mae(pred[idx], target[idx])}
    results.update({k: mae(v, target[idx]) for k, v in baselines.items()})
    results_val = {"lstm": mae(pred[va], target[va])}
    out = {
        "config": c,
        "test_years": [int(target_years[idx[0]]), int(target_years[idx[-1]])],
        "test_mae": results,
        "val_mae": results_val,
        "epochs_run": len(history.history["loss"]),
        "history": history.history,
    }
    save_json(out, os.path.join(workdir, "metrics.json"))

    fig, axes = new_figure(2, 1, figsize=(10, 6))
    axes[0].plot(years, series, color="k", lw=0.8, label="sunspots")
    axes[0].plot(target_years, pred, lw=0.8, label=f"{c.cell.upper()} one-step forecast")
    for sl, name in [(va, "validation"), (te, "test")]:
        axes[0].axvspan(target_years[sl][0], target_years[sl][-1], alpha=0.1, label=name)
    axes[0].set(xlabel="year", ylabel="activity")
    axes[0].legend(fontsize=8)
    ty = target_years[idx]
    axes[1].plot(ty, target[idx], "k.-", label="actual")
    axes[1].plot(ty, pred[idx], ".-", label=f"LSTM (MAE {results['lstm']:.1f})")
    for name, b in list(baselines.items())[:2]:
        axes[1].plot(ty, b, "--", lw=0.8, label=f"{name} (MAE {results[name]:.1f})")
    axes[1].set(xlabel="year", ylabel="activity", title="test period")
    axes[1].legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "forecast.png"))

    fig, ax = new_figure(figsize=(5, 3.5))
    ax.semilogy(history.history["loss"], label="train")
    ax.semilogy(history.history["val_loss"], label="validation")
    ax.set(xlabel="epoch", ylabel="MSE (standardised)")
    ax.legend()
    save_figure(fig, os.path.join(workdir, "loss.png"))

    print(f"test years {out['test_years']}, epochs run {out['epochs_run']}")
    for k, v in results.items():
        print(f"  test MAE {k:24s} {v:6.2f}")
    return out


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
