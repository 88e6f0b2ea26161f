"""Micro-benchmarks for the model zoo's hot spots on the current JAX backend.

    python -m advjax.models.benchmark     # max-pool gradient, first-conv input gradient, Madry CNN
    python -m advjax.models.benchmark --repeats 20 --batch 256

Each timing is "median/min" wall milliseconds of one jitted call (after a warm-up compile).
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax.models import layers


def _median_ms(fn, *args, repeats: int) -> str:
    """'median/min' wall milliseconds of ``fn(*args)`` after a warm-up (compile) call. The minimum
    is the better estimate on a machine shared with other jobs."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return f"{1e3 * np.median(times):8.2f}/{1e3 * np.min(times):8.2f}"


def bench_max_pool(batch: int, repeats: int) -> dict:
    """Gradient of sum(g * pool(x)) w.r.t. x for x of shape (batch, 28, 28, 32)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 28, 28, 32))
    g = jax.random.normal(jax.random.PRNGKey(1), (batch, 14, 14, 32))
    pools = {
        "nn.max_pool": lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)),
        "max_pool_2x2": layers.max_pool_2x2,
    }
    out = {}
    for name, pool in pools.items():
        fwd = jax.jit(pool)
        grad = jax.jit(jax.grad(lambda v, g, pool=pool: jnp.sum(g * pool(v))))
        out[name] = {"forward_ms": _median_ms(fwd, x, repeats=repeats),
                     "grad_ms": _median_ms(grad, x, g, repeats=repeats)}
    return out


def bench_first_conv(batch: int, repeats: int) -> dict:
    """Forward, and value and input gradient, of the Madry CNN's first layer (conv 5x5 SAME,
    1 -> 32 channels)."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 28, 28, 1))
    g = jax.random.normal(jax.random.PRNGKey(1), (batch, 28, 28, 32))
    out = {}
    for impl in ("xla", "patches_grad"):
        conv = layers.Conv(32, (5, 5), impl=impl)
        params = conv.init(jax.random.PRNGKey(2), x)
        # Everything is an argument: with closed-over constants XLA folds the (linear) gradient.
        fwd = jax.jit(lambda v, g, p, conv=conv: jnp.sum(g * conv.apply(p, v)))
        grad = jax.jit(jax.value_and_grad(fwd))
        out[impl] = {"forward_ms": _median_ms(fwd, x, g, params, repeats=repeats),
                     "value_and_input_grad_ms": _median_ms(grad, x, g, params, repeats=repeats)}
    return out


def bench_madry_cnn(batch: int, repeats: int) -> dict:
    """One PGD step's work on the Madry CNN: the input gradient of the summed cross-entropy."""
    from advjax.models import MadryCNN, init_variables

    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 28, 28, 1))
    y = jnp.arange(batch) % 10
    out = {}
    for pool in ("nn", "reshape"):
        for first_conv in ("xla", "patches_grad"):
            model = MadryCNN(pool_impl=pool, first_conv_impl=first_conv)
            variables = init_variables(model, jax.random.PRNGKey(1), (28, 28, 1))

            def loss(v, variables, y, model=model):
                logits = model.apply(variables, v)
                return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

            out[f"pool={pool},first_conv={first_conv}"] = {
                "input_grad_ms": _median_ms(jax.jit(jax.grad(loss)), x, variables, y,
                                            repeats=repeats)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--only", choices=("max_pool", "first_conv", "madry_cnn"), default=None)
    a = p.parse_args(argv)
    print(f"backend={jax.default_backend()} devices={jax.devices()} batch={a.batch} "
          f"repeats={a.repeats} (median/min ms)")
    benches = {"max_pool": bench_max_pool, "first_conv": bench_first_conv,
               "madry_cnn": bench_madry_cnn}
    for name, fn in benches.items():
        if a.only and a.only != name:
            continue
        for row, vals in fn(a.batch, a.repeats).items():
            cells = "  ".join(f"{k}={v}" for k, v in vals.items())
            print(f"{name:10s} {row:36s} {cells}")


if __name__ == "__main__":
    main()
