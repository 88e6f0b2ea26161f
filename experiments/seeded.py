"""Seeds, paired tests and budget plans for the issue-15 studies (adt_fmnist, dro_fmnist, ro_fmnist).

On top of `study.py` (train, evaluate, resume): every compared method runs on several seeds (the
label "<method> s<seed>", config override {"seed": seed}: initialization, data order and attack keys
all change), and the report pairs methods per seed on the same test images:

  * per seed: the exact McNemar test on the per-example correctness (`stats.mcnemar`);
  * over seeds: the mean difference with its 95 % interval (`stats.seed_difference`);
  * the smallest difference the run could detect (`stats.detectable_difference`, n test images and
    the observed discordant fraction, alpha 0.05, power 0.8).

`stats` (experiments/stats.py, the shared statistics helper) is imported only when a report is
written, so training runs without it; `--report-only` rewrites a report from the saved results.

Budget: `time_slice` times a few training steps of one config (after compilation) and
`time_eval` the evaluation of a small slice, in wall time and in this process's CPU time (with one
XLA thread about the wall time on an idle core); `write_budget` keeps them in the study's
budget.json and `print_plan` turns them into the hours of a study's whole plan (`--plan`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import study  # noqa: E402


def seed_label(label: str, seed: int) -> str:
    return f"{label} s{seed}"


def expand(methods: Sequence[study.Method], seeds: Sequence[int]) -> List[study.Method]:
    """One study.Method per (method, seed), the seed as a config override."""
    return [study.Method(seed_label(m.label, s), m.config, {**m.overrides, "seed": int(s)})
            for m in methods for s in seeds]


def add_seed_arguments(p, default=(0, 1, 2)):
    p.add_argument("--seeds", type=int, nargs="+", default=list(default),
                   help="seeds of every compared method (at least 3 for a comparison)")
    p.add_argument("--only", nargs="*", help="run only these methods (labels without the seed)")
    p.add_argument("--report-only", action="store_true",
                   help="no training: rewrite the report from the saved results")
    p.add_argument("--plan", action="store_true",
                   help="print the plan (runs, estimated wall time from budget.json) and exit")
    p.add_argument("--results-dir", default=None,
                   help="where results, tables and figures go (default: the study's folder)")
    return p


def train_images(args) -> str:
    return (f"the first {args.train_limit:,} training images" if args.train_limit
            else "all 60k training images")


def load_load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------------
# Per-example results and paired comparisons
# ------------------------------------------------------------------------------------------------

def load_per_example(study_dir: str, name: str = "per_example.npz") -> Dict[str, Any]:
    import numpy as np
    path = os.path.join(study_dir, name)
    return dict(np.load(path)) if os.path.exists(path) else {}


def correct(per_example: Dict[str, Any], label: str, column: str,
            a_rob_over: Sequence[str] = ()) -> Optional[Any]:
    """Per-example correctness of `label` on `column` ("clean", an attack label, or "a_rob": the
    worst case over clean and `a_rob_over`); None if it was not evaluated."""
    import numpy as np
    keys = ["clean", *a_rob_over] if column == "a_rob" else [column.replace("attack/", "")]
    arrays = [per_example.get(f"{label}|{k}") for k in keys]
    if any(a is None for a in arrays):
        return None
    return np.all(np.stack([np.asarray(a, bool) for a in arrays]), axis=0)


def paired_rows(per_example, pairs: Sequence[Tuple[str, str]], seeds: Sequence[int],
                columns: Sequence[str], a_rob_over: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """For each (method A, method B) and column: per-seed accuracies and McNemar tests, the mean
    difference A - B over seeds with its 95 % interval, and the detectable difference."""
    import stats  # experiments/stats.py, the shared helper (imported only for a report)
    rows = []
    for a, b in pairs:
        for col in columns:
            acc_a, acc_b, tests, disc, n, used = [], [], [], [], None, []
            for s in seeds:
                ca = correct(per_example, seed_label(a, s), col, a_rob_over)
                cb = correct(per_example, seed_label(b, s), col, a_rob_over)
                if ca is None or cb is None:
                    continue
                n = len(ca)
                acc_a.append(float(ca.mean()))
                acc_b.append(float(cb.mean()))
                t = stats.mcnemar(ca, cb)
                tests.append(t)
                used.append(s)
                disc.append((t["b"] + t["c"]) / n)
            if not tests:
                continue
            row = {"a": a, "b": b, "column": col, "seeds": len(tests), "seed_list": used, "n": n,
                   "acc_a": acc_a, "acc_b": acc_b,
                   "mcnemar": [{k: t[k] for k in ("p", "b", "c")} for t in tests]}
            if len(tests) >= 2:
                d = stats.seed_difference(dict(zip(used, acc_a)), dict(zip(used, acc_b)))
                row["mean_diff"], row["ci95"] = float(d["mean"]), tuple(map(float, d["ci95"]))
            else:
                row["mean_diff"], row["ci95"] = acc_a[0] - acc_b[0], None
            row["detectable"] = float(stats.detectable_difference(
                n, statistics.fmean(disc), alpha=0.05, power=0.8))
            rows.append(row)
    return rows


def paired_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """The paired comparisons as a table: accuracy in %, differences in points."""
    head = ("| A | B | column | seeds | A (mean) | B (mean) | A - B | 95 % CI over seeds | "
            "McNemar p per seed | detectable |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        ci = "" if r["ci95"] is None else f"[{100 * r['ci95'][0]:+.2f}, {100 * r['ci95'][1]:+.2f}]"
        ps = ", ".join(f"{t['p']:.2g}" for t in r["mcnemar"])
        lines.append(
            f"| {r['a']} | {r['b']} | {r['column'].replace('attack/', '')} | {r['seeds']} | "
            f"{100 * statistics.fmean(r['acc_a']):.2f} | {100 * statistics.fmean(r['acc_b']):.2f} | "
            f"{100 * r['mean_diff']:+.2f} | {ci} | {ps} | {100 * r['detectable']:.2f} |")
    return "\n".join(lines) + "\n"


def seed_mean_table(results: Dict[str, Any], labels: Sequence[str], seeds: Sequence[int],
                    columns: Sequence[str]) -> str:
    """Rows = methods, cells = mean (min-max) over the seeds present, in %; and the seed count."""
    head = ["method", "seeds"] + [c.replace("attack/", "") for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|---:" + "|---:" * len(columns) + "|"]
    for label in labels:
        rs = [results[seed_label(label, s)] for s in seeds if seed_label(label, s) in results]
        if not rs:
            continue
        cells = [label, str(len(rs))]
        for c in columns:
            vals = [100 * r[c] for r in rs if c in r]
            if not vals:
                cells.append("")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.2f}")
            else:
                cells.append(f"{statistics.fmean(vals):.2f} ({min(vals):.1f}-{max(vals):.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def try_paired_report(per_example, pairs, seeds, columns, a_rob_over=()) -> Tuple[str, list]:
    """(markdown, rows) of the paired comparisons, or a note if experiments/stats.py is missing."""
    try:
        rows = paired_rows(per_example, pairs, seeds, columns, a_rob_over)
    except ImportError as e:
        return (f"Paired tests not computed: {e} (experiments/stats.py, the shared statistics "
                "helper, is needed; rerun with --report-only once it is there).\n"), []
    return paired_markdown(rows), rows


# ------------------------------------------------------------------------------------------------
# Budget: time a slice, plan a study
# ------------------------------------------------------------------------------------------------

def _watch_metrics(path: str, marks: list, stop) -> None:
    """Appends (wall time, process CPU time) each time metrics.jsonl gains a line (polled)."""
    seen = 0
    while not stop.is_set():
        if os.path.exists(path):
            with open(path) as f:
                lines = sum(1 for line in f if line.strip())
            while seen < lines:
                marks.append((time.time(), time.process_time()))
                seen += 1
        stop.wait(0.1)


def time_slice(config: str, overrides: Optional[Dict[str, Any]] = None, *, steps: int = 20,
               windows: int = 2) -> Dict[str, Any]:
    """Times `windows` windows of `steps` training steps of configs/<config>.py (with `overrides`)
    after a first window of `steps` that includes compilation.

    Returns, per epoch of 60,000 images: "seconds_per_epoch_60k" from the wall time of the timed
    windows (inflated by whatever else runs on the machine; the load average is recorded) and
    "cpu_seconds_per_epoch_60k" from this process's CPU time over the same windows (all its
    threads; with `--threads 1` about the wall time on an idle core, so comparable across loads).
    """
    import threading
    from advjax import train as train_lib
    base = study.load_config(config, overrides)
    bs = base.train.batch_size
    ov = {**(overrides or {}), "data.train_limit": bs * steps * (windows + 1), "train.epochs": 1,
          "train.log_every": steps, "train.checkpoint_every_steps": 0, "train.progress": False,
          "eval.attacks": [], "eval.limit": 100, "optim.decay_epochs": ()}
    cfg = study.load_config(config, ov)
    load_before = load_load()
    with tempfile.TemporaryDirectory(prefix="time_slice_") as workdir:
        marks: list = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_metrics,
                                   args=(os.path.join(workdir, "metrics.jsonl"), marks, stop),
                                   daemon=True)
        watcher.start()
        t0 = time.time()
        try:
            train_lib.train_and_evaluate(cfg, workdir)
        finally:
            time.sleep(0.3)
            stop.set()
            watcher.join()
        wall = time.time() - t0
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            logged = [json.loads(line) for line in f if line.strip()]
    timed = [m["images_per_sec"] for m in logged[1:]]
    ips = statistics.median(timed) if timed else float("nan")
    cpu = None
    if len(marks) >= 2:
        images = bs * steps * (len(marks) - 1)
        cpu = (marks[-1][1] - marks[0][1]) / images * 60000
    return {"config": config, "overrides": overrides or {}, "batch_size": bs, "steps": steps,
            "timed_windows": len(timed), "images_per_sec": ips,
            "seconds_per_epoch_60k": 60000 / ips, "cpu_seconds_per_epoch_60k": cpu,
            "first_window_images_per_sec": logged[0]["images_per_sec"] if logged else None,
            "wall_seconds": wall, "load_before": load_before, "load_after": load_load(),
            "last_metrics": {k: v for k, v in (logged[-1] if logged else {}).items()
                             if isinstance(v, (int, float))}}


def time_eval(config: str, attacks: List[Dict[str, Any]], *, n: int = 250) -> Dict[str, Any]:
    """Seconds to evaluate `attacks` on the 10,000 test images with an untrained model of
    configs/<config> (attack cost does not depend on the weights). `robust_accuracy` compiles each
    attack once per call, so it runs on n images (one batch) and on 2 n (two batches of n): the
    difference is the per-image cost, the rest the compilation; seconds_per_10k = compilation +
    10,000 x per-image cost (wall, and this process's CPU time)."""
    import jax
    from advjax import data, evaluate as evaluate_lib, models
    cfg = study.load_config(config)
    model = models.get_model(cfg.model.name, **{k: v for k, v in cfg.model.items()
                                                if k != "name"})
    x, y = data.load_numpy(cfg.data.name, "test", limit=2 * n)
    variables = models.init_variables(model, jax.random.PRNGKey(0), x.shape[1:])
    logits_fn = lambda z: model.apply(variables, z, train=False)
    out = {}
    for m in (n, 2 * n):
        t0, c0 = time.time(), time.process_time()
        res = evaluate_lib.robust_accuracy(logits_fn, (x[:m], y[:m]), attacks,
                                           key=jax.random.PRNGKey(1), batch_size=n)
        out[m] = (time.time() - t0, time.process_time() - c0, res.seconds)
    per_image = [(out[2 * n][i] - out[n][i]) / n for i in (0, 1)]
    compile_ = [out[n][i] - n * per_image[i] for i in (0, 1)]
    return {"config": config, "n": n, "seconds_per_10k": compile_[0] + 10000 * per_image[0],
            "cpu_seconds_per_10k": compile_[1] + 10000 * per_image[1],
            "compile_seconds": compile_[0], "compile_cpu_seconds": compile_[1],
            "per_attack_seconds_2n": {k: round(v, 2) for k, v in out[2 * n][2].items()},
            "load": load_load()}


def write_budget(study_dir: str, methods: Sequence[study.Method], eval_config: str,
                 attacks: List[Dict[str, Any]], *, steps: int = 20, eval_n: int = 250,
                 common: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Times one slice per distinct config of `methods` (their first overrides) and the evaluation,
    and writes <study_dir>/budget.json ({"train": {config: time_slice}, "eval": time_eval}).
    steps = 0 re-times the evaluation only."""
    path = os.path.join(study_dir, "budget.json")
    budget = json.load(open(path)) if os.path.exists(path) else {"train": {}}
    seen = set()
    for m in (methods if steps else []):
        if m.config in seen:
            continue
        seen.add(m.config)
        ov = {k: v for k, v in {**(common or {}), **m.overrides}.items() if k != "seed"}
        print(f"[budget] timing {m.config} ({steps} steps after a compiled window)", flush=True)
        budget["train"][m.config] = time_slice(m.config, ov, steps=steps)
        t = budget["train"][m.config]
        print(f"[budget] {m.config}: {t['seconds_per_epoch_60k']:.0f} s wall, "
              f"{t['cpu_seconds_per_epoch_60k']:.0f} s CPU per epoch of 60k "
              f"(load {t['load_after']})", flush=True)
        with open(path, "w") as f:
            json.dump(budget, f, indent=1)
    print(f"[budget] timing the evaluation ({eval_n} and {2 * eval_n} test images)", flush=True)
    budget["eval"] = time_eval(eval_config, attacks, n=eval_n)
    budget["threads"] = os.environ.get("XLA_FLAGS", "")
    with open(path, "w") as f:
        json.dump(budget, f, indent=1)
    return budget


def print_plan(study_dir: str, runs: Sequence[study.Method], epochs: int, n: int) -> float:
    """Prints every run with its estimated training and evaluation hours (budget.json's CPU-time
    rates: about the wall time of a one-thread run on an idle core; two runs share the two cores)."""
    path = os.path.join(study_dir, "budget.json")
    budget = json.load(open(path)) if os.path.exists(path) else {}
    print(f"{len(runs)} training runs of {epochs} epochs (60k images each), eval on {n} images:")
    total = 0.0
    nan = float("nan")
    for m in runs:
        b = budget.get("train", {}).get(m.config) or {}
        sec = epochs * (b.get("cpu_seconds_per_epoch_60k") or nan)
        ev = (budget.get("eval", {}).get("cpu_seconds_per_10k") or nan) * n / 10000
        total += sec + ev
        print(f"  {m.label:32s} {m.config:28s} train {sec / 3600:6.2f} h  eval {ev / 3600:5.2f} h")
    print(f"total: {total / 3600:.1f} h of one core; {total / 7200:.1f} h on both cores "
          f"(two runs at a time, --threads 1)")
    return total
