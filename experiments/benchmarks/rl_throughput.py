"""Environment steps per second of PPO training on CartPole-v1: on the device vs on the host.

* ``jax``: :mod:`jaxdl.rl.ppo`, the whole run (acting, stepping the pure-JAX CartPole,
  GAE, 4 epochs x 4 minibatches of Adam) one jitted program; one seed, and five seeds vmapped.
* ``torch``: a CleanRL-style loop (``ppo.py``'s structure): gymnasium's ``SyncVectorEnv`` of
  CartPole-v1 stepped on the host, the same actor-critic (64-64 tanh, orthogonal init) in
  PyTorch, the same GAE and the same minibatch updates.

Same hyper-parameters for both (4 envs x 128 steps per update, 4 epochs, 4 minibatches, Adam
2.5e-4 with eps 1e-5, clip 0.2, grad-norm 0.5). Each framework runs in its own process, one
after the other; each is warmed up (JAX: compiled; torch: one update) and then timed over
``repeats`` runs of a fixed number of updates; medians and ratios are printed as one JSON line
and written to ``--out`` if given.

``python -m experiments.benchmarks.rl_throughput [--out rl_throughput.json]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

NUM_ENVS, NUM_STEPS, EPOCHS, MINIBATCHES = 4, 128, 4, 4
BATCH = NUM_ENVS * NUM_STEPS


def bench_jax(seeds: int, updates: int, repeats: int) -> dict:
    import jax

    from jaxdl.rl import ppo

    cfg = ppo.PPOConfig(
        num_envs=NUM_ENVS,
        num_steps=NUM_STEPS,
        update_epochs=EPOCHS,
        num_minibatches=MINIBATCHES,
        total_timesteps=updates * BATCH,
    )
    train = jax.jit(jax.vmap(ppo.make_train(cfg)))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(keys))  # warm-up run
    times = []
    for r in range(repeats):
        keys = jax.random.split(jax.random.PRNGKey(r + 1), seeds)
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(keys))
        times.append(time.perf_counter() - t0)
    steps = seeds * updates * BATCH
    return {"compile_seconds": compile_s, "seconds": times, "env_steps": steps}


def bench_torch(updates: int, repeats: int) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)

    # One thread: faster than two for 64-wide layers, and no spinning against the env loop.
    torch.set_num_threads(1)

    def layer(i, o, std=2**0.5):
        lin = nn.Linear(i, o)
        nn.init.orthogonal_(lin.weight, std)
        nn.init.zeros_(lin.bias)
        return lin

    actor = nn.Sequential(layer(4, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 2, 0.01))
    critic = nn.Sequential(layer(4, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0))
    params = list(actor.parameters()) + list(critic.parameters())
    opt = torch.optim.Adam(params, lr=2.5e-4, eps=1e-5)
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1") for _ in range(NUM_ENVS)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_np, _ = envs.reset(seed=0)
    state = {"obs": torch.tensor(obs_np)}
    gamma, lam = 0.99, 0.95

    def update():
        obs_buf = torch.zeros(NUM_STEPS, NUM_ENVS, 4)
        act_buf = torch.zeros(NUM_STEPS, NUM_ENVS, dtype=torch.long)
        logp_buf, rew_buf = torch.zeros(NUM_STEPS, NUM_ENVS), torch.zeros(NUM_STEPS, NUM_ENVS)
        done_buf, val_buf = torch.zeros(NUM_STEPS, NUM_ENVS), torch.zeros(NUM_STEPS, NUM_ENVS)
        next_val_buf = torch.zeros(NUM_STEPS, NUM_ENVS)
        obs = state["obs"]
        for t in range(NUM_STEPS):  # the host loop: one env step of 4 envs per iteration
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=actor(obs))
                action = dist.sample()
                obs_buf[t], act_buf[t], logp_buf[t] = obs, action, dist.log_prob(action)
                val_buf[t] = critic(obs)[:, 0]
            nxt, reward, term, trunc, info = envs.step(action.numpy())
            nxt_t = torch.tensor(nxt)
            with torch.no_grad():  # successor value: 0 / V(final obs) / V(next obs)
                succ = nxt_t.clone()
                if "final_obs" in info:
                    for i in np.nonzero(info.get("_final_obs", []))[0]:
                        succ[i] = torch.tensor(info["final_obs"][i])
                nv = critic(succ)[:, 0] * torch.tensor(1.0 - term.astype(np.float32))
            rew_buf[t], done_buf[t] = torch.tensor(reward), torch.tensor((term | trunc) * 1.0)
            next_val_buf[t] = nv
            obs = nxt_t
        state["obs"] = obs
        adv = torch.zeros_like(rew_buf)
        last = torch.zeros(NUM_ENVS)
        for t in reversed(range(NUM_STEPS)):
            delta = rew_buf[t] + gamma * next_val_buf[t] - val_buf[t]
            last = delta + gamma * lam * (1.0 - done_buf[t]) * last
            adv[t] = last
        ret = adv + val_buf
        b = [x.reshape(BATCH, *x.shape[2:]) for x in (obs_buf, act_buf, logp_buf, adv, ret)]
        mb = BATCH // MINIBATCHES
        for _ in range(EPOCHS):
            perm = torch.randperm(BATCH)
            for s in range(0, BATCH, mb):
                idx = perm[s : s + mb]
                o, a, old, A, R = (x[idx] for x in b)
                logits = actor(o)
                logp_all = torch.log_softmax(logits, -1)
                logp = logp_all.gather(1, a[:, None])[:, 0]
                A = (A - A.mean()) / (A.std() + 1e-8)
                ratio = torch.exp(logp - old)
                pg = -torch.min(ratio * A, torch.clamp(ratio, 0.8, 1.2) * A).mean()
                v = 0.5 * ((critic(o)[:, 0] - R) ** 2).mean()
                ent = -(logp_all.exp() * logp_all).sum(-1).mean()
                loss = pg + 0.5 * v - 0.01 * ent
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, 0.5)
                opt.step()

    update()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(updates):
            update()
        times.append(time.perf_counter() - t0)
    return {
        "seconds": times,
        "env_steps": updates * BATCH,
        "torch_threads": torch.get_num_threads(),
    }


def _worker(args) -> None:
    if args.worker == "jax":
        out = bench_jax(args.seeds, args.updates, args.repeats)
    else:
        out = bench_torch(args.updates, args.repeats)
    print("RESULT " + json.dumps(out))


def _run(argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "experiments.benchmarks.rl_throughput", *argv]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--worker", choices=["jax", "torch"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--updates", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jax_updates", type=int, default=200)
    p.add_argument("--torch_updates", type=int, default=10)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    r = str(args.repeats)
    results = {
        "jax_1seed": _run(["--worker", "jax", "--seeds", "1", "--updates", str(args.jax_updates), "--repeats", r]),
        "jax_5seeds": _run(["--worker", "jax", "--seeds", "5", "--updates", str(args.jax_updates), "--repeats", r]),
        "torch_cleanrl_style": _run(["--worker", "torch", "--updates", str(args.torch_updates), "--repeats", r]),
    }  # fmt: skip
    for res in results.values():
        res["median_seconds"] = sorted(res["seconds"])[len(res["seconds"]) // 2]
        res["env_steps_per_second"] = res["env_steps"] / res["median_seconds"]
    torch_rate = results["torch_cleanrl_style"]["env_steps_per_second"]
    summary = {
        "setting": f"PPO CartPole-v1, {NUM_ENVS} envs x {NUM_STEPS} steps/update, "
        f"{EPOCHS} epochs x {MINIBATCHES} minibatches; repeats={args.repeats}",
        "results": results,
        "ratio_jax_1seed_vs_torch": results["jax_1seed"]["env_steps_per_second"] / torch_rate,
        "ratio_jax_5seeds_vs_torch": results["jax_5seeds"]["env_steps_per_second"] / torch_rate,
    }
    line = json.dumps(summary)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
