"""An eps sweep in one `robust_accuracy` call against one call per eps: compilations and wall time.

Model: the committed PGD-AT Fashion-MNIST CNN (`advjax.testing.fmnist_at`), the first `--n` test
images, PGD (`--steps` steps, step 2.5 eps / steps given as a ratio to eps) and APGD-CE (`--steps`),
at `--eps` (comma separated). The separate calls compile every attack once per eps; the sweep
compiles each attack once (eps and step sizes are traced). Compilations are counted as traces (a
Python side effect inside the traced attack), so the counts do not depend on the machine; the wall
time includes compilation (what a user waits for) and is quoted as a ratio only when the 1-minute
load was below 1.5 at the start (the benchmark's own threads raise it during the run; the load after
is printed beside). The numbers of the two ways must be equal (same keys).

    python benchmarks/eval_sweep.py                              # n = 1000, 4 eps, 20 steps
    python benchmarks/eval_sweep.py --n 64 --steps 5 --eps 0.05,0.1   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def counting(fn, traces, name):
    def attack(logits_fn, x, y, *, key, **kw):
        traces[name] = traces.get(name, 0) + 1
        return fn(logits_fn, x, y, key=key, **kw)
    return attack


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", default="0.025,0.05,0.1,0.15")
    args = p.parse_args(argv)

    import jax
    from advjax import attacks, evaluate
    from advjax.testing import fmnist_at

    eps = [float(e) for e in args.eps.split(",")]
    x, y = fmnist_at.load_split("test", args.n)
    f = fmnist_at.logits_fn()
    key = jax.random.PRNGKey(0)

    def attack_set(traces):
        e0 = eps[-1]
        return {"pgd": functools.partial(counting(attacks.pgd, traces, "pgd"), eps=e0,
                                         step_size=2.5 * e0 / args.steps, steps=args.steps),
                "apgd-ce": functools.partial(counting(attacks.apgd, traces, "apgd-ce"), eps=e0,
                                             steps=args.steps)}

    load0 = os.getloadavg()[0]
    traces_sep: dict = {}
    t0 = time.perf_counter()
    separate = [evaluate.robust_accuracy(f, (x, y), attack_set(traces_sep), key=key, eps=e,
                                         batch_size=args.batch) for e in eps]
    t_sep = time.perf_counter() - t0
    traces_sweep: dict = {}
    t0 = time.perf_counter()
    sweep = evaluate.robust_accuracy(f, (x, y), attack_set(traces_sweep), key=key, eps=eps,
                                     batch_size=args.batch)
    t_sweep = time.perf_counter() - t0
    load1 = os.getloadavg()[0]

    print(f"n = {len(x)}, batch {args.batch}, {args.steps} steps, eps {eps}, "
          f"{jax.local_device_count()} device(s) ({jax.default_backend()})")
    print(sweep.markdown("accuracy (%)"))
    same = all(s.attacks == r.attacks for s, r in zip(separate, sweep))
    print(f"| way | compilations (traces) | seconds |\n|---|---|---:|\n"
          f"| one call per eps | {traces_sep} | {t_sep:.1f} |\n"
          f"| one sweep call | {traces_sweep} | {t_sweep:.1f} |")
    print(f"numbers equal: {same}")
    print(f"1-minute load before / after: {load0:.2f} / {load1:.2f}")
    if load0 < 1.5:
        print(f"speed-up of the sweep: {t_sep / t_sweep:.2f}x")
    else:
        print("speed-up not quoted: the machine was loaded at the start (load >= 1.5)")
    if not same:
        raise SystemExit("the sweep's numbers differ from the separate calls")


if __name__ == "__main__":
    main()
