"""Peak memory of the attacks: PGD at 20 vs 200 steps, DAA-BLOB at M = 100 vs 1000 particles.

    python benchmarks/attack_memory.py [--threads N] [--batch 256] [--daa-steps 10]

An iterative attack keeps only its current iterate (and, for APGD, the best point) between steps:
`lax.fori_loop` does not store the iterates, so its memory must not grow with the number of steps.
DAA's interaction adds an M x M Gram / kernel matrix per step (4 MB at M = 1000 in float32) next to
the M images and their gradients, so its memory grows with M, not with the steps.

Each configuration runs in a fresh subprocess (so no allocator cache is shared) and reports:
  XLA temp       the compiled program's scratch memory (`compiled.memory_analysis()`:
                 temp_size_in_bytes), deterministic for a given program and backend;
  XLA total      arguments + outputs + temp of the compiled program;
  peak RSS       the process's peak resident memory while the compiled attack runs (Linux VmHWM,
                 reset just before the run), minus the resident memory before it: what the run
                 allocated on top of the model, the inputs and the compiler's leftovers.
Rows:
  PGD-20, PGD-200        `advjax.attacks.pgd` (linf, eps 0.3, step 0.01) on the Madry CNN, batch
                         `--batch`; the two must be equal within noise.
  DAA-BLOB, M = 100/1000 `advjax.attacks.daa_blob` (eps 0.1, step 0.01, c = 1, `--daa-steps`
                         steps) on the DAA paper's Fashion-MNIST CNN (`daa_cnn`), M particles.
"""

from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

_bench.configure_threads(_bench.threads_from_argv())

import argparse  # noqa: E402
import json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MIB = 1024.0 ** 2


def worker(kind: str, n: int, steps: int) -> dict:
    """Compiles and runs one attack; returns its memory figures (MiB)."""
    import jax
    import numpy as np

    from advjax import attacks, models

    name = "madry_cnn" if kind == "pgd" else "daa_cnn"
    model = models.get_model(name)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.random((n, 28, 28, 1), dtype=np.float32))
    y = jax.numpy.asarray(rng.integers(0, 10, n).astype(np.int32))
    f = lambda z: model.apply(variables, z)  # noqa: E731
    if kind == "pgd":
        attack = lambda xx, yy: attacks.pgd(f, xx, yy, eps=0.3, step_size=0.01,  # noqa: E731
                                            steps=steps, random_start=False)
    else:
        attack = lambda xx, yy: attacks.daa_blob(f, xx, yy, key=jax.random.PRNGKey(1),  # noqa
                                                 eps=0.1, step_size=0.01, steps=steps, c=1.0)
    compiled = jax.jit(attack).lower(x, y).compile()
    mem = compiled.memory_analysis()
    out = {}
    if mem is not None:
        out["xla_temp"] = mem.temp_size_in_bytes / MIB
        out["xla_total"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                            + mem.temp_size_in_bytes) / MIB
    before = _bench.rss_mib()["rss"]
    out["rss_reset"] = _bench.reset_peak_rss()
    jax.block_until_ready(compiled(x, y))
    out["peak_rss"] = _bench.rss_mib()["peak"] - before
    return out


CONFIGS = (("PGD-20, Madry CNN", "pgd", None, 20), ("PGD-200, Madry CNN", "pgd", None, 200),
           ("DAA-BLOB, M = 100, DAA CNN", "daa", 100, None),
           ("DAA-BLOB, M = 1000, DAA CNN", "daa", 1000, None))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="CPUs (0: all)")
    p.add_argument("--batch", type=int, default=256, help="PGD batch")
    p.add_argument("--daa-steps", type=int, default=10)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, n, steps = args.worker
        print("RESULT " + json.dumps(worker(kind, int(n), int(steps))))
        return

    print(_bench.header("Peak memory of the attacks (one fresh process per row)"))
    print("| attack | batch / particles | steps | XLA temp (MiB) | XLA total (MiB) | "
          "peak RSS during the run (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, kind, m, steps in CONFIGS:
        n = args.batch if m is None else m
        steps = args.daa_steps if steps is None else steps
        cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
               "--worker", kind, str(n), str(steps)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"| {label} | {n} | {steps} | failed: {proc.stderr.strip().splitlines()[-1:]} "
                  "| | |")
            continue
        r = json.loads(line[0][len("RESULT "):])
        rss = f"{r['peak_rss']:.1f}" if r["rss_reset"] else "n/a (no clear_refs)"
        print(f"| {label} | {n} | {steps} | {r.get('xla_temp', float('nan')):.1f} | "
              f"{r.get('xla_total', float('nan')):.1f} | {rss} |", flush=True)
    print(f"load at the end {_bench.load()}")


if __name__ == "__main__":
    main()
