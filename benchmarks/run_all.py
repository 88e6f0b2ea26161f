"""Runs every benchmark of the project and regenerates benchmarks/README.md: one table, then the raw
outputs.

    python benchmarks/run_all.py [--quick] [--threads N] [--allow-load]

Each benchmark runs in its own subprocess (one at a time, so they do not compete for the CPU):
  attack_throughput.py   PGD-20 images/s: advjax vs torchattacks (eager and torch.compile) vs Foolbox;
                         APGD-CE and APGD-T on the quickstart's CNN-4C3F vs the reference AutoAttack
  attack_memory.py       peak memory of PGD-20 vs PGD-200 and of DAA at M = 100 vs 1000
  daa_overhead.py        DAA-BLOB / DAA-DGF step time relative to PGD
  train_throughput.py    PGD-AT train steps/s on the studies' models (CNN-4C3F, DAA's release CNN,
                         Madry's CNN): advjax vs a PyTorch loop and torch.compile, GFLOP/s, % sgemm
  input_pipeline.py      `advjax.data.batches` images/s
  multi_seed.py          PGD-AT training images/s with K = 1, 3, 5 seeds in one process
                         (train.seeds; sequential and vmapped)
  eval_sweep.py          an eps sweep in one `robust_accuracy` call vs one call per eps
  autoattack.py          AutoAttack (standard) on 200 images: advjax vs the reference pyautoattack
  data parallelism       one PGD-AT step of the training loop on 1, 2 and 4 forced CPU devices
                         (XLA_FLAGS=--xla_force_host_platform_device_count=N) at the same global batch.
                         The forced devices share the machine's cores, so this measures the cost of
                         the data-parallel machinery (sharding, pmean, replication), not a speed-up.
The load rule (the machine is shared; a loaded machine slows torch's threaded kernels more than
XLA's, so a ratio measured there is not a property of the libraries): run_all refuses to start, and
so to write benchmarks/README.md, when the 1-minute load average exceeds `LOAD_LIMIT` (1.5), unless
`--allow-load`, which stamps every row "loaded". Before each benchmark it waits (up to `--settle`
seconds) for the 1-minute load to fall below the limit again (a benchmark's own threads raise it), and
records the load before and after each one; rows of a benchmark that started above the limit are
stamped "loaded" too. Every benchmark with a peer runs advjax and the peer on the same number of
threads (`--threads`, default all CPUs; benchmarks/_bench.py pins the process to that many CPUs
before JAX and torch start).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

Row = Tuple[str, str, str, str]  # (benchmark, measurement, result, comparison)
StampedRow = Tuple[str, str, str, str, str]  # ... and the load before / after its benchmark
DEVICE_COUNTS = (1, 2, 4)
LOAD_LIMIT = 1.5  # the 1-minute load average above which no figure is recorded as quiet


# ------------------------------------------------------------------------------------------------
# The data-parallel worker (run as `run_all.py --devices-worker`, with XLA_FLAGS set by the parent)
# ------------------------------------------------------------------------------------------------

def devices_worker(batch: int, pgd_steps: int, repeats: int) -> None:
    """Prints the median ms per PGD-AT step of the loop's jitted step over all local devices at
    global batch `batch`."""
    import jax
    import numpy as np
    import optax

    from advjax import models, objectives, train

    devices = jax.local_devices()
    n = len(devices)
    model = models.get_model("madry_cnn")
    objective = objectives.make_objective(
        "pgd_at", model.apply, dict(eps=0.1, step_size=0.025, steps=pgd_steps))
    state = train.create_train_state(model, objective, optax.sgd(0.01, momentum=0.9),
                                     jax.random.PRNGKey(0), (28, 28, 1))
    mesh = train.make_mesh(devices)
    p_step = train.compile_step(objective, jax.random.PRNGKey(1), mesh)
    rng = np.random.default_rng(0)
    batch_np = {"image": rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32),
                "label": rng.integers(0, 10, batch).astype(np.int32)}
    rstate = train.replicate(state, mesh)

    def step():
        nonlocal rstate
        rstate, metrics = p_step(rstate, train.shard_batch(batch_np, mesh))  # host batch, as the loop
        jax.block_until_ready(metrics)

    step(), step()  # compile, warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(f"DEVICES {n} {1000 * float(np.median(times)):.1f}")


# ------------------------------------------------------------------------------------------------
# Running and parsing the benchmarks
# ------------------------------------------------------------------------------------------------

def _run(args: List[str], env=None, timeout: int = 1800) -> Tuple[str, float]:
    """Runs a command from the repository root; returns (stdout + stderr tail on failure, seconds)."""
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    text = out.stdout
    if out.returncode != 0:
        text += f"\n[exit {out.returncode}]\n" + out.stderr[-3000:]
    return text, time.perf_counter() - t0


def _md_rows(text: str) -> List[List[str]]:
    """The body rows of the Markdown tables in `text` (not their header rows), as lists of stripped
    cells."""
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or line.startswith("|---"):
            continue
        if i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            continue  # a header
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def parse_attack_throughput(text: str) -> List[Row]:
    rows = []
    n = re.search(r"the (\d+) correctly classified of the first (\d+)", text)
    apgd = (f"APGD-100 linf eps 0.1, quickstart CNN-4C3F, {n.group(1)} of {n.group(2)} FMNIST test "
            "images" if n else "APGD-100")
    for cells in _md_rows(text):
        if len(cells) == 6:  # attack, implementation, seconds, images/s, ratio, robust accuracy
            rows.append((apgd, f"{cells[0]}: {cells[1]}", f"{cells[2]} s ({cells[3]} images/s)",
                         f"{cells[4]} reference; robust accuracy {cells[5]}"))
        elif len(cells) >= 5 and cells[2]:
            rows.append(("attack throughput (PGD-20, Madry CNN)", cells[0], f"{cells[2]} images/s",
                         f"{cells[3]} torchattacks; {cells[4]} of examples equal"))
        elif cells:
            rows.append(("attack throughput (PGD-20, Madry CNN)", cells[0], cells[1], ""))
    return rows


def parse_daa_overhead(text: str) -> List[Row]:
    rows = []
    for m in re.finditer(r"^\s+(PGD|DAA-\S+.*?)\s+([\d.]+) ms/step\s+ratio to PGD\s+([\d.]+)x", text,
                         re.M):
        rows.append(("DAA overhead (one step, M = 200)", m.group(1).strip(), f"{m.group(2)} ms/step",
                     f"{m.group(3)}x PGD"))
    return rows


def parse_train_throughput(text: str) -> List[Row]:
    rows = []
    for cells in _md_rows(text):
        if len(cells) >= 7:  # model, implementation, ms/step, images/s, ratio, GFLOP/s, % sgemm
            rows.append((f"PGD-AT training ({cells[0]}, batch 128, PGD-10)", cells[1],
                         f"{cells[3]} images/s ({cells[2]} ms/step)",
                         f"{cells[4]} pytorch; {cells[5]} GFLOP/s, {cells[6]} of sgemm"))
    for m in re.finditer(r"^skipped (.*)$", text, re.M):
        rows.append(("PGD-AT training", "skipped", "", m.group(1)))
    return rows


def parse_attack_memory(text: str) -> List[Row]:
    rows = []
    for cells in _md_rows(text):
        if len(cells) >= 6:  # attack, batch, steps, XLA temp, XLA total, peak RSS
            rows.append(("attack memory", f"{cells[0]}, batch {cells[1]}, {cells[2]} steps",
                         f"peak RSS +{cells[5]} MiB", f"XLA temp {cells[3]} MiB, total "
                         f"{cells[4]} MiB"))
    return rows


def parse_input_pipeline(text: str) -> List[Row]:
    rows = []
    for m in re.finditer(r"^(.*?(?:batch \d+).*?):?\s+([\d,]+) images/s", text, re.M):
        rows.append(("input pipeline", re.sub(r"\s+", " ", m.group(1)).strip(" :"),
                     f"{m.group(2)} images/s", ""))
    return rows


def parse_multi_seed(text: str) -> List[Row]:
    rows = []
    for cells in _md_rows(text):
        if len(cells) == 5 and cells[0].isdigit():  # K, how, ms per step, images/s, vs K=1
            rows.append(("several seeds in one process (PGD-AT, CNN-4C3F 16/32, PGD-10, batch 128 "
                         "per seed)", f"K = {cells[0]}, {cells[1]}",
                         f"{cells[3]} images/s ({cells[2]} ms/step)",
                         f"{cells[4]} the single-seed images/s"))
    return rows


def parse_eval_sweep(text: str) -> List[Row]:
    rows = []
    equal = re.search(r"numbers equal: (\w+)", text)
    head = re.search(r"n = (\d+), batch \d+, (\d+) steps, eps \[([^\]]*)\]", text)
    what = (f"eps sweep (PGD-{head.group(2)} and APGD-CE-{head.group(2)} at eps "
            f"{head.group(3)}, {head.group(1)} FMNIST images)" if head else "eps sweep")
    for cells in _md_rows(text):
        if len(cells) == 3 and cells[0].startswith("one "):  # way, compilations, seconds
            rows.append((what,
                         cells[0], f"{cells[2]} s", f"compilations {cells[1]}; numbers equal: "
                         f"{equal.group(1) if equal else '?'}"))
    return rows


def parse_autoattack(text: str) -> List[Row]:
    rows = []
    head = re.search(r"AutoAttack (\w+), linf eps ([\d.]+), (\d+) Fashion-MNIST", text)
    what = (f"AutoAttack {head.group(1)} (linf {head.group(2)}, {head.group(3)} FMNIST images, "
            "small AT CNN)" if head else "AutoAttack")
    for cells in _md_rows(text):
        if len(cells) >= 3 and cells[0] in ("advjax", "reference (pyautoattack, torch)"):
            compiled = " (including compilation)" if cells[0] == "advjax" else ""
            rows.append((what, cells[0], f"{cells[1]} s{compiled}",
                         f"robust accuracy {cells[-1]}%"))
    ratio = re.search(r"speed ratio \(reference seconds / advjax seconds\): ([\d.]+)x", text)
    if ratio:
        rows.append((what, "speed ratio", f"{ratio.group(1)}x", "reference seconds / advjax's"))
    return rows


def run_device_scaling(batch: int, pgd_steps: int, repeats: int) -> Tuple[List[Row], str, float]:
    rows, raw, seconds, base = [], [], 0.0, None
    for n in DEVICE_COUNTS:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   JAX_PLATFORMS="cpu")
        text, sec = _run([sys.executable, os.path.abspath(__file__), "--devices-worker",
                          "--batch", str(batch), "--pgd-steps", str(pgd_steps),
                          "--repeats", str(repeats)], env=env)
        seconds += sec
        raw.append(f"$ XLA_FLAGS=--xla_force_host_platform_device_count={n} ...\n{text}")
        m = re.search(r"DEVICES (\d+) ([\d.]+)", text)
        if not m:
            rows.append(("data parallelism (forced CPU devices)", f"{n} devices", "failed", ""))
            continue
        ms = float(m.group(2))
        base = base or ms
        rows.append(("data parallelism (forced CPU devices, shared cores)",
                     f"{n} device{'s' if n > 1 else ''}, global batch {batch}, PGD-{pgd_steps}",
                     f"{ms:.1f} ms/step ({1000 * batch / ms:.0f} images/s)",
                     f"{ms / base:.2f}x the 1-device time"))
    return rows, "\n".join(raw), seconds


BENCHMARKS: List[Tuple[str, List[str], List[str], Callable[[str], List[Row]]]] = [
    # (script, arguments, --quick arguments, parser)
    ("attack_throughput.py", [], ["--repeats", "1", "--apgd-n", "100"], parse_attack_throughput),
    ("attack_memory.py", [], [], parse_attack_memory),
    ("daa_overhead.py", [], ["--reps", "3", "--scaling-reps", "1"], parse_daa_overhead),
    ("train_throughput.py", [], ["--repeats", "2"], parse_train_throughput),
    ("input_pipeline.py", [], [], parse_input_pipeline),
    ("multi_seed.py", [], ["--seeds", "1,3", "--repeats", "1", "--steps", "1"], parse_multi_seed),
    ("eval_sweep.py", [], ["--n", "64", "--steps", "5", "--eps", "0.05,0.1"], parse_eval_sweep),
    ("autoattack.py", ["--n", "200", "--batch", "200"], ["--n", "20", "--n-queries", "50"],
     parse_autoattack),
]


THREADED = ("attack_throughput.py", "attack_memory.py", "train_throughput.py",
            "autoattack.py")  # take --threads


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _settle(limit: float, seconds: float) -> float:
    """Waits up to `seconds` for the 1-minute load average to fall to `limit`; returns it."""
    t0 = time.monotonic()
    while os.getloadavg()[0] > limit and time.monotonic() - t0 < seconds:
        time.sleep(5)
    return os.getloadavg()[0]


def render(rows: List[StampedRow], raws: Dict[str, str], seconds: Dict[str, float],
           meta: Dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by one command (every benchmark in its own subprocess, one after another):",
        "",
        "    python benchmarks/run_all.py",
        "",
        f"Generated {meta['date']} on {meta['machine']}; backend {meta['backend']}, "
        f"{meta['cpus']} CPUs visible, {meta['threads']} threads for advjax and its peers alike. "
        f"Load average (1/5/15 min) at the start {meta['load_start']}, at the end "
        f"{meta['load_end']}; each row gives the load before and after its benchmark.",
        "",
        f"Load rule: figures are recorded only when the 1-minute load is at most {LOAD_LIMIT} "
        "(a loaded machine slows torch's threaded kernels more than XLA's, which inflates advjax's "
        "ratios). Rows stamped **loaded** were measured above it (`--allow-load`) and are not "
        "a claim about the libraries; quote no ratio from them.",
        "",
        "The forced-CPU-device rows run the jitted PGD-AT step of `advjax.train` on 1, 2 and 4 "
        "XLA host devices at the same global batch. The devices share the same cores, so this "
        "measures the cost of the data-parallel machinery (sharding, cross-device means, "
        "replication), not a speed-up."
        + (" No GPU was used for this run, so there are no GPU rows." if meta["backend"] == "cpu"
           else ""),
        "",
        "| benchmark | measurement | result | comparison | load before / after |",
        "|---|---|---:|---|---|",
    ]
    lines += [f"| {b} | {m} | {r} | {c} | {ld} |" for b, m, r, c, ld in rows]
    lines += ["", "## Raw outputs", ""]
    for name, text in raws.items():
        lines += [f"### {name} ({seconds[name]:.0f} s)", "", "```", text.rstrip(), "```", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    p.add_argument("--out", default=os.path.join(HERE, "README.md"))
    p.add_argument("--devices-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pgd-steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0,
                   help="CPUs for advjax and its peers alike (0: all)")
    p.add_argument("--allow-load", action="store_true",
                   help=f"run even when the 1-minute load exceeds {LOAD_LIMIT}; rows say 'loaded'")
    p.add_argument("--settle", type=float, default=120.0,
                   help="seconds to wait before each benchmark for the load to fall below the limit")
    args = p.parse_args()
    if args.devices_worker:
        devices_worker(args.batch, args.pgd_steps, args.repeats)
        return

    load1 = os.getloadavg()[0]
    if load1 > LOAD_LIMIT and not args.allow_load:
        sys.exit(f"run_all: the 1-minute load average is {load1:.2f} (> {LOAD_LIMIT}): figures "
                 f"measured now would not be a property of the libraries, so {args.out} is not "
                 "written. Run it on a quiet machine, or pass --allow-load to stamp every row "
                 "'loaded'.")
    import _bench
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.system()} {platform.machine()}",
            "cpus": str(os.cpu_count()), "load_start": _load(),
            "threads": str(args.threads or _bench.cpu_count())}
    env = dict(os.environ, ADVJAX_BENCH_THREADS=str(args.threads))
    rows: List[StampedRow] = []
    raws: Dict[str, str] = {}
    seconds: Dict[str, float] = {}

    def stamp(parsed, before, after):
        loaded = args.allow_load and (load1 > LOAD_LIMIT or before > LOAD_LIMIT)
        mark = f"{before:.2f} / {after:.2f}" + (" **loaded**" if loaded else "")
        return [(*r, mark) for r in parsed]

    for script, extra, quick, parse in BENCHMARKS:
        before = _settle(LOAD_LIMIT, args.settle)
        if before > LOAD_LIMIT and not args.allow_load:
            sys.exit(f"run_all: the 1-minute load rose to {before:.2f} before {script} and did not "
                     f"fall below {LOAD_LIMIT} in {args.settle:.0f} s; {args.out} is not written.")
        print(f"running {script} (load {_load()}) ...", flush=True)
        threads = ["--threads", str(args.threads)] if script in THREADED else []
        text, sec = _run([sys.executable, os.path.join(HERE, script),
                          *(quick if args.quick else extra), *threads], env=env)
        after = os.getloadavg()[0]
        raws[script], seconds[script] = f"load before {before:.2f}, after {after:.2f}\n" + text, sec
        parsed = parse(text)
        rows += stamp(parsed or [(script, "see raw output", "", "")], before, after)
    before = _settle(LOAD_LIMIT, args.settle)
    if before > LOAD_LIMIT and not args.allow_load:
        sys.exit(f"run_all: the 1-minute load rose to {before:.2f}; {args.out} is not written.")
    print("running data parallelism on 1/2/4 forced CPU devices ...", flush=True)
    dp_rows, dp_raw, dp_sec = run_device_scaling(args.batch, args.pgd_steps,
                                                 2 if args.quick else args.repeats)
    rows += stamp(dp_rows, before, os.getloadavg()[0])
    raws["data parallelism"], seconds["data parallelism"] = dp_raw, dp_sec
    meta["load_end"] = _load()
    backend = re.search(r"backend:? (\w+)", raws.get("daa_overhead.py", ""))
    meta["backend"] = backend.group(1) if backend else "cpu"
    with open(args.out, "w") as f:
        f.write(render(rows, raws, seconds, meta))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
