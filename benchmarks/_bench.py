"""What the benchmark scripts share: thread settings, load, timing, the sgemm rate, peak memory.

Threads. `configure_threads(n)` runs before JAX or torch is imported: it pins the process to the
first n CPUs (``os.sched_setaffinity``; XLA:CPU and torch size their thread pools by the CPUs a
process may use), turns XLA:CPU's multi-threading off for n = 1 (``--xla_cpu_multi_thread_eigen=false``,
as the studies run) and records n for `torch_threads`, which sets torch's intra-op threads to the same
n. So advjax and its peers always compute on the same number of cores. n = 0 means every CPU.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, List

_THREADS = {"n": None}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def threads_from_argv(argv: List[str] = None) -> int:
    """The value of ``--threads N`` in argv (default: $ADVJAX_BENCH_THREADS, else 0 = all CPUs)."""
    argv = sys.argv if argv is None else argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return int(os.environ.get("ADVJAX_BENCH_THREADS", "0"))


def configure_threads(n: int) -> int:
    """Restricts this process to n CPUs (0: all) for XLA and torch alike; call before importing
    JAX. Returns the thread count used."""
    if "jax" in sys.modules or "torch" in sys.modules:
        raise RuntimeError("configure_threads must run before jax / torch are imported")
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    total = len(available) if available else (os.cpu_count() or 1)
    n = total if n <= 0 else min(n, total)
    if available and n < total:
        os.sched_setaffinity(0, available[:n])
    if n == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    _THREADS["n"] = n
    return n


def threads() -> int:
    """The thread count configured by `configure_threads` (every CPU if it has not run)."""
    return _THREADS["n"] or cpu_count()


def torch_threads():
    """Imports torch with its intra-op thread count set to the configured n; returns the module."""
    import torch
    n = _THREADS["n"] or cpu_count()
    torch.set_num_threads(n)
    return torch


def load() -> str:
    """The 1 / 5 / 15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def header(what: str) -> str:
    """A first line that every benchmark prints: what, backend, threads and the load now."""
    import jax
    return (f"{what}; backend {jax.default_backend()}, {_THREADS['n'] or cpu_count()} threads "
            f"(advjax and peers alike), load {load()}")


def interleaved(runners: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, List[float]]:
    """Wall seconds of each runner over `repeats` rounds, the runners taking turns within a round
    (so that a change in the machine's load hits all of them alike). Runners are warmed up first."""
    for run in runners.values():
        run()
    times = {k: [] for k in runners}
    for _ in range(repeats):
        for k, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    return times


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> Dict[str, float]:
    """This CPU's single-precision matmul rate at the configured thread count: the best of
    `repeats` n x n x n products through XLA (jnp.dot) and through torch (torch.mm), in GFLOP/s."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    flops = 2.0 * n ** 3
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    out = {"xla": flops / best / 1e9}
    try:
        torch = torch_threads()
        at = torch.tensor(np.asarray(a))
        torch.mm(at, at)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(at, at)
            best = min(best, time.perf_counter() - t0)
        out["torch"] = flops / best / 1e9
    except ImportError:
        pass
    return out


def forward_flops(model, variables, input_shape) -> float:
    """FLOPs of one example's forward pass, from XLA's cost analysis of the model with plain layers
    (XLA convolutions: 2 x multiply-adds of the convolutions and dense layers, plus elementwise)."""
    import jax
    import jax.numpy as jnp
    fields = {f: "xla" for f in ("first_conv_impl", "conv_impl") if hasattr(model, f)}
    plain = model.clone(**fields)
    cost = jax.jit(lambda x: plain.apply(variables, x)).lower(
        jnp.zeros((1, *input_shape), jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def reset_peak_rss() -> bool:
    """Resets this process's peak resident set size (Linux: /proc/self/clear_refs, "5")."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> Dict[str, float]:
    """Current and peak resident set size of this process (VmRSS, VmHWM), MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return {"rss": out.get("VmRSS", float("nan")), "peak": out.get("VmHWM", float("nan"))}
