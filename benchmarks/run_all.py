"""Runs every benchmark of the project and regenerates benchmarks/README.md: one table, then the raw
outputs.

    python benchmarks/run_all.py [--quick]

Each benchmark runs in its own subprocess (one at a time, so they do not compete for the CPU):
  attack_throughput.py   PGD-20 images/s: advjax vs torchattacks vs Foolbox
  daa_overhead.py        DAA-BLOB / DAA-DGF step time relative to PGD
  train_throughput.py    PGD-AT train steps/s: advjax vs a PyTorch loop
  input_pipeline.py      `advjax.data.batches` images/s
  data parallelism       one PGD-AT step of the training loop on 1, 2 and 4 forced CPU devices
                         (XLA_FLAGS=--xla_force_host_platform_device_count=N) at the same global batch.
                         The forced devices share the machine's cores, so this measures the cost of
                         the data-parallel machinery (sharding, pmean, replication), not a speed-up.
The table records the backend, the CPU count and the load average (os.getloadavg) at the start and
end, since other jobs on a shared machine move the numbers.
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

Row = Tuple[str, str, str, str]  # (benchmark, measurement, result, comparison)
DEVICE_COUNTS = (1, 2, 4)


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
    """The body rows of the Markdown tables in `text`, as lists of stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] != "implementation":
                rows.append(cells)
    return rows


def parse_attack_throughput(text: str) -> List[Row]:
    rows = []
    for cells in _md_rows(text):
        if len(cells) >= 5 and cells[2]:
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
    ratio = re.search(r"ratio advjax / pytorch: ([\d.]+)x", text)
    for cells in _md_rows(text):
        if len(cells) >= 3:
            cmp = f"{ratio.group(1)}x pytorch" if (ratio and cells[0] == "advjax") else ""
            rows.append(("PGD-AT training (Madry CNN, batch 128, PGD-10)", cells[0],
                         f"{cells[2]} images/s ({cells[1]} ms/step)", cmp))
    return rows


def parse_input_pipeline(text: str) -> List[Row]:
    rows = []
    for m in re.finditer(r"^(.*?(?:batch \d+).*?):?\s+([\d,]+) images/s", text, re.M):
        rows.append(("input pipeline", re.sub(r"\s+", " ", m.group(1)).strip(" :"),
                     f"{m.group(2)} images/s", ""))
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
    ("attack_throughput.py", [], ["--repeats", "1"], parse_attack_throughput),
    ("daa_overhead.py", [], ["--reps", "3", "--scaling-reps", "1"], parse_daa_overhead),
    ("train_throughput.py", [], ["--repeats", "2"], parse_train_throughput),
    ("input_pipeline.py", [], [], parse_input_pipeline),
]


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def render(rows: List[Row], raws: Dict[str, str], seconds: Dict[str, float], meta: Dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by one command (every benchmark in its own subprocess, one after another):",
        "",
        "    python benchmarks/run_all.py",
        "",
        f"Generated {meta['date']} on {meta['machine']}; backend {meta['backend']}, "
        f"{meta['cpus']} CPUs visible. Load average (1/5/15 min) at the start {meta['load_start']}, "
        f"at the end {meta['load_end']}: the machine is shared, so absolute numbers move with the "
        "load; the ratios come from interleaved runs in one process and are steadier.",
        "",
        "The forced-CPU-device rows run the jitted PGD-AT step of `advjax.train` on 1, 2 and 4 "
        "XLA host devices at the same global batch. The devices share the same cores, so this "
        "measures the cost of the data-parallel machinery (sharding, cross-device means, "
        "replication), not a speed-up. No GPU was lent for this run, so there are no GPU rows.",
        "",
        "| benchmark | measurement | result | comparison |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {b} | {m} | {r} | {c} |" for b, m, r, c in rows]
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
    args = p.parse_args()
    if args.devices_worker:
        devices_worker(args.batch, args.pgd_steps, args.repeats)
        return

    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.system()} {platform.machine()}",
            "cpus": str(os.cpu_count()), "load_start": _load()}
    rows: List[Row] = []
    raws: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    for script, extra, quick, parse in BENCHMARKS:
        print(f"running {script} ...", flush=True)
        text, sec = _run([sys.executable, os.path.join(HERE, script),
                          *(quick if args.quick else extra)])
        raws[script], seconds[script] = text, sec
        parsed = parse(text)
        rows += parsed or [(script, "see raw output", "", "")]
    print("running data parallelism on 1/2/4 forced CPU devices ...", flush=True)
    dp_rows, dp_raw, dp_sec = run_device_scaling(args.batch, args.pgd_steps,
                                                 2 if args.quick else args.repeats)
    rows += dp_rows
    raws["data parallelism"], seconds["data parallelism"] = dp_raw, dp_sec
    meta["load_end"] = _load()
    backend = re.search(r"backend:? (\w+)", raws.get("daa_overhead.py", ""))
    meta["backend"] = backend.group(1) if backend else "cpu"
    with open(args.out, "w") as f:
        f.write(render(rows, raws, seconds, meta))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
