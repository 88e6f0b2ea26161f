"""experiments/seeded.py (the issue-15 studies' paired tests and budget plans) against
experiments/stats.py on synthetic per-example results: the counts, the seed interval and A_rob are
recomputed by hand, so a change in either module's conventions fails here, not in a report."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)

import seeded  # noqa: E402
import stats  # noqa: E402
import study  # noqa: E402


def _per_example(rng, n=400):
    """Two methods x three seeds; B's clean and attack correctness are A's with flips. The attack's
    correctness is drawn independently of the clean one, so that A_rob (both) differs from it."""
    out = {}
    for s in range(3):
        a_clean = rng.random(n) < 0.8
        a_atk = rng.random(n) < 0.6
        flip = rng.random(n) < 0.1 + 0.05 * s
        out[f"A s{s}|clean"], out[f"A s{s}|pgd"] = a_clean, a_atk
        out[f"B s{s}|clean"], out[f"B s{s}|pgd"] = a_clean ^ flip, a_atk & ~flip
    return out


def test_paired_rows_are_mcnemar_per_seed_and_the_paired_seed_interval():
    pe = _per_example(np.random.default_rng(0))
    rows = seeded.paired_rows(pe, [("A", "B")], [0, 1, 2], ["clean", "a_rob"], a_rob_over=["pgd"])
    assert [r["column"] for r in rows] == ["clean", "a_rob"]
    for r in rows:
        diffs = []
        for k, s in enumerate(range(3)):
            if r["column"] == "clean":
                ca, cb = pe[f"A s{s}|clean"], pe[f"B s{s}|clean"]
            else:  # worst case over clean and the attack, per example
                ca = pe[f"A s{s}|clean"] & pe[f"A s{s}|pgd"]
                cb = pe[f"B s{s}|clean"] & pe[f"B s{s}|pgd"]
            b, c = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
            assert (r["mcnemar"][k]["b"], r["mcnemar"][k]["c"]) == (b, c)
            assert r["mcnemar"][k]["p"] == pytest.approx(stats.mcnemar(ca, cb)["p"])
            diffs.append(ca.mean() - cb.mean())
        d = np.array(diffs)
        half = stats.t_ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
        assert r["mean_diff"] == pytest.approx(d.mean())
        assert r["ci95"] == pytest.approx((d.mean() - half, d.mean() + half))
        assert 0 < r["detectable"] < 1


def test_paired_rows_skip_missing_runs_and_one_seed_has_no_interval():
    pe = _per_example(np.random.default_rng(1))
    for k in [k for k in pe if k.startswith(("A s1", "A s2"))]:
        del pe[k]
    (row,) = seeded.paired_rows(pe, [("A", "B"), ("A", "C")], [0, 1, 2], ["clean"])
    assert row["seeds"] == 1 and row["ci95"] is None
    assert row["mean_diff"] == pytest.approx(pe["A s0|clean"].mean() - pe["B s0|clean"].mean())


def test_print_plan_sums_cpu_rates_of_budget_json(tmp_path, capsys):
    budget = {"train": {"cfg_a": {"cpu_seconds_per_epoch_60k": 360.0},
                        "cfg_b": {"cpu_seconds_per_epoch_60k": 720.0}},
              "eval": {"cpu_seconds_per_10k": 1800.0}}
    (tmp_path / "budget.json").write_text(json.dumps(budget))
    runs = seeded.expand([study.Method("A", "cfg_a"), study.Method("B", "cfg_b")], [0, 1])
    assert [m.label for m in runs] == ["A s0", "A s1", "B s0", "B s1"]
    assert runs[3].overrides == {"seed": 1}
    total = seeded.print_plan(str(tmp_path), runs, epochs=10, n=5000)
    # train 2 x 10 x (360 + 720) s, eval 4 x 900 s
    assert total == pytest.approx(2 * 10 * 1080 + 4 * 900)
    assert "total: 7.0 h of one core" in capsys.readouterr().out
