"""AutoAttack wall time: advjax (`advjax.evaluate.autoattack`) vs the reference implementation
(`pyautoattack`, PyTorch), in one process, on identical weights and images.

The model is `advjax.testing.fmnist_at` (a small CNN adversarially trained on Fashion-MNIST, committed
weights; PyTorch twin by `advjax.testing.torch_twins`), the images the first `--n` of the
Fashion-MNIST test split, the threat model linf eps 0.1, the standard version (APGD-CE, APGD-T,
FAB-T, Square with 5000 queries), batch `--batch`. Each implementation runs the whole cascade once;
the time includes advjax's compilation (what a user waits for). Robust accuracy after each stage is
printed beside the time, so the speed is for the same evaluation.

The machine may be shared: the 1-minute load average is recorded before and after, and the speed
ratio is printed only when it was below 1.5 at the start (a loaded machine moves the numbers, and
PyTorch's threads lose more to other jobs than XLA's; the benchmark's own threads raise the load
during the run, so the load after is only recorded). advjax and torch run on `--threads` CPUs alike
(benchmarks/_bench.py; default: every CPU visible).

    python benchmarks/autoattack.py                       # the benchmark (n = 1000)
    python benchmarks/autoattack.py --n 20 --n-queries 50 # a seconds-long smoke run
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

_bench.configure_threads(_bench.threads_from_argv())

import argparse  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EPS = 0.1


def run_advjax(x, y, args):
    import jax
    from advjax import evaluate
    from advjax.testing import fmnist_at
    f = fmnist_at.logits_fn()
    stages = evaluate.autoattack_stages("linf", EPS, args.version, n_queries=args.n_queries)
    t0 = time.perf_counter()
    res = evaluate.autoattack(f, (x, y), norm="linf", eps=EPS, version=args.version,
                              key=jax.random.PRNGKey(0), batch_size=args.batch, stages=stages,
                              warn=False)
    seconds = time.perf_counter() - t0
    return seconds, {"clean": res.clean, **res.stages}, res.seconds


def run_reference(x, y, args):
    import torch
    import pyautoattack
    from advjax.testing import fmnist_at, torch_twins
    _bench.torch_threads()
    tm = fmnist_at.torch_model()
    adversary = pyautoattack.AutoAttack(tm, norm="Linf", eps=EPS, version=args.version, seed=0,
                                        device="cpu")
    adversary.square.n_queries = args.n_queries
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("auto-attack")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    xt, yt = torch_twins.to_nchw(x), torch.tensor(y, dtype=torch.long)
    t0 = time.perf_counter()
    adversary.run_standard_evaluation(xt, yt, batch_size=args.batch)
    seconds = time.perf_counter() - t0
    logger.removeHandler(handler)
    stages, stage_seconds, last = {}, {}, 0.0
    for line in lines:
        m = re.match(r"initial accuracy: ([0-9.]+)%", line)
        if m:
            stages["clean"] = float(m.group(1)) / 100
        m = re.match(r"robust accuracy after ([A-Z-]+): ([0-9.]+)% \(total time ([0-9.]+) s\)",
                     line)
        if m:
            stages[m.group(1).lower()] = float(m.group(2)) / 100
            stage_seconds[m.group(1).lower()] = float(m.group(3)) - last
            last = float(m.group(3))
    return seconds, stages, stage_seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--n-queries", type=int, default=5000, help="Square's queries (standard: 5000)")
    p.add_argument("--version", default="standard", choices=["standard", "plus"])
    p.add_argument("--threads", type=int, default=0,
                   help="CPUs for advjax and torch alike (0: all)")
    args = p.parse_args()

    import jax
    from advjax.testing import fmnist_at
    x, y = fmnist_at.load_split("test", args.n)
    load_before = os.getloadavg()[0]
    ours = run_advjax(x, y, args)
    theirs = None
    try:
        theirs = run_reference(x, y, args)
    except ImportError as e:
        print(f"reference skipped: {e} (pip install --no-deps pyautoattack)")
    load_after = os.getloadavg()[0]

    print(f"AutoAttack {args.version}, linf eps {EPS}, {args.n} Fashion-MNIST test images, batch "
          f"{args.batch}, Square {args.n_queries} queries; advjax on {jax.default_backend()} "
          f"({os.cpu_count()} CPUs), {_bench.threads()} threads for advjax and torch; 1-min load "
          f"{load_before:.2f} before, {load_after:.2f} after")
    names = list(ours[1])
    print("| implementation | seconds | " + " | ".join(f"{k} (%)" for k in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for label, res in (("advjax", ours), ("reference (pyautoattack, torch)", theirs)):
        if res is None:
            continue
        accs = " | ".join(f"{100 * res[1][k]:.2f}" if k in res[1] else "n/a" for k in names)
        print(f"| {label} | {res[0]:.1f} | {accs} |")
    print("seconds per stage: advjax " + ", ".join(f"{k} {v:.1f}" for k, v in ours[2].items()))
    if theirs is not None:
        print("seconds per stage: reference " +
              ", ".join(f"{k} {v:.1f}" for k, v in theirs[2].items()))
        if load_before >= 1.5:
            print(f"speed ratio not claimed: the 1-minute load was {load_before:.2f} at the start "
                  "(>= 1.5); rerun on a quiet machine")
        else:
            print(f"speed ratio (reference seconds / advjax seconds): {theirs[0] / ours[0]:.2f}x")


if __name__ == "__main__":
    main()
