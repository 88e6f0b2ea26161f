"""benchmarks/run_all.py's load rule and its parsing of the benchmarks' tables (no benchmark is run:
speed is measured by the benchmarks, never by tests)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "benchmarks")


@pytest.fixture
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(BENCH, "run_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_to_write_the_record_on_a_loaded_machine(run_all, monkeypatch, tmp_path):
    out = tmp_path / "README.md"
    monkeypatch.setattr(run_all.os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    ran = []
    monkeypatch.setattr(run_all, "_run", lambda *a, **k: ran.append(a) or ("", 0.0))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(out)])
    with pytest.raises(SystemExit, match="load average is 1.60"):
        run_all.main()
    assert not out.exists() and not ran


def test_allow_load_stamps_every_row_loaded(run_all, monkeypatch, tmp_path):
    out = tmp_path / "README.md"
    monkeypatch.setattr(run_all.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    calls = []

    def fake_run(args, env=None, timeout=0):
        calls.append((args, env))
        if "--devices-worker" in args:
            return "DEVICES 1 100.0", 1.0
        return ("| model | implementation | ms/step | images/s | ratio to pytorch | GFLOP/s | % sgemm |\n"
                "|---|---|---:|---:|---:|---:|---:|\n"
                "| CNN-4C3F | advjax | 10.0 | 12800.0 | 1.50x | 50.0 | 20% |\n"), 1.0

    monkeypatch.setattr(run_all, "_run", fake_run)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(out), "--allow-load",
                                      "--threads", "1", "--settle", "0"])
    run_all.main()
    table = out.read_text().split("## Raw outputs")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows and all(r.rstrip().endswith("**loaded** |") for r in rows)
    assert "3.00 / 3.00" in rows[0]
    # Every benchmark with a peer got the same --threads; all saw it in the environment.
    scripts = [(args, env) for args, env in calls if "--devices-worker" not in args]
    assert len(scripts) == len(run_all.BENCHMARKS)
    for args, env in scripts:
        if os.path.basename(args[1]) in run_all.THREADED:
            assert args[-2:] == ["--threads", "1"]
        assert env["ADVJAX_BENCH_THREADS"] == "1"


def test_parsers_read_the_new_tables(run_all):
    train = ("| model | implementation | ms/step | images/s | ratio to pytorch | GFLOP/s | % sgemm |\n"
             "|---|---|---:|---:|---:|---:|---:|\n"
             "| DAA release CNN | torch.compile | 20.0 | 6400.0 | 1.20x | 40.0 | 18% |\n"
             "skipped CNN-4C3F(32): torch.compile: RuntimeError: boom\n")
    rows = run_all.parse_train_throughput(train)
    assert rows[0] == ("PGD-AT training (DAA release CNN, batch 128, PGD-10)", "torch.compile",
                       "6400.0 images/s (20.0 ms/step)", "1.20x pytorch; 40.0 GFLOP/s, 18% of sgemm")
    assert rows[1][1] == "skipped" and "boom" in rows[1][3]
    memory = ("| attack | batch / particles | steps | XLA temp (MiB) | XLA total (MiB) | peak RSS |\n"
              "|---|---:|---:|---:|---:|---:|\n"
              "| PGD-200, Madry CNN | 256 | 200 | 3.7 | 3.8 | 8.3 |\n")
    assert run_all.parse_attack_memory(memory) == [
        ("attack memory", "PGD-200, Madry CNN, batch 256, 200 steps", "peak RSS +8.3 MiB",
         "XLA temp 3.7 MiB, total 3.8 MiB")]


def test_parsers_read_the_apgd_multi_seed_sweep_and_autoattack_tables(run_all):
    attack = (
        "linf APGD, eps 0.1, 100 iterations, 1 restart; quickstart CNN-4C3F (committed weights), "
        "the 72 correctly classified of the first 100 Fashion-MNIST test images; ...\n"
        "| attack | implementation | seconds | images/s | ratio to reference | robust accuracy "
        "(of the attacked) |\n|---|---|---:|---:|---:|---:|\n"
        "| APGD-CE | advjax | 3.2 | 22.8 | 0.39x | 76.39% |\n"
        "| APGD-CE | reference (pyautoattack) | 1.2 | 58.9 | 1.00x | 76.39% |\n")
    rows = run_all.parse_attack_throughput(attack)
    assert rows == [
        ("APGD-100 linf eps 0.1, quickstart CNN-4C3F, 72 of 100 FMNIST test images",
         "APGD-CE: advjax", "3.2 s (22.8 images/s)", "0.39x reference; robust accuracy 76.39%"),
        ("APGD-100 linf eps 0.1, quickstart CNN-4C3F, 72 of 100 FMNIST test images",
         "APGD-CE: reference (pyautoattack)", "1.2 s (58.9 images/s)",
         "1.00x reference; robust accuracy 76.39%")]
    seeds = ("| K | how | ms per step of all K | images/s | vs K=1 |\n|---:|---|---:|---:|---:|\n"
             "| 1 | single | 300 | 426.7 | 1.00x |\n| 3 | sequential | 910 | 421.9 | 0.99x |\n")
    rows = run_all.parse_multi_seed(seeds)
    assert [r[1:] for r in rows] == [
        ("K = 1, single", "426.7 images/s (300 ms/step)", "1.00x the single-seed images/s"),
        ("K = 3, sequential", "421.9 images/s (910 ms/step)", "0.99x the single-seed images/s")]
    sweep = ("n = 64, batch 250, 5 steps, eps [0.05, 0.1], 1 device(s) (cpu)\n"
             "| way | compilations (traces) | seconds |\n|---|---|---:|\n"
             "| one call per eps | {'pgd': 4, 'apgd-ce': 4} | 30.1 |\n"
             "| one sweep call | {'pgd': 1, 'apgd-ce': 1} | 12.0 |\nnumbers equal: True\n")
    rows = run_all.parse_eval_sweep(sweep)
    assert rows[0][0] == "eps sweep (PGD-5 and APGD-CE-5 at eps 0.05, 0.1, 64 FMNIST images)"
    assert [r[1:] for r in rows] == [
        ("one call per eps", "30.1 s", "compilations {'pgd': 4, 'apgd-ce': 4}; numbers equal: True"),
        ("one sweep call", "12.0 s", "compilations {'pgd': 1, 'apgd-ce': 1}; numbers equal: True")]
    aa = ("AutoAttack standard, linf eps 0.1, 200 Fashion-MNIST test images, batch 200, ...\n"
          "| implementation | seconds | clean (%) | apgd-ce (%) | square (%) |\n|---|---:|---:|---:|---:|\n"
          "| advjax | 64.0 | 80.00 | 66.00 | 63.50 |\n"
          "| reference (pyautoattack, torch) | 87.6 | 80.00 | 66.50 | 64.00 |\n"
          "speed ratio (reference seconds / advjax seconds): 1.37x\n")
    rows = run_all.parse_autoattack(aa)
    what = "AutoAttack standard (linf 0.1, 200 FMNIST images, small AT CNN)"
    assert rows == [(what, "advjax", "64.0 s (including compilation)", "robust accuracy 63.50%"),
                    (what, "reference (pyautoattack, torch)", "87.6 s",
                     "robust accuracy 64.00%"),
                    (what, "speed ratio", "1.37x", "reference seconds / advjax's")]
