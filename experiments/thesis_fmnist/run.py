"""Thesis Ch. 3 (ADR, ASCL) and Ch. 4 (CCE, TA-MOO) on Fashion-MNIST against the baselines the thesis
uses (issue 16). One command per part runs that part's whole plan; every part is resumable (a rerun
skips each finished (method, seed) run, resumes an interrupted one from its last checkpoint, and
skips each finished TA-MOO cell).

    python experiments/thesis_fmnist/run.py --part adr|ascl|cce|tamoo [--seeds 0 1 2]
        [--epochs N] [--n 10000] [--threads 1] [--only LABEL ...] [--report]
    python experiments/thesis_fmnist/run.py --part P --time-slice 20      # budget: s/epoch, s/eval

Parts (the protocol is in `advjax.config.thesis_fmnist_base` and the configs; README.md has the
claims, the budget plan and the commands):
  adr    ADR-None, ADR-ADV, TRADES (beta 1), ADR-TRADES (thesis) and ADR-TRADES (release) under the
         ADR protocol (CNN-4C3F(32), SGD 0.01, x0.1 at 55/75/90 of 100 epochs), >= 3 seeds each.
         Claims: ADR-ADV vs ADR-None, ADR-TRADES vs TRADES. R-DIV per run.
  ascl   ADR-None and ASCL Global / Hard-LS / Soft-LS / Leaked-LS in both variants (thesis and
         released-code scales) under the ASCL protocol (Adam 1e-3, no clipping). Claims: each ASCL
         row vs ADR-None; R-DIV (thesis App. B: mini-batches of 128) per run.
  cce    ADV-EN_2, CCE-Base_2, CCE-RM_2, CCE-DM_2 (and the release variant of RM / DM) under the CCE
         protocol (Table 8 MNIST members, Adam 1e-3, batch 64). Ensemble robust accuracy and the
         transferability T of Table 6 (a(i, j) by PGD-20 of eps / 4), the S_11 .. S_00 subsets.
  tamoo  PGD-AT victims (four architectures for ENS, the CNN for UNI and EoT), attacked by Uniform,
         MinMax, MOO and TA-MOO with 100 steps, in both settings (`tamoo.settings`: the thesis' App. C
         and the released scripts'); A-All and A-Avg with 95% intervals, per-problem successes.

Evaluation of a trained model (the thesis' MNIST columns, `thesis_fmnist_base`): clean, PGD-40 step
0.01, PGD-40 step 0.02, PGD-100 step 0.01, multi-targeted PGD-20, all at eps 0.1 with a random
start, on the first --n test images (default: all 10,000); A_rob is the per-example worst case.
Per-example correctness goes to per_example_<part>.npz for the paired tests of the report, which
uses experiments/stats.py (McNemar, seed differences, detectable difference).

Cuts: --epochs N shortens every run (ADR's decay epochs scale with it); --seeds picks the seeds;
--train-limit trains on the first N images (default 0 = all 60,000). A cut run is still a valid
paired comparison (same cut for the method and its baseline), not the thesis' protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import study  # noqa: E402

STUDY = "thesis_fmnist"
PARTS = ("adr", "ascl", "cce", "tamoo")
EPS = 0.1
DEFAULT_SEEDS = (0, 1, 2)
COLLAPSE_CLEAN = 0.2  # a run whose clean accuracy is below this collapsed: fix it, never report it
THESIS_EPOCHS = 100
ADR_DECAY_EPOCHS = (55, 75, 90)

# (label, config, overrides); the first row of each training part is its baseline.
ROWS = {
    "adr": [
        ("ADR-None", "adr_none_fmnist", {}),
        ("ADR-ADV", "adr_adv_fmnist", {}),
        ("TRADES", "adr_baseline_trades_fmnist", {}),
        ("ADR-TRADES", "adr_trades_fmnist", {}),
        ("ADR-TRADES (release)", "adr_trades_fmnist", {"objective.variant": "release"}),
    ],
    "ascl": [("ADR-None (Adam)", "ascl_none_fmnist", {})] + [
        row for sel, name in (("global", "Global"), ("hard", "Hard-LS"), ("soft", "Soft-LS"),
                              ("leaked", "Leaked-LS"))
        for row in ((f"ASCL-{name}", f"ascl_{sel}_fmnist", {}),
                    (f"ASCL-{name} (release)", f"ascl_{sel}_fmnist",
                     {"objective.variant": "release"}))],
    "cce": [
        ("ADV-EN_2", "adv_en_fmnist", {}),
        ("CCE-Base_2", "cce_base_fmnist", {}),
        ("CCE-RM_2", "cce_rm_fmnist", {}),
        ("CCE-DM_2", "cce_dm_fmnist", {}),
        ("CCE-RM_2 (release)", "cce_rm_fmnist", {"objective.variant": "release"}),
        ("CCE-DM_2 (release)", "cce_dm_fmnist", {"objective.variant": "release"}),
    ],
}

# The claims each part tests: (method, baseline, metric, claimed direction (+1: method higher),
# the thesis' words and where, the thesis' effect in points).
CLAIMS = {
    "adr": [
        ("ADR-ADV", "ADR-None", "a_rob", +1,
         '"our ADR-ADV improves ADV by 2.4% (from 94.15% to 96.55%)" (Ch. 3, Sec. 4.2, MNIST, '
         "PGD-40 at eps_d; thesis l. 1089)", 2.4),
        ("ADR-TRADES", "TRADES", "a_rob", +1,
         '"ADR-TRADES boosts TRADES by 2.07% (from 93.64% to 95.71%)" (Ch. 3, Sec. 4.2, MNIST; '
         "l. 1089)", 2.07),
        ("ADR-TRADES (release)", "TRADES", "a_rob", +1,
         "the same claim for the PyTorch release's ADR-TRADES loss (CE + 1 KL)", 2.07),
        ("ADR-ADV", "ADR-None", "clean", 0,
         '"without hurting the natural accuracy" (Ch. 3, Sec. 4.2, Table 1; l. 1038): no loss '
         "of clean accuracy", 0.0),
    ],
    "ascl": [
        (label, "ADR-None (Adam)", "a_rob", +1,
         "ASCL's robustness gain over adversarial training with the same L_AT (Ch. 3 ASCL, "
         "Table 2: ADV 48.1 -> Leaked-ASCL 53.7 PGD; Table 4: Global 52.7, Hard 53.1, Soft 53.4; "
         "CIFAR-10 ResNet20; l. 1452-1515)", effect)
        for label, effect in (("ASCL-Global", 4.6), ("ASCL-Global (release)", 4.6),
                              ("ASCL-Hard-LS", 5.0), ("ASCL-Hard-LS (release)", 5.0),
                              ("ASCL-Soft-LS", 5.3), ("ASCL-Soft-LS (release)", 5.3),
                              ("ASCL-Leaked-LS", 5.6), ("ASCL-Leaked-LS (release)", 5.6))
    ] + [
        ("ASCL-Leaked-LS", "ADR-None (Adam)", "r_div", -1,
         '"our ASCL and Leaked-ASCL have lower R-DIV than baseline methods, and Leaked-ASCL '
         'achieves the lowest measure" (Ch. 3 ASCL, Sec. 4.4, Fig. 5; l. 1523; AT 0.64, '
         "ADR 0.63, ASCL 0.49, Leaked-ASCL 0.48)", None),
    ],
    "cce": [
        ("CCE-RM_2", "ADV-EN_2", "a_rob", +1,
         "CCE-RM_2 vs ADV-EN_2 under PGD k = 100: 44.7 vs 39.7 (Ch. 4, Table 4, CIFAR-10 CNN; "
         'l. 2043); "with the same model capacity, our CCE-RM is consistently the best" (l. 2034)',
         5.0),
        ("CCE-RM_2", "CCE-Base_2", "a_rob", +1,
         '"This helps improve the overall robustness of the ensemble model from 43.3% for '
         'CCE-Base to 45.5% for CCE-RM" (Ch. 4, Table 6 discussion; l. 2082)', 2.2),
        ("CCE-DM_2", "ADV-EN_2", "clean", +1,
         '"CCE-DM significantly improves natural accuracy of the ensemble model by a large '
         'margin" (Ch. 4, Table 7: CNN_2 86.0 vs 76.0; l. 2116-2124)', 10.0),
        ("CCE-RM_2", "ADV-EN_2", "transferability_T", -1,
         '"the transferability metric T for CCE-RM is 33.7% which is much smaller than those for '
         "ADP and ADV-EN (59.3% and 65.5%) ... the adversarial examples ... in our method are more "
         'transferable" (Ch. 4, Table 6; l. 2084): CCE-RM\'s T is SMALLER (more transfer), and '
         '"transferability is not the only factor for improving the robustness"', -31.8),
        ("CCE-RM_2 (release)", "ADV-EN_2", "a_rob", +1,
         "the CCE-RM_2 claim for the released code's crossing terms", 5.0),
    ],
}

# TA-MOO
TAMOO_VICTIMS = [
    ("CNN-4C3F(32)", {}),
    ("Madry-CNN", {"model": dict(name="madry_cnn", widths=(16, 32), fc_width=256)}),
    ("MLP", {"model": dict(name="mlp", hidden=(256, 256))}),
    ("ResNet-8", {"model": dict(name="resnet20", blocks_per_stage=1, mean=None, std=None)}),
]
SINGLE_VICTIM = "CNN-4C3F(32)"
WEIGHTINGS = ("uniform", "minmax", "moo", "tamoo")
WEIGHTING_NAMES = {"uniform": "Uniform", "minmax": "MinMax", "moo": "MOO", "tamoo": "TA-MOO"}
UNI_GROUP_SIZES = (4, 8, 12, 16, 20)
TAMOO_CLAIMS = [
    # (setting column, metric, winner, loser, quote, thesis effect in points)
    ("ens", "a_all", "tamoo", "uniform",
     "ENS, Table 1 (CIFAR-10, CE): TA-MOO 38.01 vs Uniform 28.21 A-All; \"TA-MOO significantly "
     "outperforms the baselines and achieves the best performance in all the settings\" (l. 2651)",
     9.8),
    ("ens", "a_all", "tamoo", "minmax", "ENS, Table 1: TA-MOO 38.01 vs MinMax 35.75 A-All", 2.26),
    ("ens", "a_all", "tamoo", "moo", "ENS, Table 1: TA-MOO 38.01 vs MOO 25.16 A-All", 12.85),
    ("uni K=4", "a_avg", "minmax", "tamoo",
     "UNI, Table 5 (A-Avg only, l. 2700-2711): \"with a small number of tasks (i.e., K=4), MOO and "
     "TA-MOO achieve lower performance than the MinMax method\": MinMax 50.13 vs TA-MOO 48.00",
     2.13),
    ("uni K=8", "a_avg", "tamoo", "moo",
     "UNI, Table 5: \"with a large number of tasks (i.e., K >= 8), MOO and TA-MOO ... achieve the "
     "best performance\"; K = 8: TA-MOO 39.31, MOO 35.92, MinMax 33.68, Uniform 30.34", 3.39),
    ("uni K=20", "a_avg", "tamoo", "uniform", "UNI, Table 5, K = 20: TA-MOO 30.12 vs Uniform 24.31",
     5.81),
    ("eot", "a_all", "tamoo", "minmax",
     "EoT, Table 6 (deterministic, CIFAR-10): TA-MOO 31.10 vs MinMax 30.54 A-All (l. 2716-2729)",
     0.56),
    ("eot", "a_all", "tamoo", "uniform", "EoT, Table 6: TA-MOO 31.10 vs Uniform 25.98 A-All", 5.12),
]


def seed_label(label, seed):
    return f"{label} s{seed}"


def methods(part, args):
    return [study.Method(seed_label(label, s), config, {**overrides, "seed": s})
            for label, config, overrides in ROWS[part]
            if not args.only or label in args.only for s in args.seeds]


def common_overrides(part, args):
    common = {"data.train_limit": args.train_limit, "eval.limit": 500}
    if args.epochs:
        common["train.epochs"] = args.epochs
        if part == "adr":  # keep the x0.1 steps at the same fractions of training
            common["optim.decay_epochs"] = tuple(
                max(1, round(e * args.epochs / THESIS_EPOCHS)) for e in ADR_DECAY_EPOCHS)
    return common


def eval_attacks():
    from advjax.config import thesis_fmnist_base
    return [dict(a) for a in thesis_fmnist_base(EPS).eval.attacks]


def write_md(part, lines, argv, wall):
    head = [f"# {STUDY} results: part {part}", "",
            f"Command: `{study.command_line(STUDY, argv)}`", "",
            f"Wall time of this invocation of the part: {wall:.0f} s.", ""]
    with open(os.path.join(HERE, f"results_{part}.md"), "w") as f:
        f.write("\n".join(head + lines) + "\n")
    print("\n".join(head + lines), flush=True)


def restore_variables(config, workdir):
    import jax
    import jax.numpy as jnp
    from advjax import train as train_lib
    state, model = train_lib.restore_state(config, workdir)
    variables = jax.tree_util.tree_map(jnp.asarray, {"params": state.params, **state.model_state})
    return model, variables


def test_images(n, offset=0):
    import numpy as np
    from advjax import data
    x, y = data.load_numpy("fashion_mnist", "test", limit=offset + n)
    return x[offset:], y[offset:].astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Per-run extras: R-DIV (adr, ascl); members, transfer matrix and subsets (cce)
# ------------------------------------------------------------------------------------------------

def r_div(config, workdir, n, batch_size=128, seed=2):
    """R-DIV as the thesis computes it (Ch. 3, App. B): d_a^+, d_a^- of the latent features on
    mini-batches of 128 natural test images and their PGD-40 (step 0.01) examples, averaged."""
    import jax
    import jax.numpy as jnp
    from advjax import attacks
    from advjax.objectives import ascl
    model, variables = restore_variables(config, workdir)
    logits_fn = lambda v: model.apply(variables, v, train=False)
    features = jax.jit(lambda v: model.apply(variables, v, train=False, return_features=True)[1])
    pgd = jax.jit(lambda v, t, k: attacks.pgd(logits_fn, v, t, key=k, eps=EPS, step_size=0.01,
                                              steps=40))
    x, y = test_images(n)
    z_nat, z_adv = [], []
    for i, start in enumerate(range(0, n, 500)):
        xb, yb = jnp.asarray(x[start:start + 500]), jnp.asarray(y[start:start + 500])
        x_adv = pgd(xb, yb, jax.random.fold_in(jax.random.PRNGKey(seed), i))
        z_nat.append(features(xb).reshape(xb.shape[0], -1))
        z_adv.append(features(x_adv).reshape(xb.shape[0], -1))
    r, d_pos, d_neg = ascl.batched_relative_divergence(
        jnp.concatenate(z_nat), jnp.concatenate(z_adv), jnp.asarray(y), batch_size=batch_size)
    return {"r_div": float(r), "d_pos": float(d_pos), "d_neg": float(d_neg), "r_div_n": n}


def member_metrics(config, workdir, n, batch_size=500, seed=3):
    """Members' clean accuracy, the transfer matrix a(i, j) (member j on PGD-20 examples, step
    eps / 4, against member i; Table 6's attack), T, and the subsets S_11 .. S_00 of Table 6 for the
    PGD-20 examples against the ensemble (S_10: member 1 right, member 2 wrong)."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from advjax import attacks
    from advjax.objectives import cce
    model, variables = restore_variables(config, workdir)
    members = config.model.num_members
    fns = cce.ensemble_member_fns(model.apply, variables, members)
    attack = functools.partial(attacks.pgd, eps=EPS, step_size=EPS / 4, steps=20)
    matrix_fn = jax.jit(lambda v, t, k: cce.transfer_accuracy_matrix(fns, attack, v, t, key=k))
    ens = lambda v: model.apply(variables, v, train=False)

    def subsets(v, t, k):
        x_en = attack(ens, v, t, key=k)
        right = jnp.stack([jnp.argmax(f(x_en), -1) == t for f in fns[:2]])
        en_right = jnp.argmax(ens(x_en), -1) == t
        clean = jnp.stack([jnp.sum(jnp.argmax(f(v), -1) == t) for f in fns])
        return (jnp.stack([jnp.sum(right[0] & right[1]), jnp.sum(right[0] & ~right[1]),
                           jnp.sum(~right[0] & right[1]), jnp.sum(~right[0] & ~right[1])]),
                jnp.sum(en_right), clean)

    subsets = jax.jit(subsets)
    x, y = test_images(n)
    matrix, clean, cells, en = np.zeros((members, members)), np.zeros(members), np.zeros(4), 0.0
    for i, start in enumerate(range(0, n, batch_size)):
        xb, yb = jnp.asarray(x[start:start + batch_size]), jnp.asarray(y[start:start + batch_size])
        k = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        matrix += np.asarray(matrix_fn(xb, yb, k)) * xb.shape[0]
        s, e, c = subsets(xb, yb, jax.random.fold_in(k, 1))
        cells += np.asarray(s)
        en += float(e)
        clean += np.asarray(c)
    matrix = matrix / n
    return {"member_clean": (clean / n).tolist(), "member_pgd20": np.diag(matrix).tolist(),
            "transfer_matrix": matrix.tolist(),
            "transferability_T": float(cce.transferability(jnp.asarray(matrix))),
            "a_en_en_pgd20": en / n, "subsets_S11_S10_S01_S00": (cells / n).tolist(),
            "members_n": n}


# ------------------------------------------------------------------------------------------------
# Training parts (adr, ascl, cce)
# ------------------------------------------------------------------------------------------------

def part_training(part, args, argv):
    t0 = time.time()
    common = common_overrides(part, args)
    workdir_root = os.path.join(args.workdir, part)
    attacks = eval_attacks()
    labels = [a["label"] for a in attacks]
    ms = methods(part, args)
    results_path = os.path.join(HERE, f"results_{part}.json")
    if not args.report:
        results = study.run(HERE, ms, common=common, attacks=attacks, n=args.n,
                            a_rob_over=labels, workdir_root=workdir_root,
                            results_file=f"results_{part}.json",
                            per_example_file=f"per_example_{part}.npz")
        for m in ms:
            r = results.get(m.label)
            if r is None:
                continue
            extra = r_div if part in ("adr", "ascl") else member_metrics
            key = "r_div_n" if part in ("adr", "ascl") else "members_n"
            if r.get(key) == args.n:
                continue
            config, workdir, _ = study.train(m, common, workdir_root)
            r.update(extra(config, workdir, args.n))
            print(f"[{m.label}] " + ", ".join(f"{k}={v}" for k, v in r.items()
                                              if k in ("r_div", "transferability_T")), flush=True)
            study.save_results(results_path, results)
    results = study.load_results(results_path)
    lines = report_training(part, results, args, labels)
    write_md(part, lines, argv, time.time() - t0)


def _per_seed(results, label, seeds, metric):
    out = {}
    for s in seeds:
        r = results.get(seed_label(label, s))
        if r is not None and metric in r:
            out[s] = r[metric]
    return out


def collapsed(r):
    return r.get("clean", 1.0) < COLLAPSE_CLEAN


def report_training(part, results, args, attack_labels):
    """Markdown: per-method means over seeds, per-seed rows, the claims with paired tests."""
    import numpy as np
    import stats  # experiments/stats.py (McNemar, seed differences, detectable difference)
    per_example_path = os.path.join(HERE, f"per_example_{part}.npz")
    per_example = dict(np.load(per_example_path)) if os.path.exists(per_example_path) else {}
    seeds = sorted({int(k.rsplit(" s", 1)[1]) for k in results if " s" in k})
    metrics = ["clean", *[f"attack/{a}" for a in attack_labels], "a_rob"]
    extra = ["r_div"] if part in ("adr", "ascl") else ["transferability_T", "a_en_en_pgd20"]
    lines = [f"Fashion-MNIST, first {args.n} test images, linf eps {EPS}; accuracy in % (mean +- sd "
             "over seeds; n_seeds in brackets). A_rob = per-example worst case over clean and "
             f"{', '.join(attack_labels)}. Runs with clean accuracy below "
             f"{100 * COLLAPSE_CLEAN:.0f}% are marked collapsed and left out of every mean and test.",
             "", "| method | " + " | ".join(m.replace("attack/", "") for m in metrics + extra)
             + " | s/epoch |", "|---" + "|---:" * (len(metrics) + len(extra) + 1) + "|"]
    collapsed_runs = []
    for label, _, _ in ROWS[part]:
        runs = [results[seed_label(label, s)] for s in seeds if seed_label(label, s) in results]
        collapsed_runs += [seed_label(label, s) for s in seeds
                           if seed_label(label, s) in results
                           and collapsed(results[seed_label(label, s)])]
        runs = [r for r in runs if not collapsed(r)]
        if not runs:
            continue
        cells = []
        for m in metrics + extra:
            vals = [r[m] for r in runs if m in r]
            scale, digits = (1, 3) if m == "r_div" else (100, 2)
            cells.append(f"{scale * np.mean(vals):.{digits}f} +- "
                         f"{scale * np.std(vals, ddof=1):.{digits}f} [{len(vals)}]"
                         if len(vals) > 1 else
                         (f"{scale * vals[0]:.{digits}f} [1]" if vals else ""))
        cells.append(f"{np.mean([r['seconds_per_epoch'] for r in runs]):.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if collapsed_runs:
        lines += ["", "Collapsed (to be fixed and rerun, not reported): " + ", ".join(collapsed_runs)]
    lines += ["", "## Claims", "",
              "Paired per seed: McNemar on the per-example correctness (the metric's column; A_rob "
              "= worst case), b = method right and baseline wrong, c = the reverse; the detectable "
              "difference is the smallest accuracy gap a test of this n and discordance finds with "
              "power 0.8 at alpha 0.05. Across seeds: the mean difference with its 95% interval "
              "(`stats.seed_difference`). Verdict: reproduced / contradicted when the seed interval "
              "excludes 0 in / against the claimed direction, else inconclusive at this budget.", ""]
    for method, baseline, metric, direction, quote, effect in CLAIMS[part]:
        a = {s: v for s, v in _per_seed(results, method, seeds, metric).items()
             if not collapsed(results[seed_label(method, s)])}
        b = {s: v for s, v in _per_seed(results, baseline, seeds, metric).items()
             if not collapsed(results[seed_label(baseline, s)])}
        common_seeds = sorted(set(a) & set(b))
        lines.append(f"### {method} vs {baseline} ({metric})")
        lines += ["", f"Thesis: {quote}." + (f" Thesis effect: {effect:+.2f} points." if effect
                                              else ""), ""]
        if len(common_seeds) < 2:
            lines += ["Not enough healthy seeds for a seed interval.", ""]
            continue
        scale = 1 if metric in ("r_div",) else 100
        diff = stats.seed_difference([scale * a[s] for s in common_seeds],
                                     [scale * b[s] for s in common_seeds])
        lo, hi = diff["ci95"]
        per_example_key = {"a_rob": None, "clean": "clean"}.get(metric, "skip")
        for s in common_seeds:
            if per_example_key == "skip":
                break
            ca, cb = _correct(per_example, seed_label(method, s), attack_labels, per_example_key), \
                _correct(per_example, seed_label(baseline, s), attack_labels, per_example_key)
            if ca is None or cb is None:
                continue
            t = stats.mcnemar(ca, cb)
            p_disc = (t["b"] + t["c"]) / len(ca)
            dd = stats.detectable_difference(len(ca), p_disc)
            lines.append(f"- seed {s}: {scale * a[s]:.2f} vs {scale * b[s]:.2f}; McNemar b = "
                         f"{t['b']}, c = {t['c']}, p = {t['p']:.3g}; detectable difference "
                         f"{100 * dd:.2f} points")
        if per_example_key == "skip":
            lines.append("- per seed: " + ", ".join(f"seed {s}: {scale * a[s]:.3f} vs "
                                                    f"{scale * b[s]:.3f}" for s in common_seeds))
        verdict = "inconclusive at this budget"
        if direction and (lo > 0 or hi < 0):
            verdict = "reproduced" if (lo > 0) == (direction > 0) else "contradicted"
        elif not direction:
            verdict = ("no loss (interval includes 0)" if lo <= 0 <= hi else
                       ("a loss" if hi < 0 else "a gain"))
        lines += [f"- across {len(common_seeds)} seeds: mean difference {diff['mean']:+.2f} "
                  f"(95% interval {lo:+.2f} .. {hi:+.2f}) -> **{verdict}**", ""]
    return lines


def _correct(per_example, label, attack_labels, key):
    """Per-example correctness of a run: `key` ("clean") or, for None, the A_rob worst case."""
    import numpy as np
    cols = ["clean"] if key == "clean" else ["clean", *attack_labels]
    arrays = [per_example.get(f"{label}|{c}") for c in cols]
    if any(a is None for a in arrays):
        return None
    return np.all(np.stack(arrays), axis=0)


# ------------------------------------------------------------------------------------------------
# TA-MOO
# ------------------------------------------------------------------------------------------------

def tamoo_victims(args):
    """Trains (or restores) the PGD-AT victims; returns {label: logits_fn}."""
    common = {"data.train_limit": args.train_limit, "eval.limit": 500,
              "train.epochs": args.tamoo_epochs}
    root = os.path.join(args.workdir, "tamoo")
    victims, info = {}, {}
    for label, overrides in TAMOO_VICTIMS:
        m = study.Method(label, "tamoo_victim_fmnist", overrides)
        config, workdir, tinfo = study.train(m, common, root)
        model, variables = restore_variables(config, workdir)
        victims[label] = (lambda v, model=model, variables=variables:
                          model.apply(variables, v, train=False))
        info[label] = {"train_seconds": tinfo["train_seconds"], "epochs": tinfo["epochs"]}
    return victims, info


def tamoo_cells(args):
    """[(variant, setting column, setting, K or None, weighting)] in run order."""
    cols = [("ens", "ens", None)] + [(f"uni K={k}", "uni", k) for k in UNI_GROUP_SIZES] + \
        [("eot", "eot", None)] + ([("eot stochastic", "eot", None)] if args.stochastic_eot else [])
    return [(variant, col, setting, k, w) for variant in args.tamoo_variants
            for col, setting, k in cols for w in WEIGHTINGS]


def tamoo_attack_fn(victims, variant, col, setting, k, weighting, steps=None):
    """A jitted (x, y, key) -> x_adv for one cell, and the cell's settings (for the record);
    `steps` overrides the settings' step count (budget slices)."""
    import jax
    from advjax import attacks
    from advjax.attacks import tamoo
    kw = tamoo.settings(setting, weighting, EPS, variant)
    if steps:
        kw = dict(kw, steps=steps)
    members = [victims[label] for label, _ in TAMOO_VICTIMS]
    single = victims[SINGLE_VICTIM]
    if setting == "ens" and variant == "release" and weighting == "uniform" and \
            tamoo.RELEASE_ENS_UNIFORM_ATTACKS_ENSEMBLE_OUTPUT:
        def ens_out(v):  # log of the summed member probabilities (CE is shift-invariant)
            return jax.nn.logsumexp(jax.numpy.stack(
                [jax.nn.log_softmax(f(v), -1) for f in members]), axis=0)
        fn = lambda x, y, key: attacks.pgd(ens_out, x, y, key=key, eps=EPS,
                                           step_size=kw["step_size"], steps=kw["steps"],
                                           loss=kw["loss"])
        return jax.jit(fn), dict(kw, attack="PGD on the ensemble output (the release's Uniform)")
    if setting == "ens":
        fn = lambda x, y, key: tamoo.tamoo_ens(members, x, y, key=key, eps=EPS, **kw)
    elif setting == "uni":
        fn = lambda x, y, key: tamoo.tamoo_uni(single, x, y, key=key, eps=EPS, group_size=k, **kw)
    else:
        stochastic = col == "eot stochastic"
        fn = lambda x, y, key: tamoo.tamoo_eot(single, x, y, key=key, eps=EPS,
                                               stochastic=stochastic, **kw)
    return jax.jit(fn), kw


def tamoo_success(victims, col, setting, k, x_adv, y, key, draws):
    import numpy as np
    from advjax.attacks import tamoo
    members = [victims[label] for label, _ in TAMOO_VICTIMS]
    single = victims[SINGLE_VICTIM]
    if setting == "ens":
        return np.asarray(tamoo.ens_success(members, x_adv, y))
    if setting == "uni":
        return np.asarray(tamoo.uni_success(single, x_adv, y, k))
    if col == "eot":
        return np.asarray(tamoo.eot_success(single, x_adv, y))
    # stochastic EoT: a task counts as achieved when it is in the majority of `draws` draws
    import jax
    votes = sum(np.asarray(tamoo.eot_success(single, x_adv, y,
                                              stochastic_key=jax.random.fold_in(key, d)))
                for d in range(draws))
    return votes * 2 > draws


def interval(successes):
    """(A-All, A-Avg) with 95% intervals: Wilson for A-All over problems, normal over the problems'
    mean success for A-Avg."""
    import numpy as np
    p = successes.shape[0]
    allp = float(np.mean(np.all(successes, axis=1)))
    z = 1.959964
    centre = (allp + z * z / (2 * p)) / (1 + z * z / p)
    half = z * math.sqrt(allp * (1 - allp) / p + z * z / (4 * p * p)) / (1 + z * z / p)
    per_problem = np.mean(successes, axis=1)
    avg = float(np.mean(per_problem))
    se = float(np.std(per_problem, ddof=1) / math.sqrt(p)) if p > 1 else 0.0
    return {"a_all": allp, "a_all_ci95": [max(0.0, centre - half), min(1.0, centre + half)],
            "a_avg": avg,
            "a_avg_ci95": [avg - z * se, avg + z * se], "problems": p}


def part_tamoo(args, argv):
    import jax
    import jax.numpy as jnp
    import numpy as np
    t0 = time.time()
    path = os.path.join(HERE, "results_tamoo.json")
    pe_path = os.path.join(HERE, "per_example_tamoo.npz")
    results = study.load_results(path)
    per_problem = dict(np.load(pe_path)) if os.path.exists(pe_path) else {}
    if not args.report:
        victims, info = tamoo_victims(args)
        results["victims"] = info
        x_np, y_np = test_images(args.n)
        clean = {label: float(np.mean(np.concatenate([
            np.asarray(jnp.argmax(jax.jit(f)(jnp.asarray(x_np[i:i + 1000])), -1))
            == y_np[i:i + 1000] for i in range(0, args.n, 1000)]))) for label, f in victims.items()}
        results["victim_clean"] = clean
        key = jax.random.PRNGKey(7)
        cells = results.setdefault("cells", {})
        for variant, col, setting, k, w in tamoo_cells(args):
            name = f"{variant}|{col}|{w}"
            fn, kw = tamoo_attack_fn(victims, variant, col, setting, k, w)
            digest = study._digest([kw, args.n, args.eot_draws, EPS, args.tamoo_epochs,
                                    args.train_limit])  # victims trained otherwise: recompute
            if cells.get(name, {}).get("digest") == digest:
                continue
            t1 = time.time()
            usable = args.n - (args.n % k if k else 0)
            batch = 500 - (500 % k if k else 0)
            succ = []
            for i, start in enumerate(range(0, usable, batch)):
                xb = jnp.asarray(x_np[start:min(start + batch, usable)])
                yb = jnp.asarray(y_np[start:min(start + batch, usable)])
                kb = jax.random.fold_in(key, i)
                x_adv = fn(xb, yb, kb)
                succ.append(tamoo_success(victims, col, setting, k, x_adv, yb, kb,
                                          args.eot_draws))
            succ = np.concatenate(succ).astype(bool)
            per_problem[name] = succ
            cells[name] = {**interval(succ), "digest": digest, "seconds": time.time() - t1,
                           "settings": {a: b for a, b in kw.items() if a != "weighting"}}
            print(f"[{name}] A-All {100 * cells[name]['a_all']:.2f}, A-Avg "
                  f"{100 * cells[name]['a_avg']:.2f} ({cells[name]['seconds']:.0f} s)", flush=True)
            study.save_results(path, results)
            np.savez_compressed(pe_path, **per_problem)
    results = study.load_results(path)
    write_md("tamoo", report_tamoo(results, per_problem, args), argv, time.time() - t0)


def report_tamoo(results, per_problem, args):
    import numpy as np
    import stats
    cells = results.get("cells", {})
    cols = ["ens"] + [f"uni K={k}" for k in UNI_GROUP_SIZES] + ["eot"] + \
        (["eot stochastic"] if args.stochastic_eot else [])
    lines = [f"PGD-AT victims ({args.tamoo_epochs} epochs), clean accuracy on the first {args.n} "
             "test images: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in
                                         results.get("victim_clean", {}).items()) + ".",
             f"Attacks at linf eps {EPS}, settings from `advjax.attacks.tamoo.settings` (thesis: "
             "App. C; release: the authors' scripts). A-All / A-Avg in % with 95% intervals "
             "(Wilson for A-All; normal over problems for A-Avg). UNI: A-Avg is the thesis' "
             "metric (Table 5).", ""]
    bad = [k for k, v in results.get("victim_clean", {}).items() if v < COLLAPSE_CLEAN]
    if bad:
        lines += [f"**Collapsed victims (clean accuracy below {100 * COLLAPSE_CLEAN:.0f}%): "
                  f"{', '.join(bad)}. Fix and retrain them before reading any cell.**", ""]
    for variant in args.tamoo_variants:
        lines += [f"## Settings: {variant}", "",
                  "| weighting | " + " | ".join(cols) + " |", "|---" + "|---:" * len(cols) + "|"]
        for w in WEIGHTINGS:
            row = []
            for col in cols:
                c = cells.get(f"{variant}|{col}|{w}")
                if c is None:
                    row.append("")
                    continue
                lo, hi = c["a_all_ci95"]
                alo, ahi = c["a_avg_ci95"]
                row.append(f"{100 * c['a_all']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] / "
                           f"{100 * c['a_avg']:.1f} [{100 * alo:.1f}, {100 * ahi:.1f}]")
            lines.append(f"| {WEIGHTING_NAMES[w]} | " + " | ".join(row) + " |")
        lines += ["", "(cells: A-All [95%] / A-Avg [95%])", "", "### Claims", ""]
        for col, metric, win, lose, quote, effect in TAMOO_CLAIMS:
            a, b = per_problem.get(f"{variant}|{col}|{win}"), per_problem.get(
                f"{variant}|{col}|{lose}")
            if a is None or b is None:
                continue
            if metric == "a_all":
                sa, sb = np.all(a, axis=1), np.all(b, axis=1)
                t = stats.mcnemar(sa, sb)
                diff = 100 * (sa.mean() - sb.mean())
                test = f"McNemar b = {t['b']}, c = {t['c']}, p = {t['p']:.3g}"
                sig = t["p"] < 0.05
            else:  # A-Avg: paired over problems (mean success per group), normal interval
                d = a.mean(axis=1) - b.mean(axis=1)
                diff = 100 * d.mean()
                se = 100 * d.std(ddof=1) / math.sqrt(len(d))
                test = (f"paired difference 95% interval {diff - 1.96 * se:+.2f} .. "
                        f"{diff + 1.96 * se:+.2f}")
                sig = abs(diff) > 1.96 * se
            verdict = ("reproduced" if diff > 0 else "contradicted") if sig else \
                "inconclusive at this budget"
            lines.append(f"- {col} {metric}: {WEIGHTING_NAMES[win]} - {WEIGHTING_NAMES[lose]} = "
                         f"{diff:+.2f} points ({test}) -> **{verdict}**. Thesis: {quote} "
                         f"({effect:+.2f}).")
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------
# Budget: one short slice of each method
# ------------------------------------------------------------------------------------------------

def time_slice(part, args):
    """Seconds per training step (compilation excluded) of each method of `part`, s/epoch on all
    60,000 images, and seconds per 1,000 test images of the evaluation (or, for tamoo, of each
    attack cell); writes budget_<part>.json."""
    import functools

    import jax
    import numpy as np
    from flax import jax_utils
    from advjax import data as data_lib
    from advjax import train as train_lib
    out = {"part": part, "steps": args.time_slice, "load_1min_before": os.getloadavg()[0]}
    rows = ROWS.get(part, [])
    if part == "tamoo":
        rows = [(label, "tamoo_victim_fmnist", o) for label, o in TAMOO_VICTIMS]
    x_np, y_np = test_images(500)
    evaluated = False
    for label, config_name, overrides in rows:
        if args.only and label not in args.only:
            continue
        config = study.load_config(config_name, {**overrides, "train.progress": False})
        bs = config.train.batch_size
        config.data.train_limit = bs * (args.time_slice + 2)
        dev = jax.local_devices()[:1]
        b = train_lib.build(config, devices=dev)
        state = train_lib.create_train_state(b["model"], b["objective"], b["tx"],
                                             jax.random.PRNGKey(0), b["info"]["shape"])
        step = jax.pmap(functools.partial(train_lib.train_step, objective=b["objective"],
                                          base_key=jax.random.PRNGKey(1)),
                        axis_name=train_lib.AXIS, devices=dev)
        rstate = jax_utils.replicate(state, dev)
        tx, ty = b["train"]
        batches = [{"image": tx[i * bs:(i + 1) * bs][None], "label": ty[i * bs:(i + 1) * bs][None]}
                   for i in range(args.time_slice + 2)]
        t_compile = time.time()
        for batch in batches[:2]:
            rstate, m = step(rstate, batch)
        jax.block_until_ready(m)
        t_compile = time.time() - t_compile
        t1, c1 = time.time(), time.process_time()
        for batch in batches[2:]:
            rstate, m = step(rstate, batch)
        jax.block_until_ready(m)
        per_step = (time.time() - t1) / args.time_slice
        cpu_per_step = (time.process_time() - c1) / args.time_slice
        steps_per_epoch = data_lib.num_batches(60000, bs, num_shards=1, drop_remainder=True)
        # CPU seconds (all threads of this process) per step: what one unloaded core would take
        # with --threads 1; wall seconds depend on the machine's load.
        row = {"s_per_step": per_step, "s_per_epoch": per_step * steps_per_epoch,
               "cpu_s_per_step": cpu_per_step, "cpu_s_per_epoch": cpu_per_step * steps_per_epoch,
               "compile_s": t_compile, "batch": bs, "loss": float(np.asarray(m["loss"])[0])}
        if part != "tamoo" and not evaluated and args.eval_slice:
            # one network per part: the evaluation costs the same for every method of the part
            row["eval_s_per_1000"], row["eval_cpu_s_per_1000"] = eval_slice(
                config, b, jax_utils.unreplicate(rstate), x_np[:100], y_np[:100])
            evaluated = True
        out[label] = row
        print(f"[{label}] {per_step:.2f} s/step wall, {cpu_per_step:.2f} CPU s/step, "
              f"{row['cpu_s_per_epoch']:.0f} CPU s/epoch (batch {bs}; compile {t_compile:.0f} s)"
              + (f", eval {row['eval_cpu_s_per_1000']:.0f} CPU s per 1000 test images"
                 if "eval_s_per_1000" in row else ""), flush=True)
    if part == "tamoo":
        out["attacks"] = tamoo_attack_slice(args, x_np, y_np)
    out["load_1min_after"] = os.getloadavg()[0]
    with open(os.path.join(HERE, f"budget_{part}.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def eval_slice(config, b, state, x, y):
    """(wall, CPU) seconds per 1,000 test images of the evaluation attacks (+ clean), on 100."""
    import jax
    from advjax import evaluate as evaluate_lib
    from advjax import train as train_lib
    logits_fn = train_lib.eval_logits_fn(b["eval_model"], state)
    attacks = eval_attacks()
    evaluate_lib.robust_accuracy(logits_fn, (x[:10], y[:10]), attacks, key=jax.random.PRNGKey(0),
                                 batch_size=len(x))          # compiles at this batch size
    t, c = time.time(), time.process_time()
    evaluate_lib.robust_accuracy(logits_fn, (x, y), attacks, key=jax.random.PRNGKey(0),
                                 batch_size=len(x))
    return (time.time() - t) * 1000 / len(x), (time.process_time() - c) * 1000 / len(x)


def tamoo_attack_slice(args, x_np, y_np, images=60, steps=3):
    """Seconds per image and attack step of each (variant, setting, weighting), on untrained victims
    of the study's architectures (the cost does not depend on the weights)."""
    import jax
    import jax.numpy as jnp
    from advjax import models
    from advjax.attacks import tamoo
    victims = {}
    for label, overrides in TAMOO_VICTIMS:
        config = study.load_config("tamoo_victim_fmnist", overrides)
        fields = {k: v for k, v in config.model.to_dict().items() if k != "name"}
        model = models.get_model(config.model.name, **fields)
        variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
        victims[label] = lambda v, model=model, variables=variables: model.apply(variables, v)
    out = {}
    x, y = jnp.asarray(x_np[:images]), jnp.asarray(y_np[:images])
    for variant, col, setting, k, w in tamoo_cells(args):
        if col not in ("ens", "uni K=4", "eot", "eot stochastic"):
            continue  # the other UNI group sizes cost as K = 4 per image and step
        fn, kw = tamoo_attack_fn(victims, variant, col, setting, k, w, steps=steps)
        full_steps = tamoo.settings(setting, w, EPS, variant)["steps"]
        fn(x, y, jax.random.PRNGKey(0)).block_until_ready()
        t, c = time.time(), time.process_time()
        fn(x, y, jax.random.PRNGKey(1)).block_until_ready()
        per = (time.time() - t) / (images * steps)
        cpu = (time.process_time() - c) / (images * steps)
        out[f"{variant}|{col}|{w}"] = {"s_per_image_step": per, "cpu_s_per_image_step": cpu,
                                        "steps": full_steps,
                                        "cpu_s_per_1000_images": cpu * 1000 * full_steps}
        print(f"[{variant}|{col}|{w}] {1000 * cpu:.2f} CPU ms per image-step; "
              f"{cpu * 1000 * full_steps:.0f} CPU s per 1000 images at {full_steps} steps",
              flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=PARTS, action="append", required=True,
                   help="repeatable; each part is one plan")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--epochs", type=int, default=0,
                   help="0: the thesis' 100; N: every run of the part for N epochs")
    p.add_argument("--train-limit", type=int, default=0, help="0: all 60,000 training images")
    p.add_argument("--n", type=int, default=10000, help="test images evaluated")
    p.add_argument("--tamoo-epochs", type=int, default=20, help="PGD-AT epochs of the victims")
    p.add_argument("--tamoo-variants", nargs="+", default=["thesis", "release"],
                   choices=["thesis", "release"])
    p.add_argument("--stochastic-eot", action="store_true",
                   help="also stochastic EoT (a task counts when achieved in most of --eot-draws)")
    p.add_argument("--eot-draws", type=int, default=5)
    p.add_argument("--only", nargs="*", help="method labels (without seed) of a training part")
    p.add_argument("--report", action="store_true", help="only rewrite results_<part>.md")
    p.add_argument("--time-slice", type=int, default=0,
                   help="N > 0: time N training steps of each method (budget plan), no study")
    p.add_argument("--no-eval-slice", dest="eval_slice", action="store_false",
                   help="with --time-slice: skip timing the evaluation")
    p.add_argument("--threads", type=int, default=1, choices=(0, 1))
    p.add_argument("--workdir", default=os.path.join(study.ROOT, "workdirs", STUDY))
    args = p.parse_args(argv)
    study.pin_threads(args.threads)
    argv = sys.argv[1:] if argv is None else argv
    for part in args.part:
        if args.time_slice:
            time_slice(part, args)
        elif part == "tamoo":
            part_tamoo(args, argv)
        else:
            part_training(part, args, argv)


if __name__ == "__main__":
    main()
