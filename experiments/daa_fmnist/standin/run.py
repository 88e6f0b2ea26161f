"""The FIRST DAA study (issue 4), kept to reproduce its committed results: a stand-in model
(configs/daa_fmnist.py, `advjax.models.DAACNN`, chosen before the authors' release was read), not
the authors' model. The Table-3 study on the released model is ../run.py (issue 14).

DAA Table 3 on the real Fashion-MNIST (issue 4): PGD-AT model at linf eps 0.2, attacked by
Rand+FGSM, PGD, Momentum PGD, DAA-BLOB and DAA-DGF, with CE and CW losses, over several random
restarts.

1. Train (`--stage train`): configs/daa_fmnist.py (DAA CNN, PGD-7 AT at eps 0.2) through the study
   driver (`advjax.train.train_and_evaluate`, resumable), on the first --train-limit training images
   for --epochs epochs (defaults 20,000 and 4: what fits this CPU, see README.md). The model and
   schedule are a stand-in; the authors' are configs/daa_release_fmnist.py.
2. Evaluate (`--stage eval`): the first --n test images (default 2,000). Every restart r is one
   call of `advjax.evaluate.robust_accuracy` with key r and all the columns, so each restart is an
   independent random start for every attack and its per-example results are kept (per_restart.npz):
     rand_fgsm   R+FGSM (Tramer et al.), alpha = eps / 2
     pgd         PGD, 100 steps of 0.01, random start
     mim         Momentum PGD (MIM, decay 1), 100 steps of 0.01, random start
     daa_blob    DAA-BLOB, Algorithm 1 (R = 10 rounds, M = 100 particles, L = 100 steps of 0.01),
                 c = 1.5 (CE) / 15 (CW), the paper's Table 2 ranges
     daa_dgf     DAA-DGF, Algorithm 1 as above, coef = 0.001 (CE, the released FMNIST code) /
                 0.01 (CW)
   each with loss "ce" and "cw" (Madry's CW_inf margin, kappa = 50). --restarts-ce and --restarts-cw
   set how many restarts each loss gets.
3. Report (`--stage report`, also after eval): results.md with, per attack, the accuracy after all
   restarts (per-example worst case over restarts, as the paper counts restarts), the mean and
   standard deviation of the single-restart accuracies, a paired McNemar test of each DAA variant
   against PGD (per-example worst case) and a paired t-test over restarts; figure1.png, the paper's
   Figure 1 analogue (clean images, PGD and DAA-BLOB adversarial examples and perturbations).

    python experiments/daa_fmnist/standin/run.py [--stage all] [--n 2000] [--restarts-ce 2]
        [--restarts-cw 1]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # experiments/
import study  # noqa: E402

EPS, STEP, STEPS = 0.2, 0.01, 100
ROUNDS, PARTICLES = 10, 100
METHOD = study.Method("PGD-AT eps 0.2", "daa_fmnist")
NAMES = ["rand_fgsm", "pgd", "mim", "daa_blob", "daa_dgf"]
TITLES = {"rand_fgsm": "Rand+FGSM", "pgd": "PGD", "mim": "Momentum PGD", "daa_blob": "DAA-BLOB",
          "daa_dgf": "DAA-DGF"}


def attack_specs(loss: str):
    extra = {"loss": loss, "kappa": 50.0} if loss == "cw" else {"loss": "ce"}
    it = dict(eps=EPS, step_size=STEP, steps=STEPS, **extra)
    alg1 = dict(name="daa_algorithm1", rounds=ROUNDS, batch_size=PARTICLES, **it)
    return [
        dict(name="rfgsm", label=f"rand_fgsm/{loss}", eps=EPS, alpha=EPS / 2, **extra),
        dict(name="pgd", label=f"pgd/{loss}", random_start=True, **it),
        dict(name="mim", label=f"mim/{loss}", random_start=True, decay=1.0, **it),
        dict(alg1, label=f"daa_blob/{loss}", method="blob", c=1.5 if loss == "ce" else 15.0),
        dict(alg1, label=f"daa_dgf/{loss}", method="dgf", coef=1e-3 if loss == "ce" else 1e-2),
    ]


def evaluate_restarts(args, config, workdir):
    import jax
    import numpy as np

    from advjax import data, evaluate, train as train_lib
    path = os.path.join(HERE, "per_restart.npz")
    store = dict(np.load(path)) if os.path.exists(path) else {}
    meta_path = os.path.join(HERE, "per_restart_meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    state, model = train_lib.restore_state(config, workdir)
    f = train_lib.eval_logits_fn(model, state)
    x, y = data.load_numpy("fashion_mnist", "test", limit=args.n)
    for loss, restarts in (("ce", args.restarts_ce), ("cw", args.restarts_cw)):
        for r in range(restarts):
            tag = f"{loss}/r{r}"
            if tag in meta and meta[tag]["n"] == args.n:
                continue
            t0 = time.time()
            res = evaluate.robust_accuracy(f, (x, y), attack_specs(loss),
                                           key=jax.random.PRNGKey(1000 + r), batch_size=500)
            for k, v in res.correct.items():
                store[f"{tag}|{k}"] = v
            meta[tag] = {"n": res.n, "clean": res.clean, "attacks": res.attacks,
                         "seconds": {k: round(v, 1) for k, v in res.seconds.items()},
                         "wall_seconds": time.time() - t0}
            np.savez_compressed(path, **store)
            json.dump(meta, open(meta_path, "w"), indent=1)
            print(f"[{tag}] " + ", ".join(f"{k}={100 * v:.2f}" for k, v in res.attacks.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)


def paired_t(a, b):
    """Paired t-test over restarts: (mean difference, t, two-sided p); None for < 2 restarts or a
    zero standard deviation of the differences."""
    import numpy as np
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return None
    sd = d.std(ddof=1)
    if sd == 0:  # identical differences in every restart: t is undefined, not infinitely significant
        return None
    t = d.mean() / (sd / math.sqrt(len(d)))
    try:
        from scipy import stats
        p = float(2 * stats.t.sf(abs(t), len(d) - 1))
    except ImportError:
        p = float("nan")
    return float(d.mean()), float(t), p


def report(args, info, wall):
    import numpy as np
    store = dict(np.load(os.path.join(HERE, "per_restart.npz")))
    meta = json.load(open(os.path.join(HERE, "per_restart_meta.json")))
    lines = ["# daa_fmnist results", "",
             f"Command: `{study.command_line('daa_fmnist/standin', args.argv)}`", "",
             f"Training: {info['train_seconds']:.0f} s ({info['epochs']} epochs of "
             f"{info['train_images']} images); wall time of this invocation {wall:.0f} s.", ""]
    out = {"train": info, "restarts": meta}
    for loss in ("ce", "cw"):
        tags = sorted(t for t in meta if t.startswith(loss + "/"))
        if not tags:
            continue
        n = meta[tags[0]]["n"]
        lines += [f"## {loss.upper()} loss: {len(tags)} restart(s), n = {n}, eps = {EPS}", "",
                  f"clean accuracy {100 * meta[tags[0]]['clean']:.2f}%", "",
                  "| attack | accuracy, all restarts (%) | single restart: mean (sd) | "
                  "seconds per restart |", "|---|---:|---:|---:|"]
        worst, per_restart = {}, {}
        for name in NAMES:
            col = f"{name}/{loss}"
            runs = np.stack([store[f"{t}|{col}"] for t in tags])
            worst[name] = runs.all(axis=0)
            per_restart[name] = runs.mean(axis=1)
            secs = np.mean([meta[t]["seconds"][col] for t in tags])
            sd = per_restart[name].std(ddof=1) if len(tags) > 1 else float("nan")
            lines.append(f"| {TITLES[name]} | {100 * worst[name].mean():.2f} | "
                         f"{100 * per_restart[name].mean():.2f} ({100 * sd:.2f}) | {secs:.0f} |")
            out.setdefault(loss, {})[name] = {"all_restarts": float(worst[name].mean()),
                                              "per_restart": per_restart[name].tolist()}
        lines += ["", "Paired tests against PGD (same images; negative = DAA stronger):", ""]
        for name in ("daa_blob", "daa_dgf", "mim"):
            mc = study.mcnemar(worst[name], worst["pgd"])
            tt = paired_t(per_restart[name], per_restart["pgd"])
            ttxt = ("t-test over restarts: n/a (one restart, or the same difference in every "
                    "restart)" if tt is None else
                    f"t-test over restarts: mean diff {100 * tt[0]:+.2f} points, t = {tt[1]:.2f}, "
                    f"p = {tt[2]:.3g}")
            lines.append(f"- {TITLES[name]} vs PGD: McNemar (all restarts) {mc['a_only']} images "
                         f"only {TITLES[name]} gets right, {mc['b_only']} only PGD gets right, "
                         f"p = {mc['p']:.3g}; {ttxt}")
            out[loss][name + "_vs_pgd"] = {"mcnemar": mc, "t_test": tt}
        lines.append("")
    with open(os.path.join(HERE, "results.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(HERE, "results.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print("\n".join(lines))


def figure1(config, workdir, num_images=8):
    """Clean images, PGD and DAA-BLOB (one minibatch of M = 100, CE) examples and perturbations."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advjax import attacks, data, plots, train as train_lib
    state, model = train_lib.restore_state(config, workdir)
    f = train_lib.eval_logits_fn(model, state)
    x, y = data.load_numpy("fashion_mnist", "test", limit=PARTICLES)
    x, y = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    key = jax.random.PRNGKey(0)
    it = dict(eps=EPS, step_size=STEP, steps=STEPS)
    x_pgd = attacks.pgd(f, x, y, key=key, **it)
    x_daa = attacks.daa_blob(f, x, y, key=key, c=1.5, **it)
    pred = lambda z: np.asarray(jnp.argmax(f(z), -1))
    k = num_images
    rows = [("PGD", np.asarray(x_pgd[:k]), pred(x_pgd)[:k]),
            ("DAA-BLOB", np.asarray(x_daa[:k]), pred(x_daa)[:k])]
    plots.comparison_grid(os.path.join(HERE, "figure1.png"), np.asarray(x[:k]), np.asarray(y[:k]),
                          pred(x)[:k], rows, eps=EPS,
                          title=f"PGD-AT DAA CNN, linf eps {EPS}: PGD vs DAA-BLOB (c = 1.5, "
                                f"M = {PARTICLES} particles; red = misclassified)")


def main(argv=None):
    p = study.argument_parser("daa_fmnist", train_limit=20000, epochs=4, n=2000)
    p.add_argument("--stage", choices=["train", "eval", "report", "all"], default="all")
    p.add_argument("--restarts-ce", type=int, default=2)
    p.add_argument("--restarts-cw", type=int, default=1)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    study.pin_threads(args.threads)
    t0 = time.time()
    config, workdir, info = study.train(METHOD, study.common_overrides(args), args.workdir)
    print(f"trained: {info['train_seconds']:.0f} s", flush=True)
    if args.stage in ("eval", "all"):
        evaluate_restarts(args, config, workdir)
    if args.stage in ("report", "eval", "all"):
        report(args, info, time.time() - t0)
        figure1(config, workdir)


if __name__ == "__main__":
    main()
