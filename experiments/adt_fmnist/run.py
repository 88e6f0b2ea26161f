"""ADT Table 1 on the real Fashion-MNIST (issues 6 and 15): Standard, AT_PGD, ADT_EXP, EXP-AM, IMP-AM.

One protocol for all five (configs/adt_*_fmnist.py, `advjax.config.adt_fmnist_base`): all 60k
training and 10k test images, CNN-4C3F 16/32/128, SGD 0.01 momentum 0.9 (the no-batch-norm MNIST
authors' rate) with ADT's weight decay 2e-4, x0.1 at 55/75/90 % of the epochs, linf eps = 0.1; the
AM methods as the released code (`variant="code"`), generator base width 32 (a cut: the release's
256). Every method on --seeds (default 0 1 2).

Columns (ADT Sec. 5.1, step eps/4): A_nat, FGSM, PGD-20, PGD-100, MIM-20, C&W (margin loss by PGD,
30 steps), the EXP attack (T = 20, k = 10, Sec. 5.3), AutoAttack when advjax registers
"autoattack", and A_rob, the per-example worst case over all of them (Eq. 12). The paper's claim
(Table 1): ADT_EXP's A_rob 50.56 vs AT_PGD's 48.26 (+2.3 points; EXP-AM +1.8, IMP-AM +1.6). Paired
tests (seeded.py): each ADT variant against AT_PGD, per seed and over seeds.

Also writes distribution_samples.png: for a few test images, PGD-20's adversarial example against
the ADT_EXP (seed 0) model next to samples of the adversarial distribution the EXP attack learns
(the paper's Fig. 1 idea).

    python experiments/adt_fmnist/run.py [--epochs 100] [--seeds 0 1 2] [--threads 1]
    python experiments/adt_fmnist/run.py --plan | --report-only | --time-slices 20
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = HERE  # results, tables, figures (--results-dir)
sys.path.insert(0, os.path.dirname(HERE))
import seeded  # noqa: E402
import study  # noqa: E402

EPS = 0.1
METHODS = [
    study.Method("Standard", "adt_standard_fmnist"),
    study.Method("AT_PGD", "adt_at_pgd_fmnist"),
    study.Method("ADT_EXP", "adt_exp_fmnist"),
    study.Method("ADT_EXP-AM", "adt_exp_am_fmnist"),
    study.Method("ADT_IMP-AM", "adt_imp_am_fmnist"),
]
PAIRS = [("ADT_EXP", "AT_PGD"), ("ADT_EXP-AM", "AT_PGD"), ("ADT_IMP-AM", "AT_PGD")]


def eval_attacks():
    from advjax import attacks as attacks_lib
    out = [dict(a) for a in study.load_config("adt_exp_fmnist").eval.attacks]
    if "autoattack" in attacks_lib.ATTACKS:
        out.append(dict(name="autoattack", label="autoattack", eps=EPS))
    return out


def labels_of(attacks):
    return [a.get("label", a["name"]) for a in attacks]


def samples_figure(results_dir: str, workdir: str, num_images: int = 6, num_samples: int = 4):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advjax import attacks, data, plots, train as train_lib
    from advjax.attacks import adt
    config = study.load_config("adt_exp_fmnist")
    state, model = train_lib.restore_state(config, workdir)
    f = train_lib.eval_logits_fn(model, state)
    x, y = data.load_numpy("fashion_mnist", "test", limit=num_images)
    x, y = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    key = jax.random.PRNGKey(0)
    x_pgd = attacks.pgd(f, x, y, key=key, eps=EPS, step_size=EPS / 4, steps=20)
    dist = adt.adt_exp_inner(f, x, y, key=key, eps=EPS, steps=20, samples=10)
    r = jax.random.normal(jax.random.PRNGKey(1), (num_samples,) + x.shape)
    x_dist = jax.vmap(lambda ri: adt.perturb(x, adt.tanh_gaussian_delta(dist.mu, dist.sigma, ri,
                                                                        EPS)))(r)
    pred = lambda z: np.asarray(jnp.argmax(f(z), -1))
    rows = [("PGD-20", np.asarray(x_pgd), pred(x_pgd))]
    rows += [(f"EXP sample {i + 1}", np.asarray(x_dist[i]), pred(x_dist[i]))
             for i in range(num_samples)]
    plots.comparison_grid(os.path.join(results_dir, "distribution_samples.png"), np.asarray(x),
                          np.asarray(y), pred(x), rows, eps=EPS,
                          title="ADT_EXP model: PGD-20 vs samples of the adversarial distribution "
                                "learned by the EXP attack (red = misclassified)")
    sigma = np.asarray(dist.sigma)
    mu = np.asarray(dist.mu)
    return {"sigma_median": float(np.median(sigma)), "sigma_mean": float(sigma.mean()),
            "frac_abs_mu_gt_1": float(np.mean(np.abs(mu) > 1.0))}


def report(results, args, atk, wall):
    per_example = seeded.load_per_example(OUT)
    cols = ["clean"] + [f"attack/{l}" for l in labels_of(atk)] + ["a_rob"]
    md = ["# adt_fmnist results", "",
          f"Command: `{study.command_line('adt_fmnist', sys.argv[1:])}`", "",
          f"Wall time of this invocation: {wall:.0f} s; load average at the end "
          f"{seeded.load_load()}. Accuracy in %, mean (min-max) over seeds, n = {args.n} test "
          f"images, {args.epochs} epochs of {seeded.train_images(args)}.", "",
          seeded.seed_mean_table(results, [m.label for m in METHODS], args.seeds, cols),
          "## Paired tests against AT_PGD (A - B in points)", ""]
    text, rows = seeded.try_paired_report(per_example, PAIRS, args.seeds,
                                          ["clean", "attack/pgd-20", "a_rob"], labels_of(atk))
    md.append(text)
    first = seeded.seed_label("ADT_EXP", args.seeds[0])
    if first in results:
        stats_fig = samples_figure(OUT, os.path.join(args.workdir, first))
        md += ["", f"EXP attack distributions in distribution_samples.png ({first}): {stats_fig}"]
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(OUT, "paired.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(md))


def main(argv=None):
    p = study.argument_parser("adt_fmnist", train_limit=0, epochs=100, n=10000)
    seeded.add_seed_arguments(p)
    p.add_argument("--time-slices", type=int, default=0, metavar="STEPS",
                   help="time STEPS training steps of every config and the evaluation (250 and "
                        "500 test images), write budget.json, and exit")
    p.add_argument("--time-eval", action="store_true",
                   help="re-time only the evaluation in budget.json, and exit")
    args = p.parse_args(argv)
    global OUT
    OUT = args.results_dir or HERE
    os.makedirs(OUT, exist_ok=True)
    study.pin_threads(args.threads)
    from advjax.config import scaled_decay_epochs
    t0 = time.time()
    atk = eval_attacks()
    if args.time_slices or args.time_eval:
        seeded.write_budget(HERE, METHODS, "adt_at_pgd_fmnist", atk,
                            steps=0 if args.time_eval else args.time_slices)
        return
    runs = seeded.expand(METHODS, args.seeds)
    if args.only:
        runs = [m for m in runs if m.label.rsplit(" s", 1)[0] in args.only]
    if args.plan:
        seeded.print_plan(HERE, runs, args.epochs, args.n)
        return
    common = {**study.common_overrides(args),
              "optim.decay_epochs": scaled_decay_epochs(args.epochs)}
    results = study.load_results(os.path.join(OUT, "results.json"))
    if not args.report_only:
        results = study.run(OUT, runs, common=common, attacks=atk, n=args.n,
                            a_rob_over=labels_of(atk), workdir_root=args.workdir)
    report(results, args, atk, time.time() - t0)


if __name__ == "__main__":
    main()
