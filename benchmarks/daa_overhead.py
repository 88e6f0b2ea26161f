"""Overhead of DAA's particle interaction over PGD, and how the pairwise term scales.

    python benchmarks/daa_overhead.py [--particles 200] [--reps 10]

1. One jitted attack step (forward + backward of the model, direction, sign step, projection) at
   M = 200 particles on a Fashion-MNIST CNN (`advjax.models.get_model("daa_cnn")`, the stand-in
   of the first DAA study, 28x28x1, eval-mode batch norm; the authors' released network is
   `daa_release_cnn`, 64 against 34 MFLOP per forward pass, which halves the interaction's
   share): PGD vs DAA-BLOB (Eq. 20)
   vs DAA-DGF (Eq. 21). Median of `--reps` timed runs after a warm-up (compilation excluded).
   Target: DAA <= 1.15x PGD.
2. The interaction term alone (`daa.blob_interaction`, `daa.dgf_interaction`: pairwise distances,
   median bandwidth, kernel-weighted sums) for M in {200, 1000} and d in {784, 3072}.

Scaling. The interaction term costs O(M^2 d) per step: the Gram matrix X X^T for the pairwise
distances (2 M^2 d flops) and the kernel-weighted sums K [G, X] (4 M^2 d flops for BLOB, 2 M^2 d for
DGF), plus an O(M^2) exact median (bisection on the float bits, 31 counting passes, independent of
d). The model's forward and backward pass cost O(M) per step (~75 MFLOP per 28x28 image for the DAA
FMNIST CNN, forward plus input gradient, against ~6 M d ~ 1 MFLOP per particle for the BLOB term at
M = 200, d = 784), so at the paper's M = 100-200 the interaction is a percent or two of a step; but
its cost per particle grows linearly in M: 200 -> 1000 particles multiplies the term's flops by 25
(5x per particle; the measured times grow 20-60x on a shared CPU, where larger matrices also fall
out of cache), which is why the paper updates minibatches of 100-200 particles (Algorithm 1) instead
of letting the whole test set interact. Going from d = 784 (FMNIST) to d = 3072 (CIFAR-10) scales it
linearly in d.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from advjax import losses, threat  # noqa: E402
from advjax.attacks import daa  # noqa: E402


def build_model(key):
    """(logits_fn, description): the DAA paper's Fashion-MNIST CNN, eval mode, random weights."""
    from advjax import models
    model = models.get_model("daa_cnn")
    variables = models.init_variables(model, key, (28, 28, 1))
    return models.logits_fn(model, variables), "advjax.models.get_model('daa_cnn')"


def median_times(fns, *args, reps: int):
    """{name: median seconds} over `reps` runs, the functions timed round-robin (so that a change in
    machine load hits all of them alike), after one compiling warm-up call each."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def make_step(logits_fn, direction, *, eps, step_size):
    """One attack step x_adv -> Pi(x_adv + step_size * sign(direction(x_adv, grad)))."""

    def step(x_adv, x, y):
        g = jax.grad(lambda xa: jnp.sum(losses.cross_entropy(logits_fn(xa), y)))(x_adv)
        d = direction(x_adv, g)
        return threat.project_to_threat(x_adv + step_size * jnp.sign(d), x, eps, "linf")

    return jax.jit(step)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--particles", type=int, default=200)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--scaling-reps", type=int, default=5)
    args = ap.parse_args()

    key = jax.random.PRNGKey(0)
    kx, ky, kn, km = jax.random.split(key, 4)
    logits_fn, desc = build_model(km)
    m = args.particles
    x = jax.random.uniform(kx, (m, 28, 28, 1))
    y = jax.random.randint(ky, (m,), 0, 10)
    x_adv = threat.clip_to_box(x + threat.random_init(kn, x, 0.2, "linf"))
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}); model: {desc}")
    print(f"1) one jitted step, M = {m} particles, 28x28x1, median of {args.reps} runs")

    steps = {
        "PGD": lambda xa, g: g,
        "DAA-BLOB (c=1.5)": lambda xa, g: daa.blob_direction(xa, g, c=1.5),
        "DAA-DGF (coef=0.005)": lambda xa, g: daa.dgf_direction(xa, g, coef=0.005),
    }
    fns = {name: make_step(logits_fn, direction, eps=0.2, step_size=0.01)
           for name, direction in steps.items()}
    times = median_times(fns, x_adv, x, y, reps=args.reps)
    base = times["PGD"]
    for name, t in times.items():
        print(f"   {name:22s} {1e3 * t:9.2f} ms/step   ratio to PGD {t / base:5.3f}x")

    print(f"2) interaction term alone (no model), median of {args.scaling_reps} runs")
    blob = jax.jit(lambda a, g: daa.blob_interaction(a, g))
    dgf = jax.jit(lambda a: daa.dgf_interaction(a))
    rng = np.random.default_rng(0)
    for d in (784, 3072):
        for mm in (200, 1000):
            a = jnp.asarray(rng.uniform(0, 1, (mm, d)), jnp.float32)
            g = jnp.asarray(rng.standard_normal((mm, d)), jnp.float32)
            t = median_times({"blob": blob, "dgf": lambda a, g: dgf(a)}, a, g,
                             reps=args.scaling_reps)
            tb, td = t["blob"], t["dgf"]
            print(f"   M = {mm:5d}, d = {d:5d}: BLOB {1e3 * tb:9.2f} ms   DGF {1e3 * td:9.2f} ms   "
                  f"(M^2 d = {mm * mm * d / 1e9:.2f}e9)")


if __name__ == "__main__":
    main()
