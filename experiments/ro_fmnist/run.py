"""Robust optimization (Shaham, Yamada, Negahban, Neurocomputing 2018) on the real Fashion-MNIST
(issue 15): RO with linf, l1 and l2 uncertainty sets against the baseline net, FGSM-AT and PGD-AT.

The paper's MNIST experiment, adapted (configs/ro_*_fmnist.py, `advjax.config.ro_fmnist_base`): its
baseline net (`ro_cnn`: conv 5x5 32, pool 3, conv 5x5 64, pool 2, FC 200, FC 10) and the released
scripts' training (SGD 0.01, momentum 0.9, L2 1e-3, batch 100), all 60k / 10k images; radii from the
released intensities (linf 0.2 and l1 / l2 2 standardized units = 0.07 and 0.7 in pixels). Every
method on --seeds:

  Standard          ro_standard_fmnist    the baseline net
  RO-linf / l1 / l2 ro_{linf,l1,l2}_fmnist one steepest-ascent step, then descent on it (Alg. 1)
  FGSM-AT           ro_fgsm_at_fmnist     Goodfellow et al.'s alpha = 0.5 mixed loss at 0.07
  PGD-AT            ro_pgd_at_fmnist      PGD-10 at 0.07
  ablation (first seed): RO-l1 as released (no box clip: `objective.box=False`)

The paper's claims and our columns:
  * Table 1 (MNIST test / A_mnist): the robustified nets improve clean accuracy (99.09 -> 99.16 l1,
    99.28 l2, 99.33 linf) and classify many of A_mnist, the one-step (Eq. 11) adversarial examples of
    the baseline net (33.83 l1, 76.55 l2, 79.96 linf; baseline 0). Here A_fmnist per seed: the test
    images the seed's Standard net classifies correctly and whose linf / l2 / l1 one-step example at
    the training radii it misclassifies ("transfer" columns).
  * Fig. 3: accuracy under FGSM against each net's own gradients at growing eps: "fgsm-<eps>" columns;
    also PGD-20 ("pgd-20-<eps>"), the stronger attack the paper did not run.
Paired tests (seeded.py) of each RO net against Standard, FGSM-AT and PGD-AT.

    python experiments/ro_fmnist/run.py [--epochs 20] [--seeds 0 1 2] [--threads 1]
    python experiments/ro_fmnist/run.py --plan | --report-only | --time-slices 20
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = HERE  # results, tables, figures (--results-dir)
sys.path.insert(0, os.path.dirname(HERE))
import seeded  # noqa: E402
import study  # noqa: E402

METHODS = [
    study.Method("Standard", "ro_standard_fmnist"),
    study.Method("RO-linf", "ro_linf_fmnist"),
    study.Method("RO-l1", "ro_l1_fmnist"),
    study.Method("RO-l2", "ro_l2_fmnist"),
    study.Method("FGSM-AT", "ro_fgsm_at_fmnist"),
    study.Method("PGD-AT", "ro_pgd_at_fmnist"),
]
ABLATIONS = [study.Method("RO-l1 (no box)", "ro_l1_fmnist", {"objective.box": False})]
PAIRS = [(ro, base) for ro in ("RO-linf", "RO-l1", "RO-l2")
         for base in ("Standard", "FGSM-AT", "PGD-AT")]
TRANSFER_NORMS = ("linf", "l2", "l1")


def eval_attacks():
    return [dict(a) for a in study.load_config("ro_standard_fmnist").eval.attacks]


def transfer_eval(args, labels, seed):
    """A_fmnist of `seed` (module docstring): {label: {norm: correct (bool, over the set)}} and the
    set sizes. One-step examples of the seed's Standard net at the training radii, in the box."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advjax import attacks, config as config_lib, data, train as train_lib
    methods = {m.label: m for m in METHODS + ABLATIONS}

    def run_config(label):
        # the config the run was trained with (common overrides, the method's, the seed), so that
        # restoring it does not warn about a config change
        m = methods[label]
        return study.load_config(m.config, {**study.common_overrides(args), **m.overrides,
                                            "seed": int(seed), "eval.attacks": [],
                                            "train.progress": False})

    base = seeded.seed_label("Standard", seed)
    state, model = train_lib.restore_state(run_config("Standard"),
                                           os.path.join(args.workdir, base))
    f_base = jax.jit(train_lib.eval_logits_fn(model, state))
    x, y = data.load_numpy("fashion_mnist", "test", limit=args.n)
    radii = {"linf": config_lib.RO_LINF_EPS, "l2": config_lib.RO_L2_EPS,
             "l1": config_lib.RO_L1_EPS}
    sets, out = {}, {}
    for norm in TRANSFER_NORMS:
        step = jax.jit(lambda xb, yb: attacks.fgm(f_base, xb, yb, eps=radii[norm], norm=norm))
        xs, keep = [], []
        for i in range(0, len(x), 500):
            xb, yb = jnp.asarray(x[i:i + 500]), jnp.asarray(y[i:i + 500])
            xa = step(xb, yb)
            ok = (jnp.argmax(f_base(xb), -1) == yb) & (jnp.argmax(f_base(xa), -1) != yb)
            xs.append(np.asarray(xa))
            keep.append(np.asarray(ok))
        keep = np.concatenate(keep)
        sets[norm] = (np.concatenate(xs)[keep], y[keep])
    for label in labels:
        wd = os.path.join(args.workdir, seeded.seed_label(label, seed))
        if not os.path.exists(os.path.join(wd, "train_done.json")):
            continue
        st, mdl = train_lib.restore_state(run_config(label), wd)
        f = jax.jit(train_lib.eval_logits_fn(mdl, st))
        out[label] = {norm: np.concatenate([
            np.asarray(jnp.argmax(f(jnp.asarray(xa[i:i + 500])), -1) == ya[i:i + 500])
            for i in range(0, len(xa), 500)]) if len(xa) else np.zeros(0, bool)
            for norm, (xa, ya) in sets.items()}
    return out, {norm: int(len(s[1])) for norm, s in sets.items()}


def transfer_all(args, labels):
    """Runs `transfer_eval` for every seed; keeps transfer.json (accuracies) and
    per_example_transfer.npz (correctness, "<label> s<seed>|transfer-<norm>")."""
    import numpy as np
    accs, arrays = {}, {}
    for s in args.seeds:
        if not os.path.exists(os.path.join(args.workdir, seeded.seed_label("Standard", s),
                                           "train_done.json")):
            continue
        res, sizes = transfer_eval(args, labels, s)
        for label, per_norm in res.items():
            key = seeded.seed_label(label, s)
            allc = np.concatenate([per_norm[n] for n in TRANSFER_NORMS])
            accs[key] = {f"transfer-{n}": float(per_norm[n].mean()) if len(per_norm[n]) else None
                         for n in TRANSFER_NORMS}
            accs[key]["transfer"] = float(allc.mean()) if len(allc) else None
            accs[key]["transfer_sizes"] = sizes
            for n in TRANSFER_NORMS:
                arrays[f"{key}|transfer-{n}"] = per_norm[n]
            arrays[f"{key}|transfer"] = allc
    with open(os.path.join(OUT, "transfer.json"), "w") as f:
        json.dump(accs, f, indent=1)
    np.savez_compressed(os.path.join(OUT, "per_example_transfer.npz"), **arrays)
    return accs, arrays


def report(results, args, atk, wall, transfer):
    per_example = {**seeded.load_per_example(OUT),
                   **seeded.load_per_example(OUT, "per_example_transfer.npz")}
    merged = {k: {**v, **{t: a for t, a in transfer.get(k, {}).items()
                          if isinstance(a, float)}} for k, v in results.items()}
    labels = [m.label for m in METHODS + ABLATIONS]
    fgsm = [f"attack/{a['label']}" for a in atk if a["name"] == "fgsm"]
    pgd = [f"attack/{a['label']}" for a in atk if a["name"] == "pgd"]
    md = ["# ro_fmnist results", "",
          f"Command: `{study.command_line('ro_fmnist', sys.argv[1:])}`", "",
          f"Wall time of this invocation: {wall:.0f} s; load average at the end "
          f"{seeded.load_load()}. Accuracy in %, mean (min-max) over seeds, n = {args.n} test "
          f"images, {args.epochs} epochs of {seeded.train_images(args)}.", "",
          "## Table 1: clean and the baseline net's one-step examples (A_fmnist)", "",
          seeded.seed_mean_table(merged, labels, args.seeds,
                                 ["clean", "transfer", "transfer-linf", "transfer-l2",
                                  "transfer-l1"]),
          "## Fig. 3: FGSM against each net's own gradients", "",
          seeded.seed_mean_table(merged, labels, args.seeds, fgsm),
          "## PGD-20 (step eps / 4)", "",
          seeded.seed_mean_table(merged, labels, args.seeds, pgd),
          "## Paired tests (A - B in points)", ""]
    text, rows = seeded.try_paired_report(
        per_example, PAIRS, args.seeds, ["clean", "transfer", "attack/fgsm-0.07",
                                         "attack/fgsm-0.15", "attack/pgd-20-0.07"])
    md.append(text)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(OUT, "paired.json"), "w") as f:
        json.dump(rows, f, indent=1)
    figure(merged, labels, args.seeds, atk)
    print("\n".join(md))


def figure(results, labels, seeds, atk):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, name in zip(axes, ("fgsm", "pgd")):
        specs = [a for a in atk if a["name"] == name]
        eps = [0.0] + [a["eps"] for a in specs]
        for label in labels:
            rs = [results[seeded.seed_label(label, s)] for s in seeds
                  if seeded.seed_label(label, s) in results]
            if not rs:
                continue
            ys = [statistics.fmean(100 * r["clean"] for r in rs)] + [
                statistics.fmean(100 * r[f"attack/{a['label']}"] for r in rs) for a in specs]
            ax.plot(eps, ys, marker="o", label=f"{label} ({len(rs)})",
                    linestyle="-" if label.startswith("RO") else "--")
        ax.set_xlabel("attack eps (linf)")
        ax.set_ylabel("accuracy (%), mean over seeds")
        ax.set_title("FGSM (the paper's Fig. 3)" if name == "fgsm" else "PGD-20")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "accuracy_vs_eps.png"), dpi=120)


def main(argv=None):
    p = study.argument_parser("ro_fmnist", train_limit=0, epochs=20, n=10000)
    seeded.add_seed_arguments(p)
    p.add_argument("--time-slices", type=int, default=0, metavar="STEPS",
                   help="time STEPS training steps of every config and the evaluation (250 and "
                        "500 test images), write budget.json, and exit")
    p.add_argument("--time-eval", action="store_true",
                   help="re-time only the evaluation in budget.json, and exit")
    p.add_argument("--no-ablations", action="store_true")
    args = p.parse_args(argv)
    global OUT
    OUT = args.results_dir or HERE
    os.makedirs(OUT, exist_ok=True)
    study.pin_threads(args.threads)
    t0 = time.time()
    atk = eval_attacks()
    if args.time_slices or args.time_eval:
        seeded.write_budget(HERE, METHODS, "ro_standard_fmnist", atk,
                            steps=0 if args.time_eval else args.time_slices)
        return
    runs = seeded.expand(METHODS, args.seeds)
    runs += [] if args.no_ablations else seeded.expand(ABLATIONS, args.seeds[:1])
    if args.only:
        runs = [m for m in runs if m.label.rsplit(" s", 1)[0] in args.only]
    if args.plan:
        seeded.print_plan(HERE, runs, args.epochs, args.n)
        return
    results = study.load_results(os.path.join(OUT, "results.json"))
    if not args.report_only:
        results = study.run(OUT, runs, common=study.common_overrides(args), attacks=atk,
                            n=args.n, workdir_root=args.workdir)
    transfer_path = os.path.join(OUT, "transfer.json")
    if args.report_only and os.path.exists(transfer_path):
        transfer = json.load(open(transfer_path))
    else:
        transfer, _ = transfer_all(args, [m.label for m in METHODS + ABLATIONS])
    report(results, args, atk, time.time() - t0, transfer)


if __name__ == "__main__":
    main()
