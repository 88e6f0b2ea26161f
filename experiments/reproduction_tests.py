"""The "test" column of experiments/REPRODUCTION.md, recomputed from the studies' committed outputs.

For every compared pair of the studies as they stand (per-example correctness in the studies'
*.npz files), the paired McNemar test, the difference and the smallest difference the test could
detect at that n (`experiments/stats.py`); for the UDR toy problem (3 seeds, accuracies only) the
mean difference over seeds with its 95% t interval; for TA-MOO (no per-example results were saved)
an unpaired two-proportion z-test on the 200 images. Writes experiments/reproduction_tests.md.

    python experiments/reproduction_tests.py
"""

from __future__ import annotations

import math
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stats  # noqa: E402


def _load(path):
    return dict(np.load(os.path.join(HERE, path)))


def worst(z, keys):
    return np.all(np.stack([z[k] for k in keys]), axis=0)


def pair_row(rid, what, a_label, b_label, a, b):
    m = stats.mcnemar(a, b)
    det = stats.detectable_difference(m["n"], max(m["p_discordant"], 1e-9))
    return (f"| {rid} | {what} | {a_label} vs {b_label} | {100 * m['accuracy_a']:.1f} vs "
            f"{100 * m['accuracy_b']:.1f} | {100 * m['difference']:+.1f} | {m['b']} / {m['c']} | "
            f"{m['p']:.2g} | {m['n']} | {'n/a' if math.isnan(det) else f'{100 * det:.1f}'} |")


def daa_rows():
    z = _load("daa_fmnist/standin/per_restart.npz")
    rows = []
    for loss, tags in (("ce", ["ce/r0", "ce/r1"]), ("cw", ["cw/r0"])):
        pgd = worst(z, [f"{t}|pgd/{loss}" for t in tags])
        for name, title in (("daa_blob", "DAA-BLOB"), ("daa_dgf", "DAA-DGF"),
                            ("mim", "Momentum PGD"), ("rand_fgsm", "Rand+FGSM")):
            a = worst(z, [f"{t}|{name}/{loss}" for t in tags])
            rows.append(pair_row(f"DAA-{loss}-{name}", f"stand-in, {loss.upper()}, "
                                 f"{len(tags)} restart(s)", title, "PGD", a, pgd))
    for name, title in (("daa_blob", "DAA-BLOB"), ("daa_dgf", "DAA-DGF")):
        rows.append(pair_row(f"DAA-ce-{name}-r0", "stand-in, CE, single run (restart 0)", title,
                             "PGD", z[f"ce/r0|{name}/ce"], z["ce/r0|pgd/ce"]))
    return rows


ADT_ATTACKS = ["clean", "fgsm", "pgd-20", "pgd-100", "mim-20", "cw-30", "exp"]


def adt_rows():
    z = _load("adt_fmnist/issue6/per_example.npz")
    rows = []
    base = "AT_PGD"
    for m in ("ADT_EXP", "ADT_EXP-AM seed 1", "ADT_IMP-AM"):
        rows.append(pair_row(f"ADT-rob-{m}", "A_rob (Eq. 12)", m, base,
                             worst(z, [f"{m}|{a}" for a in ADT_ATTACKS]),
                             worst(z, [f"{base}|{a}" for a in ADT_ATTACKS])))
    for m in ("ADT_EXP", "ADT_EXP-AM seed 1", "ADT_IMP-AM"):
        rows.append(pair_row(f"ADT-nat-{m}", "clean", m, base, z[f"{m}|clean"],
                             z[f"{base}|clean"]))
    for m in ("AT_PGD", "ADT_EXP", "ADT_IMP-AM"):
        rows.append(pair_row(f"ADT-exp-{m}", f"attack on {m}", "EXP attack", "PGD-20",
                             z[f"{m}|exp"], z[f"{m}|pgd-20"]))
    return rows


def dro_rows():
    z = _load("dro_fmnist/issue5/per_example.npz")
    rows = []
    for m in ("WRM (DRA_2)", "DRA_A"):
        for col in ("l2-1.5", "l2-2.0"):
            rows.append(pair_row(f"DRA-l2-{m}-{col}", f"PGD-20 {col}", m, "PGD-AT",
                                 z[f"{m}|{col}"], z[f"PGD-AT|{col}"]))
    for col in ("l2-0.5", "l2-1.0", "l2-1.5", "l2-2.0", "l2-2.5"):
        rows.append(pair_row(f"DRA-A-vs-2-{col}", f"PGD-20 {col}", "DRA_A", "WRM (DRA_2)",
                             z[f"DRA_A|{col}"], z[f"WRM (DRA_2)|{col}"]))
    rows.append(pair_row("DRA-pgdat-vs-inf", "PGD-20 linf 0.1", "PGD-AT", "DRA_inf",
                         z["PGD-AT|linf-0.1"], z["DRA_inf|linf-0.1"]))
    for col in ("linf-0.05", "linf-0.1", "linf-0.15"):
        rows.append(pair_row(f"DRA-2inf-vs-inf-{col}", f"PGD-20 {col}", "DRA_2-inf", "DRA_inf",
                             z[f"DRA_2-inf|{col}"], z[f"DRA_inf|{col}"]))
    rows.append(pair_row("DRA-2inf-vs-A-linf", "PGD-20 linf 0.1", "DRA_2-inf", "DRA_A",
                         z["DRA_2-inf|linf-0.1"], z["DRA_A|linf-0.1"]))
    rows.append(pair_row("DRA-A-vs-2inf-l2", "PGD-20 l2 2.0", "DRA_A", "DRA_2-inf",
                         z["DRA_A|l2-2.0"], z["DRA_2-inf|l2-2.0"]))
    for m, base in (("UDR-PGD", "PGD-AT"), ("UDR-TRADES", "TRADES")):
        for col in ("linf-0.1", "linf-0.15", "linf-0.2"):
            rows.append(pair_row(f"UDR-{m}-{col}", f"PGD-20 {col}", m, base,
                                 z[f"{m}|{col}"], z[f"{base}|{col}"]))
        rows.append(pair_row(f"UDR-{m}-clean", "clean", m, base, z[f"{m}|clean"],
                             z[f"{base}|clean"]))
    return rows


def thesis_rows():
    z = _load("thesis_fmnist/issue7/per_example_adr.npz")
    rows = []
    for m, base in (("ADR-ADV", "PGD-AT"), ("ADR-TRADES", "TRADES"), ("ASCL-Leaked", "PGD-AT"),
                    ("ASCL-Leaked", "TRADES"), ("ASCL-Leaked", "ADR-ADV"),
                    ("ASCL-Global clip 1", "PGD-AT")):
        rows.append(pair_row(f"TH-{m}-{base}", "PGD-20 linf 0.1", m, base, z[f"{m}|linf-0.1"],
                             z[f"{base}|linf-0.1"]))
    rows.append(pair_row("TH-ADR-ADV-clean", "clean", "ADR-ADV", "PGD-AT", z["ADR-ADV|clean"],
                         z["PGD-AT|clean"]))
    c = _load("thesis_fmnist/issue7/per_example_cce.npz")
    rows.append(pair_row("TH-CCE-clip", "ensemble PGD-20 linf 0.1", "CCE-RM clip 1",
                         "CCE-Base clip 1", c["CCE-RM clip 1|pgd-20"], c["CCE-Base clip 1|pgd-20"]))
    return rows


def two_proportion(p1, p2, n):
    """Unpaired two-sided z-test of two proportions on n each (pooled variance)."""
    p = (p1 + p2) / 2
    se = math.sqrt(2 * p * (1 - p) / n)
    zval = (p1 - p2) / se if se > 0 else float("nan")
    return zval, 2 * (1 - statistics.NormalDist().cdf(abs(zval)))


def tamoo_rows():
    import json
    with open(os.path.join(HERE, "thesis_fmnist", "issue7", "results_tamoo.json")) as f:
        r = json.load(f)["table"]
    rows = []
    for setting, metric in (("ens", "a_all"), ("eot", "a_all"), ("eot_stochastic", "a_all"),
                            ("uni K=4", "a_avg"), ("uni K=8", "a_avg")):
        for a, b in (("tamoo", "minmax"), ("tamoo", "uniform"), ("tamoo", "moo"),
                     ("moo", "uniform")):
            t, o = r[a][setting], r[b][setting]
            zval, p = two_proportion(t[metric], o[metric], t["n"])
            rows.append(f"| TAMOO-{setting}-{a}-{b} | {setting} {metric} (unpaired z) | {a} vs "
                        f"{b} | {100 * t[metric]:.1f} vs {100 * o[metric]:.1f} | "
                        f"{100 * (t[metric] - o[metric]):+.1f} | - | {p:.2g} | {t['n']} | - |")
    return rows


def udr_toy_rows():
    pgd = [77.0, 79.1, 80.1]
    rows = []
    for label, vals in (("adaptive lambda (Eq. 19)", [76.9, 79.1, 80.2]),
                        ("fixed lambda 0.1", [83.1, 84.3, 85.3]),
                        ("fixed lambda 0.03", [87.8, 88.0, 93.0])):
        s = stats.seed_difference(vals, pgd)
        lo, hi = s["ci95"]
        p = "n/a" if math.isnan(s["p"]) else f"{s['p']:.2g}"
        rows.append(f"| UDR-toy-{label.split()[0]}-{vals[0]} | robust acc. PGD-200 eps 2.0, "
                    f"3 seeds | UDR-PGD {label} vs PGD-AT | {np.mean(vals):.1f} vs {np.mean(pgd):.1f} | "
                    f"{s['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}] | - | {p} | 3 seeds x 2,000 | - |")
    return rows


def main():
    head = ("| id | measure | A vs B | accuracy A vs B (%) | A - B (points) | b / c | p | n | "
            "smallest detectable (points) |\n|---|---|---|---|---:|---:|---:|---:|---:|")
    sections = [("DAA (stand-in model, experiments/daa_fmnist/standin)", daa_rows()),
                ("ADT (experiments/adt_fmnist/issue6, the issue-6 run)", adt_rows()),
                ("DRA and UDR (experiments/dro_fmnist/issue5, the issue-5 run)", dro_rows()),
                ("UDR toy problem (experiments/udr_toy; per-seed accuracies, paired t)",
                 udr_toy_rows()),
                ("Thesis ADR / ASCL / CCE (experiments/thesis_fmnist/issue7)", thesis_rows()),
                ("TA-MOO (experiments/thesis_fmnist/issue7; no per-example results saved)", tamoo_rows())]
    out = ["# Tests behind experiments/REPRODUCTION.md", "",
           "Generated by `python experiments/reproduction_tests.py` from the committed results. "
           "b = images only A gets right, c = only B; p = exact two-sided McNemar "
           "(`experiments/stats.py`) unless the measure says otherwise; 'smallest detectable' = "
           "the difference a McNemar test at this n and this discordance detects with 80% power "
           "at alpha 0.05. Every row is one trained model per method (one seed) unless it says "
           "seeds.", ""]
    for title, rows in sections:
        out += [f"## {title}", "", head, *rows, ""]
    text = "\n".join(out)
    with open(os.path.join(HERE, "reproduction_tests.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
