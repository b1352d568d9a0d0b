"""Model compression of the course's MNIST CNN: quantisation, pruning, distillation.

Trains MnistCNN on mnist_5k (3,600 training digits, 400 validation, 1,000 test), then measures
test accuracy, stored size and inference latency for: float32; bfloat16; int8 post-training
quantisation (per-channel weights, calibrated activations, int8 x int8 -> int32 products), and
qwix's int8 where installed; int8 quantisation-aware training (straight-through estimator); 4- and
2-bit weights by PTQ, by PTQ after a float fine-tune of the same budget, and by QAT (where QAT
matters); 90% magnitude pruning one-shot (before and after fine-tuning) and gradual (Zhu & Gupta
2017) with the same fine-tuning budget; and a 16x smaller student CNN trained on labels alone and
distilled from the CNN (Hinton et al. 2015). Then test accuracy against sparsity 50%..99% (global
and per-layer masks, one-shot, and global after a short fine-tune).

    python -m experiments.compression --workdir runs/compression
    python -m experiments.compression --workdir runs/compression_quick --epochs 2 --finetune_epochs 1

Writes ``metrics.json``, ``sparsity.png`` and ``compression.png`` into ``workdir``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments.common import new_figure, parse_config, save_figure, save_json
from jaxdl import compress, data, losses, models, optim, xla_flags


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_5k"
    epochs: int = 6  # teacher / float32 baseline and the students
    batch_size: int = 128
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 3e-4
    finetune_epochs: int = 3  # QAT, one-shot pruning fine-tune, gradual pruning: the same budget
    target_sparsity: float = 0.9
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    curve_finetune_epochs: int = 1
    low_bits: tuple[int, ...] = (4, 2)  # weight-only PTQ vs QAT below 8 bits
    temperature: float = 4.0
    distill_alpha: float = 0.1  # weight of the hard-label loss; 1 - alpha on the soft targets
    calibration_batches: int = 4
    latency_batch: int = 256
    latency_reps: int = 30
    seed: int = 0


def get_config() -> Config:
    return Config()


class StudentCNN(nn.Module):
    """A small CNN: conv 8 -> pool -> conv 16 -> pool -> dense 32 -> dense 10 (14,410 params)."""

    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        pool = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
        x = pool(
            nn.relu(nn.Conv(8, (3, 3), padding="VALID", dtype=self.dtype)(x))
        )  # (N, 13, 13, 8)
        x = pool(
            nn.relu(nn.Conv(16, (3, 3), padding="VALID", dtype=self.dtype)(x))
        )  # (N, 5, 5, 16)
        x = nn.relu(nn.Dense(32, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, dtype=self.dtype)(x)


def _batches(x, y, batch_size, rng):
    idx = rng.permutation(len(x))
    for i in range(0, len(x) - batch_size + 1, batch_size):  # drop the remainder: one shape
        j = idx[i : i + batch_size]
        yield x[j], y[j]


def train(
    model,
    params,
    optimizer,
    x,
    y,
    epochs,
    batch_size,
    seed,
    desc,
    transform=None,
    teacher=None,
    c=None,
):
    """Minimise cross-entropy (or the distillation mix with ``teacher``) with a jitted step.

    ``transform(params)`` is applied before the forward pass (QAT's fake quantiser)."""
    transform = transform or (lambda p: p)
    params = jax.tree.map(jnp.copy, params)  # the step donates its input; keep the caller's
    opt_state = optimizer.init(params)

    def loss_fn(p, xb, yb, key):
        logits = model.apply({"params": transform(p)}, xb, train=True, rngs={"dropout": key})
        loss = losses.cross_entropy(logits, yb)
        if teacher is not None:
            soft = losses.distillation_loss(logits, teacher(xb), c.temperature)
            loss = c.distill_alpha * loss + (1 - c.distill_alpha) * soft
        return loss

    @functools.partial(
        jax.jit, donate_argnums=(0, 1), compiler_options=xla_flags.train_step_compiler_options()
    )
    def step(p, s, xb, yb, key):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb, key)
        u, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    steps = epochs * (len(x) // batch_size)
    bar = tqdm(total=steps, desc=desc, leave=False, file=sys.stderr)
    for _ in range(epochs):
        for xb, yb in _batches(x, y, batch_size, rng):
            key, sub = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, xb, yb, sub)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.4f}")
    bar.close()
    return params, opt_state


def accuracy(predict, x, y, batch=500):
    hits = 0
    for i in range(0, len(x), batch):
        hits += int(
            np.sum(np.argmax(np.asarray(predict(x[i : i + batch])), -1) == y[i : i + batch])
        )
    return hits / len(x)


def latency_ms(fn, x, reps):
    """Median wall time of ``fn(x)`` after two warm-up calls (compilation excluded)."""
    for _ in range(2):
        jax.block_until_ready(fn(x))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def train_and_evaluate(c: Config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    x_tr, y_tr = data.load(c.dataset, "train", validation_split=0.1)
    x_te, y_te = data.load(c.dataset, "test")
    model = models.MnistCNN()
    start = time.perf_counter()
    params = jax.jit(model.init)(jax.random.key(c.seed), x_tr[:1])["params"]
    steps_per_epoch = len(x_tr) // c.batch_size
    rows: dict[str, dict] = {}
    x_lat = jnp.asarray(x_te[: c.latency_batch])

    def predictor(m, p):
        return jax.jit(lambda xb: m.apply({"params": p}, xb))

    def add(name, acc, size, lat=None, **extra):
        rows[name] = {"test_accuracy": acc, "size_bytes": size, "latency_ms": lat, **extra}
        lat_s = f"{lat:7.2f} ms" if lat is not None else "      -   "
        print(f"{name:34s} acc {acc:.4f}  size {size / 1024:8.1f} KiB  latency {lat_s}", flush=True)

    # float32 baseline (the teacher)
    params, _ = train(
        model,
        params,
        optim.adam(c.learning_rate),
        x_tr,
        y_tr,
        c.epochs,
        c.batch_size,
        c.seed,
        "float32",
    )
    f32 = predictor(model, params)
    add(
        "float32",
        accuracy(f32, x_te, y_te),
        compress.size_bytes(params),
        latency_ms(f32, x_lat, c.latency_reps),
    )

    # bfloat16: parameters stored and computed in bfloat16
    p16 = jax.tree.map(lambda w: w.astype(jnp.bfloat16), params)
    bf16 = predictor(models.MnistCNN(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), p16)
    add(
        "bfloat16",
        accuracy(bf16, x_te, y_te),
        compress.size_bytes(p16),
        latency_ms(bf16, x_lat, c.latency_reps),
    )

    # int8 post-training quantisation: weights per channel, activations calibrated on a few batches
    def int8_rows(name, p):
        q = compress.quantize(p)
        calib = [x_tr[i * 64 : (i + 1) * 64] for i in range(c.calibration_batches)]
        scales = compress.calibrate(model, {"params": p}, calib)
        run = jax.jit(lambda xb: compress.int8_apply(model, {"params": q}, scales, xb))
        weight_only = predictor(model, compress.dequantize(q))
        add(
            name,
            accuracy(run, x_te, y_te),
            compress.size_bytes(q),
            latency_ms(run, x_lat, c.latency_reps),
            weight_only_accuracy=accuracy(weight_only, x_te, y_te),
        )
        return q

    int8_rows("int8 PTQ", params)

    # qwix (Google's JAX quantisation library), where installed: the same int8 weights, but it
    # intercepts the jax ops (dot_general, conv) inside matched modules and, on XLA, quantises the
    # activations dynamically (scales computed from each input at run time) instead of calibrating
    try:
        import qwix
    except ImportError:
        qwix = None
    if qwix is not None:
        rules = [qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8)]
        qmodel = qwix.quantize_model(model, qwix.PtqProvider(rules))
        abstract = jax.eval_shape(qmodel.init, jax.random.key(0), x_tr[:1])["params"]
        qw = qwix.quantize_params(params, abstract)
        run = jax.jit(lambda xb: qmodel.apply({"params": qw}, xb))
        add(
            "int8 PTQ (qwix, dynamic activations)",
            accuracy(run, x_te, y_te),
            compress.size_bytes(qw),
            latency_ms(run, x_lat, c.latency_reps),
        )

    # QAT: fine-tune with fake-quantised weights (straight-through gradients). At 8 bits the
    # integer model; at fewer bits weight-only (dequantised) accuracy, PTQ vs QAT vs a float
    # fine-tune of the same budget followed by PTQ (the control: is it QAT or just more training?)
    ft_opt = lambda: optim.adam(c.finetune_learning_rate)  # noqa: E731
    p_ft, _ = train(
        model,
        params,
        ft_opt(),
        x_tr,
        y_tr,
        c.finetune_epochs,
        c.batch_size,
        c.seed + 1,
        "float fine-tune",
    )
    for bits in (8, *c.low_bits):
        p_qat, _ = train(
            model,
            params,
            ft_opt(),
            x_tr,
            y_tr,
            c.finetune_epochs,
            c.batch_size,
            c.seed + 1,
            f"QAT int{bits}",
            transform=functools.partial(compress.fake_quant_params, bits=bits),
        )
        if bits == 8:
            int8_rows("int8 QAT", p_qat)
            continue
        for name, p in (
            (f"int{bits} weights PTQ", params),
            (f"int{bits} weights PTQ after float fine-tune", p_ft),
            (f"int{bits} weights QAT", p_qat),
        ):
            qb = compress.quantize(p, bits)
            add(
                name,
                accuracy(predictor(model, compress.dequantize(qb)), x_te, y_te),
                compress.size_bytes(qb),
                note=f"stored one int8 per weight; packing {bits}-bit values would store {8 // bits}x fewer bytes",
            )

    # pruning to target sparsity: one-shot (with and without fine-tuning) and gradual
    s = c.target_sparsity
    mask = compress.magnitude_mask(params, s)
    p_one = compress.apply_mask(params, mask)
    add(
        f"{s:.0%} pruned one-shot, no fine-tune",
        accuracy(predictor(model, p_one), x_te, y_te),
        compress.sparse_size_bytes(p_one),
        sparsity=compress.kernel_sparsity(p_one),
    )
    ft_steps = c.finetune_epochs * steps_per_epoch
    # begin = end = 0: the mask is computed once at the first update, then held (one-shot + fine-tune)
    p_one_ft, _ = train(
        model,
        p_one,
        compress.gradual_pruning(ft_opt(), s, 0, 0),
        x_tr,
        y_tr,
        c.finetune_epochs,
        c.batch_size,
        c.seed + 2,
        "one-shot fine-tune",
    )
    add(
        f"{s:.0%} pruned one-shot + fine-tune",
        accuracy(predictor(model, p_one_ft), x_te, y_te),
        compress.sparse_size_bytes(p_one_ft),
        sparsity=compress.kernel_sparsity(p_one_ft),
    )
    end = max(1, int(0.7 * ft_steps))  # prune over the first 70%, recover over the rest
    gradual = compress.gradual_pruning(ft_opt(), s, 0, end, frequency=max(1, end // 10))
    p_grad, _ = train(
        model,
        params,
        gradual,
        x_tr,
        y_tr,
        c.finetune_epochs,
        c.batch_size,
        c.seed + 2,
        "gradual pruning",
    )
    add(
        f"{s:.0%} pruned gradual (Zhu & Gupta)",
        accuracy(predictor(model, p_grad), x_te, y_te),
        compress.sparse_size_bytes(p_grad),
        sparsity=compress.kernel_sparsity(p_grad),
    )
    q_sparse = compress.quantize(p_grad)
    add(
        f"{s:.0%} gradual + int8 weights",
        accuracy(predictor(model, compress.dequantize(q_sparse)), x_te, y_te),
        compress.sparse_size_bytes(q_sparse),
        note="bitmap + one int8 per non-zero + float32 scales and biases",
    )

    # distillation: the student on labels alone vs on the teacher's softened outputs
    student = StudentCNN()
    sp0 = jax.jit(student.init)(jax.random.key(c.seed + 3), x_tr[:1])["params"]
    teacher = jax.jit(lambda xb: model.apply({"params": params}, xb))
    sp_ce, _ = train(
        student,
        sp0,
        optim.adam(3e-3),
        x_tr,
        y_tr,
        c.epochs,
        c.batch_size,
        c.seed + 3,
        "student (labels)",
    )
    sp_kd, _ = train(
        student,
        sp0,
        optim.adam(3e-3),
        x_tr,
        y_tr,
        c.epochs,
        c.batch_size,
        c.seed + 3,
        "student (distilled)",
        teacher=teacher,
        c=c,
    )
    st_pred = predictor(student, sp_kd)
    add(
        "student, labels only",
        accuracy(predictor(student, sp_ce), x_te, y_te),
        compress.size_bytes(sp_ce),
        latency_ms(predictor(student, sp_ce), x_lat, c.latency_reps),
    )
    add(
        f"student, distilled (T={c.temperature:g})",
        accuracy(st_pred, x_te, y_te),
        compress.size_bytes(sp_kd),
        latency_ms(st_pred, x_lat, c.latency_reps),
    )

    # accuracy against sparsity, global vs layer masks, before and after a short fine-tune
    curve = {"sparsity": list(c.sparsities), "global": [], "layer": [], "global_finetuned": []}
    for s in c.sparsities:
        for scope in ("global", "layer"):
            p = compress.apply_mask(params, compress.magnitude_mask(params, s, scope))
            curve[scope].append(accuracy(predictor(model, p), x_te, y_te))
        p = compress.apply_mask(params, compress.magnitude_mask(params, s))
        p, _ = train(
            model,
            p,
            compress.gradual_pruning(ft_opt(), s, 0, 0),
            x_tr,
            y_tr,
            c.curve_finetune_epochs,
            c.batch_size,
            c.seed + 4,
            f"fine-tune at {s:.0%}",
        )
        curve["global_finetuned"].append(accuracy(predictor(model, p), x_te, y_te))
        print(
            f"sparsity {s:.2f}: global {curve['global'][-1]:.4f}  layer {curve['layer'][-1]:.4f}  "
            f"global+fine-tune {curve['global_finetuned'][-1]:.4f}",
            flush=True,
        )

    metrics = {
        "config": c,
        "rows": rows,
        "sparsity_curve": curve,
        "wall_seconds": time.perf_counter() - start,
        "latency_batch": c.latency_batch,
        "backend": jax.default_backend(),
        "devices": str(jax.devices()),
    }
    save_json(metrics, os.path.join(workdir, "metrics.json"))
    plot(metrics, workdir)
    print(f"wall time {metrics['wall_seconds']:.0f} s; wrote {workdir}/metrics.json")
    return metrics


def plot(metrics, workdir):
    curve = metrics["sparsity_curve"]
    fig, ax = new_figure(figsize=(6, 4))
    s = 100 * np.asarray(curve["sparsity"])
    ax.plot(s, curve["global"], "o-", label="one-shot, global mask")
    ax.plot(s, curve["layer"], "s-", label="one-shot, per-layer mask")
    ax.plot(s, curve["global_finetuned"], "^-", label="global + fine-tune")
    ax.axhline(
        metrics["rows"]["float32"]["test_accuracy"], color="k", ls=":", label="dense float32"
    )
    ax.set_xlabel("sparsity of the kernels (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MnistCNN on mnist_5k: magnitude pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(workdir, "sparsity.png"))

    rows = metrics["rows"]
    names = list(rows)
    fig, ax = new_figure(figsize=(7, 5))
    for n in names:
        r = rows[n]
        ax.scatter(r["size_bytes"] / 1024, r["test_accuracy"], s=40)
        ax.annotate(
            n,
            (r["size_bytes"] / 1024, r["test_accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("stored size (KiB, log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MnistCNN compression: accuracy vs size")
    ax.grid(alpha=0.3)
    save_figure(fig, os.path.join(workdir, "compression.png"))


def main(argv=None):
    config, workdir = parse_config(get_config(), argv, description=__doc__)
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main()
