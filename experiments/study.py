"""Shared driver of the Fashion-MNIST studies (experiments/*/run.py): train, evaluate, tabulate.

A study is a list of `Method`s (a label, a config in configs/, dotted overrides) and a list of
attack specs. For every method the driver

1. trains with `advjax.train.train_and_evaluate` (the code path of `advjax train`) in
   `<workdir_root>/<label>`, resuming from the last checkpoint when the run was interrupted; a
   changed config (other overrides) starts that method's workdir afresh;
2. evaluates the trained weights with `advjax.evaluate.robust_accuracy` on the first `n` test
   images, with the study's attacks, and keeps the per-example correctness (for A_rob over a
   chosen subset of the attacks, and for paired tests between methods);
3. writes `results.json` after every method, so a study interrupted half way keeps what it finished
   and a rerun skips every method whose config and evaluation are unchanged.

Several seeds: a `Method` with `seeds=K` (or `run(..., seeds=K)` for every method, e.g. from the
`--seeds` flag that `argument_parser(..., seeds=1)` adds) trains seeds config.seed ... config.seed +
K - 1 in one process (`config.train.seeds = K`, `advjax.train`), in `<workdir_root>/<label>/seed<N>`.
Each seed is evaluated on its own and recorded as the row `"<label> seed<N>"` (per-example keys
`"<label> seed<N>|<attack>"`, for paired tests); the row `<label>` then holds the mean over seeds of
each accuracy, its sample standard deviation as `"std/<column>"`, and the list of `seeds`.

Every study runs XLA:CPU on one thread by default (`--threads 1`; 0 = XLA's default) so that two
studies can share this 2-core machine (a single-process run loses little by it, by a scratch timing
not kept in the repo, so no figure is given).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pin_threads(threads: int) -> None:
    """threads = 1: XLA:CPU computes on one thread (`--xla_cpu_multi_thread_eigen=false`); 0: XLA's
    default (all cores). Call before importing JAX."""
    if threads not in (0, 1):
        raise ValueError(f"threads must be 0 (XLA's default) or 1, got {threads}")
    if threads == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


@dataclasses.dataclass
class Method:
    """A row of a study: `configs/<config>.py` with dotted `overrides` ({"objective.beta": 3.0})."""
    label: str
    config: str
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: int = 1  # > 1: seeds config.seed ... + seeds - 1, trained in one process (train.seeds)


def seed_label(label: str, seed: int) -> str:
    """The results row of one seed of a multi-seed method."""
    return f"{label} seed{seed}"


def load_config(name: str, overrides: Optional[Dict[str, Any]] = None):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    for key, value in (overrides or {}).items():
        node, *path_, leaf = [config] + key.split(".")
        for part in path_:
            node = node[part]
        with config.ignore_type():
            node[leaf] = value
    return config


def argument_parser(study: str, *, train_limit: int, epochs: int, n: int,
                    seeds: Optional[int] = None):
    """The flags every study script shares: training subset and epochs, test images, threads,
    workdir (default workdirs/<study>); with `seeds` (its default), also --seeds, which a script
    passes on as `run(..., seeds=args.seeds)`."""
    import argparse
    p = argparse.ArgumentParser(description=f"experiments/{study}")
    p.add_argument("--train-limit", type=int, default=train_limit,
                   help="train on the first N training images")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--n", type=int, default=n, help="evaluate on the first N test images")
    p.add_argument("--threads", type=int, default=1, choices=(0, 1),
                   help="1: XLA:CPU on one thread; 0: XLA's default")
    p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", study))
    if seeds is not None:
        p.add_argument("--seeds", type=int, default=seeds,
                       help="train every method with seeds 0..K-1 in one process (train.seeds)")
    return p


def common_overrides(args) -> Dict[str, Any]:
    """Config overrides shared by a study's methods (the loop's own final evaluation: clean only)."""
    return {"data.train_limit": args.train_limit, "train.epochs": args.epochs, "eval.limit": 500}


def command_line(study: str, args: Sequence[str]) -> str:
    return shlex.join(["python", f"experiments/{study}/run.py", *args])


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_results(path: str) -> Dict[str, Any]:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save_results(path: str, results: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def train(method: Method, common: Dict[str, Any], workdir_root: str):
    """Trains `method` (resuming if possible); returns (config, workdir, info)."""
    from advjax import train as train_lib
    seeds = {"train.seeds": method.seeds} if method.seeds > 1 else {}
    config = load_config(method.config, {**common, **method.overrides, "eval.attacks": [],
                                          "train.progress": False, **seeds})
    workdir = os.path.join(workdir_root, method.label)
    digest = _digest(config.to_dict())
    stamp = os.path.join(workdir, "study_config_digest")
    if os.path.exists(stamp) and open(stamp).read() != digest:
        shutil.rmtree(workdir)  # trained under other settings: do not resume from it
    os.makedirs(workdir, exist_ok=True)
    with open(stamp, "w") as f:
        f.write(digest)
    done = os.path.join(workdir, "train_done.json")
    if os.path.exists(done):
        with open(done) as f:
            return config, workdir, json.load(f)
    t0 = time.time()
    res = train_lib.train_and_evaluate(config, workdir)
    last = {}
    first_seed_workdir = train_lib.seed_workdirs(config, workdir)[0][1]
    with open(os.path.join(first_seed_workdir, "metrics.jsonl")) as f:
        for line in f:
            last = json.loads(line)
    info = {"train_seconds": res["train_seconds"], "train_wall_seconds": time.time() - t0,
            "epochs": config.train.epochs,
            "seconds_per_epoch": res["train_seconds"] / config.train.epochs,
            "train_images": config.data.train_limit or 60000, "config_digest": digest,
            "last_logged_metrics": last}
    with open(done, "w") as f:
        json.dump(info, f, indent=1)
    return config, workdir, info


def evaluate(config, workdir: str, attacks: List[Dict[str, Any]], *, n: int, a_rob_over=(),
             seed: int = 1):
    """Accuracies (fractions) of the trained weights on the first n test images; per-example arrays.

    A_rob is the per-example worst case over clean and the attacks labelled in `a_rob_over` (the
    attacks at the training eps; mixing radii would make it meaningless).
    """
    import jax
    import numpy as np

    from advjax import data, evaluate as evaluate_lib, train as train_lib
    state, model = train_lib.restore_state(config, workdir)
    x, y = data.load_numpy(config.data.name, "test", limit=n)
    logits_fn = train_lib.eval_logits_fn(model, state)
    t0 = time.time()
    res = evaluate_lib.robust_accuracy(logits_fn, (x, y), attacks, key=jax.random.PRNGKey(seed),
                                       batch_size=min(500, n))
    out = {"n": res.n, "clean": res.clean, **{f"attack/{k}": v for k, v in res.attacks.items()},
           "eval_seconds": time.time() - t0,
           "attack_seconds": {k: round(v, 1) for k, v in res.seconds.items()}}
    if a_rob_over:
        worst = np.all(np.stack([res.correct[k] for k in ("clean", *a_rob_over)]), axis=0)
        out["a_rob"] = float(worst.mean())
    return out, res.correct


def run(study_dir: str, methods: Sequence[Method], *, common: Dict[str, Any],
        attacks: List[Dict[str, Any]], n: int, a_rob_over=(), workdir_root: str,
        only: Optional[Sequence[str]] = None, results_file: str = "results.json",
        per_example_file: str = "per_example.npz", seeds: Optional[int] = None) -> Dict[str, Any]:
    """Trains and evaluates each method; results_file and per_example_file in study_dir.

    seeds: when given, every method trains that many seeds (replacing `Method.seeds`)."""
    import numpy as np
    path = os.path.join(study_dir, results_file)
    results = load_results(path)
    per_example_path = os.path.join(study_dir, per_example_file)
    per_example = dict(np.load(per_example_path)) if os.path.exists(per_example_path) else {}
    eval_digest = _digest([attacks, n, list(a_rob_over)])
    for m in methods:
        if only and m.label not in only:
            continue
        if seeds is not None:
            m = dataclasses.replace(m, seeds=seeds)
        if m.seeds > 1:
            _run_seeds(m, common, workdir_root, attacks, n, a_rob_over, eval_digest, results,
                       per_example, path, per_example_path)
            continue
        config, workdir, info = train(m, common, workdir_root)
        prev = results.get(m.label, {})
        if prev.get("config_digest") == info["config_digest"] and \
                prev.get("eval_digest") == eval_digest:
            print(f"[{m.label}] unchanged, kept", flush=True)
            continue
        print(f"[{m.label}] trained in {info['train_seconds']:.0f} s; evaluating", flush=True)
        ev, correct = evaluate(config, workdir, attacks, n=n, a_rob_over=a_rob_over)
        results[m.label] = {"config": m.config, "overrides": m.overrides, **info, **ev,
                            "eval_digest": eval_digest}
        for k, v in correct.items():
            per_example[f"{m.label}|{k}"] = v
        save_results(path, results)
        np.savez_compressed(per_example_path, **per_example)
        print(f"[{m.label}] " + ", ".join(f"{k}={100 * v:.2f}" for k, v in ev.items()
                                          if isinstance(v, float) and k != "eval_seconds"),
              flush=True)
    return results


def _run_seeds(m: Method, common, workdir_root, attacks, n, a_rob_over, eval_digest, results,
               per_example, path, per_example_path) -> None:
    """`run` for a method with several seeds: one training process, one evaluation per seed."""
    import numpy as np

    from advjax import train as train_lib
    config, workdir, info = train(m, common, workdir_root)
    replicas = train_lib.seed_workdirs(config, workdir)
    labels = [seed_label(m.label, seed) for seed, _ in replicas]
    for (seed, seed_workdir), label in zip(replicas, labels):
        prev = results.get(label, {})
        if prev.get("config_digest") == info["config_digest"] and \
                prev.get("eval_digest") == eval_digest:
            print(f"[{label}] unchanged, kept", flush=True)
            continue
        print(f"[{label}] evaluating", flush=True)
        ev, correct = evaluate(train_lib.replica_config(config, seed), seed_workdir, attacks, n=n,
                               a_rob_over=a_rob_over)
        results[label] = {"config": m.config, "overrides": m.overrides, "seed": seed,
                          "group": m.label, **info, **ev, "eval_digest": eval_digest}
        for k, v in correct.items():
            per_example[f"{label}|{k}"] = v
        save_results(path, results)
        np.savez_compressed(per_example_path, **per_example)
        print(f"[{label}] " + ", ".join(f"{k}={100 * v:.2f}" for k, v in ev.items()
                                        if isinstance(v, float) and k != "eval_seconds"),
              flush=True)
    rows = [results[label] for label in labels]
    columns = [k for k in rows[0] if k in ("clean", "a_rob") or k.startswith("attack/")]
    summary = {"config": m.config, "overrides": m.overrides, "seeds": [s for s, _ in replicas],
               "labels": labels, **info, "eval_digest": eval_digest}
    for c in columns:
        values = np.array([r[c] for r in rows], dtype=np.float64)
        summary[c] = float(values.mean())
        summary[f"std/{c}"] = float(values.std(ddof=1))
    results[m.label] = summary
    save_results(path, results)
    print(f"[{m.label}] mean over seeds {summary['seeds']}: " + ", ".join(
        f"{c}={100 * summary[c]:.2f}+-{100 * summary['std/' + c]:.2f}" for c in columns),
        flush=True)


def markdown_table(results: Dict[str, Any], labels: Sequence[str], columns: Sequence[str], *,
                   extra: Sequence[str] = ("seconds_per_epoch",)) -> str:
    """Rows = methods, columns = accuracies in percent (and the `extra` raw fields)."""
    head = ["method"] + [c.replace("attack/", "") for c in columns] + list(extra)
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for label in labels:
        r = results.get(label)
        if r is None:
            continue
        cells = [label] + [f"{100 * r[c]:.2f}" if c in r else "" for c in columns]
        cells += [f"{r[e]:.0f}" if isinstance(r.get(e), (int, float)) else "" for e in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mcnemar(a, b) -> Dict[str, float]:
    """Exact two-sided McNemar test of paired per-example correctness arrays a, b (bool).

    Returns the discordant counts (a right & b wrong, a wrong & b right) and the binomial p-value.
    """
    import math

    import numpy as np
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    k, m = min(n01, n10), n01 + n10
    if m == 0:
        return {"a_only": n01, "b_only": n10, "p": 1.0}
    p = 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return {"a_only": n01, "b_only": n10, "p": min(1.0, p)}
