"""What each ingredient of PPO and DQN buys on CartPole-v1: ablations, several seeds each.

* PPO without the baseline: the advantage :math:`\\hat A_t` is replaced by the discounted
  reward-to-go inside the rollout (no value function, no mean subtraction), so the gradient
  estimate keeps the variance a baseline removes.
* PPO without clipping: the same ``update_epochs`` x ``num_minibatches`` passes over each batch
  maximise the plain importance-weighted :math:`\\rho_t \\hat A_t`, so nothing stops the policy
  moving far from the one that collected the data.
* The same two PPO variants with 10 epochs per batch at learning rate 1e-3, where the policy is
  pushed further from the data each update.
* DQN without the target network: the bootstrap :math:`\\max_{a'} Q(s', a')` uses the online
  parameters being trained, so the regression target moves with every step.

Same machinery as :mod:`experiments.cartpole` (one vmapped program per variant, the same
smoothed curves and "steps to 475"), plus, for PPO, the mean approximate KL divergence
between the data-collecting and the updated policy and the fraction of samples whose ratio left
[0.8, 1.2]. Default (5 seeds, 300k steps per seed; about 20 minutes on the loaded 2-core
machine): ``python -m experiments.rl_ablation --workdir runs/rl_ablation``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from tqdm import tqdm

from experiments.cartpole import plot_curves, run_agent, summarize
from experiments.common import new_figure, parse_config, save_figure, save_json

VARIANTS = {
    "ppo": ("ppo", {}),
    "ppo, no baseline": ("ppo", {"use_baseline": False}),
    "ppo, no clipping": ("ppo", {"clip_eps": None}),
    # The same two at a larger step (10 epochs, learning rate 1e-3): where clipping has work to do.
    "ppo, 10 epochs lr 1e-3": ("ppo", {"update_epochs": 10, "learning_rate": 1e-3}),
    "ppo, 10 epochs lr 1e-3, no clipping": (
        "ppo",
        {"update_epochs": 10, "learning_rate": 1e-3, "clip_eps": None},
    ),
    "dqn": ("dqn", {}),
    "dqn, no target network": ("dqn", {"use_target_network": False}),
}


@dataclasses.dataclass
class Config:
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: int = 5
    total_timesteps: int = 300_000
    solved_return: float = 475.0
    smooth: int = 10
    eval_episodes: int = 10
    seed: int = 0


def get_config() -> Config:
    return Config()


def train_and_evaluate(config: Config, workdir: str) -> dict[str, Any]:
    c = config
    for v in c.variants:
        if v not in VARIANTS:
            raise ValueError(f"variants: expected names from {list(VARIANTS)}, got {v!r}")
    os.makedirs(workdir, exist_ok=True)
    summaries = {}
    for v in tqdm(c.variants, desc="variants"):
        algo, overrides = VARIANTS[v]
        run = run_agent(
            algo, c.seeds, c.seed, c.eval_episodes, total_timesteps=c.total_timesteps, **overrides
        )
        summaries[v] = s = summarize(run, c.smooth, c.solved_return)
        if "approx_kl" in run["metrics"]:  # PPO: how far each update moved the policy
            s["approx_kl_mean"] = float(run["metrics"]["approx_kl"].mean())
            s["clip_frac_mean"] = float(run["metrics"]["clip_frac"].mean())
            print(f"{v:24s} mean approx KL per update {s['approx_kl_mean']:.4f}, "
                  f"fraction of |ratio - 1| > 0.2: {s['clip_frac_mean']:.3f}")  # fmt: skip
        print(
            f"{v:24s} final return {s['final_return_mean']:6.1f} "
            f"(seeds {', '.join(f'{x:.0f}' for x in s['final_return_per_seed'])}); greedy "
            f"{s['greedy_return_mean']:6.1f}; mean reaches {c.solved_return:g} at "
            f"{s['steps_to_solved']} steps; run {s['run_seconds']:.1f} s"
        )
    save_json({"config": c, "summary": summaries}, os.path.join(workdir, "metrics.json"))
    groups = [("ppo", [v for v in c.variants if v.startswith("ppo") and "10 epochs" not in v])]
    groups.append(("ppo (10 epochs, lr 1e-3)", [v for v in c.variants if "10 epochs" in v]))
    groups.append(("dqn", [v for v in c.variants if v.startswith("dqn")]))
    groups = [(g, vs) for g, vs in groups if vs]
    fig, axes = new_figure(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (g, vs) in zip(axes[0], groups, strict=True):
        plot_curves(
            ax,
            {v: summaries[v] for v in vs},
            c.solved_return,
            f"{g} ablations, {c.seeds} seeds",
        )
    save_figure(fig, os.path.join(workdir, "rl_ablation.png"))
    return summaries


if __name__ == "__main__":
    cfg, wd = parse_config(get_config(), description=__doc__)
    train_and_evaluate(cfg, wd)
