"""The UDR toy problem (thesis Ch. 5, App. E): PGD-AT vs UDR-PGD on three 2-D Gaussians.

Data: A ~ N((-2, 0), 0.5 I) (class 0, 10%), B1 ~ N((2, 0), 0.5 I) and B2 ~ N((6, 0), 0.5 I) (class 1,
50% and 40%); 10k train / 2k test. MLP 2-10-10-10-2 (ReLU), Adam 1e-3, 30 epochs. Training attacks
k = 20, eps = 1.0, step 0.1 (linf); evaluation PGD k = 200, eps = 2.0, step 0.1. The paper reports
robust accuracy at eps = 2.0 of 82.6% (UDR-PGD) vs 74.5% (PGD-AT), and lambda decaying to 0.

The [0, 1] box. advjax's attacks clip to the box [0, 1]; the data live around (-4..8, -2..2). A fixed
isotropic affine map u = (x - (-8, -10)) / 20 puts the data and every point within 4 of it (the
farthest any attack here can move: the random start plus 20 steps of 0.1, or 200 steps projected to
eps 2) inside [0.2, 0.8] x [0.3, 0.7], so the box never binds. One scale for both coordinates keeps
linf balls linf balls; all distances shrink by s = 1/20: eps 1.0 -> 0.05, step 0.1 -> 0.005, eval eps
2.0 -> 0.1, tau = step -> 0.005. The lambda update (19) is in distance units, so its learning rate is
divided by s (0.02 -> 0.4): inside the ball this reproduces lambda's raw-coordinate trajectory
exactly; outside, Eq. (16)'s (c - eps) / tau is scale-free while eps is not, so outside-ball excesses
weigh 1/s more than in raw coordinates (the paper gives no toy values for lambda_0, eta_lambda, tau).

PGD-AT uses the loss of Eq. (5) with beta = 1, halved: 0.5 CE(x) + 0.5 CE(x_pgd) (advjax pgd_at with
mix = 0.5); UDR-PGD the same weights (natural_weight = beta = 0.5), so that in the hard-ball limit the
two are the same program. The batch size (not given in the paper) is 128.

UDR variants (App. E gives no lambda_0 / eta_lambda / tau; its Fig. 3 shows lambda = 0.1 and 0.01):
  * udr_pgd: the library defaults: lambda_0 = 1, tau = eta, eta_lambda = 0.02 (0.4 in scaled units;
    the authors' code's values), lambda updated by Eq. (19) with the linf distance (App. G).
  * udr_pgd_meanabs: the same with the authors' code's distance in (19), the mean |delta_j| over the
    coordinates.
  * udr_pgd_l0.1: the same from lambda_0 = 0.1.
  * udr_pgd_fixed0.1 / udr_pgd_fixed0.03: lambda held fixed (eta_lambda = 0), the soft ball of
    Fig. 3a/b.

    python experiments/udr_toy/run.py [--seeds 0 1 2] [--epochs 30] [--methods ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from advjax import attacks, models, objectives  # noqa: E402

ORIGIN = np.array([-8.0, -10.0], np.float32)
SCALE = 1.0 / 20.0
CENTERS = np.array([[-2.0, 0.0], [2.0, 0.0], [6.0, 0.0]], np.float32)
WEIGHTS = (0.1, 0.5, 0.4)
LABELS = (0, 1, 1)
STD = float(np.sqrt(0.5))

TRAIN_EPS, TRAIN_STEP, TRAIN_STEPS = 1.0, 0.1, 20
EVAL_EPS, EVAL_STEP, EVAL_STEPS = 2.0, 0.1, 200


def to_unit_box(x_raw: np.ndarray) -> np.ndarray:
    """The fixed affine map u = (x - (-8, -10)) / 20 (module docstring)."""
    return ((x_raw - ORIGIN) * SCALE).astype(np.float32)


def make_data(n: int, seed: int):
    """n points with exactly 10 / 50 / 40 % from A / B1 / B2, shuffled; raw coordinates."""
    rng = np.random.default_rng(seed)
    counts = [int(round(w * n)) for w in WEIGHTS]
    counts[-1] = n - sum(counts[:-1])
    xs = [rng.normal(CENTERS[i], STD, size=(k, 2)) for i, k in enumerate(counts)]
    ys = [np.full(k, LABELS[i]) for i, k in enumerate(counts)]
    perm = rng.permutation(n)
    return np.concatenate(xs)[perm].astype(np.float32), np.concatenate(ys)[perm].astype(np.int32)


# The compared methods: (label, objective name, UDR overrides). Scaled units: eps 0.05, step 0.005.
VARIANTS = {
    "pgd_at": ("PGD-AT", None),
    "udr_pgd": ("UDR-PGD, adaptive lambda (lambda_0 = 1, Eq. 19 with the linf distance)",
                dict(lambda_0=1.0)),
    "udr_pgd_meanabs": ("UDR-PGD, adaptive lambda, [code] distance mean |delta_j| in (19)",
                        dict(lambda_0=1.0, lambda_distance="mean_abs")),
    "udr_pgd_l0.1": ("UDR-PGD, adaptive lambda from lambda_0 = 0.1", dict(lambda_0=0.1)),
    "udr_pgd_fixed0.1": ("UDR-PGD, fixed lambda = 0.1 (eta_lambda = 0)",
                         dict(lambda_0=0.1, lambda_lr=0.0)),
    "udr_pgd_fixed0.03": ("UDR-PGD, fixed lambda = 0.03 (eta_lambda = 0)",
                          dict(lambda_0=0.03, lambda_lr=0.0)),
}


def objective_config(method: str):
    """(objective name, hyperparameters) of a VARIANTS entry, in the scaled units."""
    eps, step = TRAIN_EPS * SCALE, TRAIN_STEP * SCALE
    if method == "pgd_at":
        return "pgd_at", dict(eps=eps, step_size=step, steps=TRAIN_STEPS, mix=0.5)
    hp = dict(eps=eps, step_size=step, steps=TRAIN_STEPS, beta=0.5, natural_weight=0.5,
              lambda_0=1.0, lambda_lr=0.02 / SCALE, tau_steps=1.0, lambda_distance="threat")
    hp.update(VARIANTS[method][1])
    return "udr_pgd", hp


def train(method: str, seed: int = 0, *, epochs: int = 30, batch_size: int = 128, n_train=10000):
    """Trains one model; returns (logits_fn, per-epoch mean lambda (or None), wall seconds)."""
    x_tr, y_tr = make_data(n_train, seed=1000 + seed)
    x_tr = to_unit_box(x_tr)
    model = models.get_model("mlp", hidden=(10, 10, 10), num_classes=2)
    key = jax.random.PRNGKey(seed)
    k_init, k_method, k_train = jax.random.split(key, 3)
    params = model.init(k_init, jnp.zeros((1, 2)))["params"]
    name, hp = objective_config(method)
    obj = objectives.make_objective(name, model.apply, hp)
    method_state = obj.init_method_state(k_method)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    steps_per_epoch = len(x_tr) // batch_size

    def step(carry, inputs):
        params, opt_state, method_state = carry
        xb, yb, k = inputs
        state = {"model": {}, "method": method_state}
        (loss, aux), g = jax.value_and_grad(obj, has_aux=True)(
            params, state, {"image": xb, "label": yb}, k)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        lam = aux["metrics"].get("lambda", jnp.nan)
        return (params, opt_state, aux["state"]["method"]), lam

    @jax.jit
    def epoch(carry, xs, ys, keys):
        return jax.lax.scan(step, carry, (xs, ys, keys))

    rng = np.random.default_rng(seed)
    carry = (params, opt_state, method_state)
    lambdas = []
    t0 = time.perf_counter()
    for e in range(epochs):
        perm = rng.permutation(len(x_tr))[: steps_per_epoch * batch_size]
        xs = x_tr[perm].reshape(steps_per_epoch, batch_size, 2)
        ys = y_tr[perm].reshape(steps_per_epoch, batch_size)
        keys = jax.random.split(jax.random.fold_in(k_train, e), steps_per_epoch)
        carry, lam = epoch(carry, xs, ys, keys)
        lambdas.append(float(jnp.mean(lam)))
    params = carry[0]
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    logits_fn = jax.jit(lambda x: model.apply({"params": params}, x))
    return logits_fn, (None if method == "pgd_at" else lambdas), seconds


def evaluate(logits_fn, seed: int = 0, *, n_test: int = 2000):
    """(clean accuracy, PGD-200 accuracy at eps 2.0), on test data in the unit box."""
    x_te, y_te = make_data(n_test, seed=2000 + seed)
    x_te, y_te = jnp.asarray(to_unit_box(x_te)), jnp.asarray(y_te)
    clean = float(jnp.mean(jnp.argmax(logits_fn(x_te), -1) == y_te))
    attack = jax.jit(lambda x, y, k: attacks.pgd(
        logits_fn, x, y, key=k, eps=EVAL_EPS * SCALE, step_size=EVAL_STEP * SCALE,
        steps=EVAL_STEPS))
    x_adv = attack(x_te, y_te, jax.random.PRNGKey(10_000 + seed))
    robust = float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y_te))
    return clean, robust


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = {m: [] for m in args.methods}
    lambda_traj = {m: {} for m in args.methods}
    for seed in args.seeds:
        for m in rows:
            f, lambdas, secs = train(m, seed, epochs=args.epochs)
            clean, robust = evaluate(f, seed)
            rows[m].append((clean, robust))
            if lambdas is not None:
                lambda_traj[m][seed] = lambdas
            print(f"seed {seed} {m:18s} clean {100 * clean:5.1f}  PGD-200 eps 2.0 "
                  f"{100 * robust:5.1f}  ({secs:.1f} s)", flush=True)
    print()
    print("| method | clean acc. (%) | robust acc., PGD-200 eps 2.0 (%), mean +- std | per seed |")
    print("|---|---|---|---|")
    for m, r in rows.items():
        a = 100 * np.array(r)
        print(f"| {VARIANTS[m][0]} | {a[:, 0].mean():.1f} +- {a[:, 0].std():.1f} | "
              f"{a[:, 1].mean():.1f} +- {a[:, 1].std():.1f} | "
              f"{', '.join(f'{v:.1f}' for v in a[:, 1])} |")
    print("\nPaper (App. E): PGD-AT 74.5, UDR-PGD 82.6.")
    epochs_shown = sorted({0, 1, 2, 4, 9, 14, 19, 24, args.epochs - 1})
    print("\nlambda, mean over each epoch's steps (epoch: value):")
    for m, trajs in lambda_traj.items():
        for seed, traj in trajs.items():
            shown = ", ".join(f"{e + 1}: {traj[e]:.3f}" for e in epochs_shown if e < len(traj))
            print(f"  {m} seed {seed}: {shown}")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
