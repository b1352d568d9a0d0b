"""DDIM-50 sampling speed: jaxdl (UNet + ddim_sample, one jitted lax.scan) vs the same U-Net and
sampler in PyTorch (eager, a Python loop over the steps as diffusers runs it), 28x28 images.

Each framework runs in its own process, one after the other. The jaxdl process initialises the
U-Net, perturbs the zero-initialised layers so every layer carries signal, and saves the weights;
the PyTorch process loads them into a line-by-line port of :class:`jaxdl.models.UNet` and first
checks that both networks give the same noise prediction on the same input (max abs difference in
the JSON), then that one DDIM-50 run from the same x_T gives the same samples. Timing: one warm-up
(JAX: compilation, reported separately), then ``reps`` timed sampling runs of ``batch`` images;
medians; samples/s = batch / median seconds.

``python -m experiments.benchmarks.ddim_sampling --out runs/ddim_sampling.json`` (about 3-5 min
on 2 busy CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

UNET = dict(channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attention=True, groups=8)
T = 1000  # linear schedule, DDPM's


def run_jax(args, workdir: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxdl import diffusion, models

    model = models.UNet(**UNET)
    shape = (args.batch, 28, 28, 1)
    params = jax.jit(model.init)(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,), jnp.int32)
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda p: jnp.asarray(np.asarray(p) + 0.05 * rng.standard_normal(p.shape, np.float32)),
        params,
    )
    flat = {
        "/".join(str(k.key) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    np.savez(os.path.join(workdir, "params.npz"), **flat)
    sched = diffusion.linear_schedule(T)
    x_T = np.asarray(jax.random.normal(jax.random.key(1), shape))
    t_probe = np.full((args.batch,), 500, np.int32)
    eps = np.asarray(jax.jit(model.apply)(params, x_T, t_probe))

    @jax.jit
    def sample(params, x_T):
        return diffusion.ddim_sample(
            lambda x, t: model.apply(params, x, t),
            sched,
            shape,
            jax.random.key(2),
            args.steps,
            x_T=x_T,
        )

    t0 = time.perf_counter()
    first = jax.block_until_ready(sample(params, x_T))
    compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        jax.block_until_ready(sample(params, x_T))
        times.append(time.perf_counter() - t0)
    np.savez(os.path.join(workdir, "jax_out.npz"), x_T=x_T, eps=eps, samples=np.asarray(first))
    return {"times": times, "compile_plus_first_s": compile_and_first}


def run_torch(args, workdir: str) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    p = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(workdir, "params.npz")).items()}
    ref = np.load(os.path.join(workdir, "jax_out.npz"))

    class Counter:  # reproduces flax's automatic names (Conv_0, Conv_1, ...) in one scope
        def __init__(self, prefix):
            self.prefix, self.n = prefix, {}

        def __call__(self, kind):
            i = self.n.get(kind, 0)
            self.n[kind] = i + 1
            return f"{self.prefix}{kind}_{i}"

    def conv(x, name, stride=1):
        w = p[f"{name}/kernel"].permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        if stride == 2:  # flax SAME at stride 2 pads (0, 1): bottom/right only
            return F.conv2d(F.pad(x, (0, 1, 0, 1)), w, p[f"{name}/bias"], stride=2)
        k = w.shape[-1]
        return F.conv2d(x, w, p[f"{name}/bias"], padding=k // 2)

    def dense(x, name):
        return x @ p[f"{name}/kernel"] + p[f"{name}/bias"]

    def gn(x, name):
        return F.group_norm(x, UNET["groups"], p[f"{name}/scale"], p[f"{name}/bias"], eps=1e-6)

    def resblock(x, emb, scope, features):
        c = Counter(scope + "/")
        h = F.silu(gn(x, c("GroupNorm")))
        h = conv(h, c("Conv"))
        h = h + dense(F.silu(emb), c("Dense"))[:, :, None, None]
        h = F.silu(gn(h, c("GroupNorm")))
        h = conv(h, c("Conv"))
        if x.shape[1] != features:
            x = conv(x, c("Conv"))
        return x + h

    def attention(x, scope):
        b, ch, hh, ww = x.shape
        c = Counter(scope + "/")
        y = gn(x, c("GroupNorm")).reshape(b, ch, hh * ww).transpose(1, 2)  # (B, HW, C)
        q, k, v = dense(y, c("Dense")).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(ch), dim=-1)
        y = dense(att @ v, c("Dense"))
        return x + y.transpose(1, 2).reshape(b, ch, hh, ww)

    def unet(x, t):
        top = Counter("params/")
        ch, mults = UNET["channels"], UNET["channel_mults"]
        half = ch // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args_ = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args_), torch.sin(args_)], -1)
        emb = dense(emb, top("Dense"))
        emb = dense(F.silu(emb), top("Dense"))
        h = conv(x, top("Conv"))
        skips = [h]
        for level, m in enumerate(mults):
            for _ in range(UNET["num_res_blocks"]):
                h = resblock(h, emb, top("ResBlock"), ch * m)
                skips.append(h)
            if level != len(mults) - 1:
                h = conv(h, top("Conv"), stride=2)
                skips.append(h)
        h = resblock(h, emb, top("ResBlock"), h.shape[1])
        if UNET["attention"]:
            h = attention(h, top("SelfAttention"))
        h = resblock(h, emb, top("ResBlock"), h.shape[1])
        for level in reversed(range(len(mults))):
            for _ in range(UNET["num_res_blocks"] + 1):
                h = resblock(
                    torch.cat([h, skips.pop()], 1), emb, top("ResBlock"), ch * mults[level]
                )
            if level != 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = conv(h, top("Conv"))
        h = F.silu(gn(h, top("GroupNorm")))
        return conv(h, top("Conv"))

    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
    tau = list(range(0, T, T // args.steps))[::-1]

    def ddim(
        x,
    ):  # eta = 0, Song et al. eq. 12, the same sub-sequence as jaxdl.diffusion.ddim_timesteps
        for i, t in enumerate(tau):
            a_t = abar[t]
            a_s = abar[tau[i + 1]] if i + 1 < len(tau) else torch.tensor(1.0)
            eps = unet(x, torch.full((x.shape[0],), t, dtype=torch.int32))
            x0 = (x - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
            x = torch.sqrt(a_s) * x0 + torch.sqrt(1 - a_s) * eps
        return x

    to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    x_T = to_nchw(ref["x_T"])
    with torch.inference_mode():
        eps = unet(x_T, torch.full((x_T.shape[0],), 500, dtype=torch.int32))
        eps_diff = float(np.abs(eps.numpy().transpose(0, 2, 3, 1) - ref["eps"]).max())
        first = ddim(x_T)  # warm-up
        sample_diff = float(np.abs(first.numpy().transpose(0, 2, 3, 1) - ref["samples"]).max())
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            ddim(x_T)
            times.append(time.perf_counter() - t0)
    return {
        "times": times,
        "max_abs_diff_eps_vs_jaxdl": eps_diff,
        "max_abs_diff_samples_vs_jaxdl": sample_diff,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--torch_threads", type=int, default=0, help="0: one per core")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    ap.add_argument("--framework", choices=["jax", "torch"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.framework:  # child process
        fn = run_jax if args.framework == "jax" else run_torch
        print(json.dumps(fn(args, args.workdir)))
        return
    results = {"unet": UNET, "image": [28, 28, 1], "batch": args.batch, "ddim_steps": args.steps}
    results["reps"] = args.reps
    results["torch_threads_requested"] = args.torch_threads
    with tempfile.TemporaryDirectory() as wd:
        for fw in ("jax", "torch"):
            cmd = [sys.executable, "-m", "experiments.benchmarks.ddim_sampling", "--framework", fw]
            cmd += ["--workdir", wd, "--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--reps", str(args.reps), "--torch_threads", str(args.torch_threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r["median_s"] = float(np.median(r["times"]))
            r["samples_per_s"] = args.batch / r["median_s"]
            results[fw] = r
    results["jaxdl_over_torch"] = (
        results["jax"]["samples_per_s"] / results["torch"]["samples_per_s"]
    )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
