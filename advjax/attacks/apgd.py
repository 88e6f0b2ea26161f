"""Auto-PGD (APGD-CE, APGD-DLR, APGD-T) of AutoAttack: Croce & Hein, ICML 2020, Algorithm 1.

Per example, with eta^(0) = 2 eps and momentum alpha = 0.75:

    z^(k+1) = P_S( x^(k) + eta^(k) v*(grad f(x^(k))) )
    x^(k+1) = P_S( x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha) (x^(k) - x^(k-1)) )   (alpha = 1 at k = 0)

where S is the eps-ball intersected with the box `bounds` (default [0, 1]) and v* the steepest-ascent
direction (sign for linf, g/||g||_2 for l2). The best point x_max (highest f) is tracked. At the checkpoints
w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), the step
size halves and the iterate restarts from x_max if
  Condition 1: the loss increased in at most rho = 0.75 of the steps since the last checkpoint, or
  Condition 2: the step size was not reduced at the last checkpoint and f_max has not improved since.
The checkpoints are computed from this formula, in exact integer arithmetic (p_j in hundredths; in
floating point 0.22 + 0.19 = 0.41000000000000003, and ceil(0.41... * 100) would give 42, not 41). A
checkpoint is evaluated as soon as x^(w_j) is available, i.e. right after the w_j-th step, as in the
reference code: Conditions 1 and 2 only involve iterates up to x^(w_j), and the halved step size
applies from the next step on. (Algorithm 1 of the paper tests "k in W" one step later, after
computing x^(w_j + 1), which it then overwrites with x_max when the step size is halved; the
reference code, and this implementation, skip that step.) Condition 1 counts increases with
"<= rho (w_j - w_{j-1})" as the reference code does (the paper writes "<"; they differ only when
rho times the window is an integer). The reference code keeps the schedule as window lengths
int(0.22 N), shrinking by int(0.03 N) down to int(0.06 N): for N a multiple of 100 that is the paper's
schedule -- for N = 100, w = 22, 41, 57, 70, 80, 87, 93, 99 -- but not for other N (for N = 50 the paper
gives w = 11, 21, 29, 35, 40, 44, 47, 50, while fixed-size window decrements drift away from it), so
the paper's formula is what is implemented here.

Random start: x + eps t / ||t||_p with t ~ U(-1, 1)^d (linf) or N(0, I) (l2), as in the reference code.
Returned point, per example: the first misclassified iterate if one was found (what AutoAttack
reports), otherwise x_max. The other departure from the reference code: its first oscillation window
compares the first loss against an uninitialized 0; here it is compared with f(x^(0)), which is what
Condition 1 of the paper says.

APGD-T (`apgd_t`) runs APGD with the targeted DLR loss (Eq. 7) towards each of the `num_target_classes`
classes with the highest clean logits after the true one, keeping the first success. Success always
means misclassification (AutoAttack's convention). This is the published target choice: the reference
code (fra31/auto-attack, `APGDAttack_targeted.perturb`) targets, for k = 2, ..., n_target_classes + 1,
the k-th most likely class under the clean logits, with n_target_classes = 9 in the standard
AutoAttack, and attacks only correctly classified points, for which the k-th most likely class is the
(k-1)-th most likely class other than y, what `targets.ranked_targets` returns (for a misclassified
point it never includes y, unlike the k-th overall). With explicit `targets` (one class per example,
e.g. from `advjax.attacks.targets`), `apgd_t` is a targeted attack: one targeted-DLR run per restart
towards that class, success meaning the target is predicted. l1 is not supported (APGD-l1 is a
different algorithm, Croce & Hein 2021).

`eps` may be traced; `steps`, `restarts`, `norm`, `loss`, `num_target_classes` and `bounds` are static.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.attacks import targets as targets_lib
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]

RHO = 0.75
MOMENTUM = 0.75


def checkpoints(steps: int) -> list:
    """The paper's checkpoints w_0 = 0 < w_1 < ... <= N (Croce & Hein 2020, Sec. 3.2).

    w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    computed with p_j in integer hundredths so that no rounding error moves a ceiling. For small N some
    ceil(p_j N) coincide; the set W keeps one of each.
    """
    p_prev, p = 0, 22  # hundredths
    w = [0]
    while True:
        wj = -(-p * steps // 100)  # ceil(p * steps / 100), exactly
        if wj > steps:
            return w
        if wj > w[-1]:
            w.append(wj)
        p_prev, p = p, p + max(p - p_prev - 3, 6)


def checkpoint_schedule(steps: int) -> tuple:
    """Boolean checkpoint mask and window lengths, both of length `steps` (iteration index i).

    A checkpoint is evaluated after iteration i (0-based; it produces x^(i+1)) iff i + 1 = w_j for some
    j >= 1 (`checkpoints`); `window[i]` is then w_j - w_{j-1}, the number of steps Condition 1 counts.
    """
    is_check = np.zeros(steps, bool)
    window = np.zeros(steps, np.int32)
    w = checkpoints(steps)
    for prev, cur in zip(w[:-1], w[1:]):
        is_check[cur - 1] = True
        window[cur - 1] = cur - prev
    return is_check, window


def _start(key, x, eps, norm, bounds=DEFAULT_BOUNDS):
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
    scale = eps / (threat.norm_of(t, norm) + 1e-12)
    return threat.clip_to_box(x + t * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype),
                              *bounds)


def _apgd_run(logits_fn, x, y, loss_fn, key, *, eps, steps: int, norm: str,
              bounds=DEFAULT_BOUNDS, target=None):
    """One APGD run; returns (x_out, best loss, success) per example. Success is misclassification,
    or predicting `target` when it is given (a targeted run)."""
    dtype = x.dtype
    b = x.shape[0]
    bshape = (-1,) + (1,) * (x.ndim - 1)

    def total(xa):
        logits = logits_fn(xa)
        val = loss_fn(logits, y)
        return jnp.sum(val), (val, logits)

    vg = jax.value_and_grad(total, has_aux=True)

    def evaluate(xa):
        (_, (val, logits)), g = vg(xa)
        pred = jnp.argmax(logits, -1)
        return val, (pred != y) if target is None else (pred == target), g

    def proj(xa):
        return threat.project_to_threat(xa, x, eps, norm, bounds)

    x0 = _start(key, x, eps, norm, bounds)
    f0, succ0, g0 = evaluate(x0)
    is_check, window = checkpoint_schedule(steps)
    is_check = jnp.asarray(is_check)

    state = dict(
        x=x0, x_prev=x0, g=g0, f=f0,
        x_max=x0, f_max=f0, g_max=g0,
        eta=jnp.full((b,), 2.0, dtype) * eps,
        n_incr=jnp.zeros((b,), jnp.int32),
        f_max_last_check=f0, reduced_last_check=jnp.ones((b,), bool),
        x_succ=x0, found=succ0,
    )

    def body(i, s):
        alpha = jnp.where(i > 0, MOMENTUM, 1.0).astype(dtype)
        step = (s["eta"].reshape(bshape) * threat.steepest_ascent(s["g"], norm)).astype(dtype)
        z = proj(s["x"] + step)
        x_new = proj(s["x"] + alpha * (z - s["x"]) + (1 - alpha) * (s["x"] - s["x_prev"]))
        f_new, succ, g_new = evaluate(x_new)

        new_succ = succ & ~s["found"]
        x_succ = jnp.where(new_succ.reshape(bshape), x_new, s["x_succ"])
        found = s["found"] | succ
        n_incr = s["n_incr"] + (f_new > s["f"]).astype(jnp.int32)
        better = f_new > s["f_max"]
        x_max = jnp.where(better.reshape(bshape), x_new, s["x_max"])
        g_max = jnp.where(better.reshape(bshape), g_new, s["g_max"])
        f_max = jnp.where(better, f_new, s["f_max"])

        def at_checkpoint(_):
            k = jnp.asarray(window)[i]
            cond1 = n_incr.astype(dtype) <= RHO * k.astype(dtype)
            cond2 = ~s["reduced_last_check"] & (s["f_max_last_check"] >= f_max)
            reduce = cond1 | cond2
            rb = reduce.reshape(bshape)
            return dict(
                x=jnp.where(rb, x_max, x_new), g=jnp.where(rb, g_max, g_new),
                eta=jnp.where(reduce, s["eta"] / 2, s["eta"]),
                n_incr=jnp.zeros_like(n_incr), f_max_last_check=f_max, reduced_last_check=reduce)

        def no_checkpoint(_):
            return dict(x=x_new, g=g_new, eta=s["eta"], n_incr=n_incr,
                        f_max_last_check=s["f_max_last_check"],
                        reduced_last_check=s["reduced_last_check"])

        upd = jax.lax.cond(is_check[i], at_checkpoint, no_checkpoint, None)
        return dict(s, x_prev=s["x"], f=f_new, x_max=x_max, f_max=f_max, g_max=g_max,
                    x_succ=x_succ, found=found, **upd)

    s = jax.lax.fori_loop(0, steps, body, state)
    x_out = jnp.where(s["found"].reshape(bshape), s["x_succ"], s["x_max"])
    return x_out, s["f_max"], s["found"]


def _keep(best, new):
    bx, bf, bs = best
    nx, nf, ns = new
    take = (ns & ~bs) | ((ns == bs) & (nf > bf))
    tb = take.reshape((-1,) + (1,) * (bx.ndim - 1))
    return jnp.where(tb, nx, bx), jnp.where(take, nf, bf), bs | ns


def _check(logits_fn, x, y, key, eps, steps, restarts, norm, bounds=DEFAULT_BOUNDS):
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2' for APGD, got {norm!r}")
    v.check_nonnegative(eps, "eps")
    num_classes = v.check_batch(logits_fn, x, y, bounds=bounds)
    v.check_positive_int(steps, "steps")
    v.check_positive_int(restarts, "restarts")
    v.check_key(key, True, "APGD starts at a random point")
    return num_classes


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
         steps: int = 100, norm: str = "linf", loss: Union[str, Callable] = "ce",
         restarts: int = 1, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Untargeted APGD (Croce & Hein 2020, Alg. 1) with `loss` "ce" (APGD-CE) or "dlr" (APGD-DLR).

    `restarts` runs from independent random starts keep each example's first success, else its
    highest loss. steps = 100 is AutoAttack's. `bounds` = (lo, hi): the valid-input box. See the
    module docstring for the exact schedule.
    """
    bounds = threat.check_bounds(bounds)
    _check(logits_fn, x, y, key, eps, steps, restarts, norm, bounds)
    loss_fn = losses_lib.get_loss(loss)
    keys = jax.random.split(key, restarts)
    best = _apgd_run(logits_fn, x, y, loss_fn, keys[0], eps=eps, steps=steps, norm=norm,
                     bounds=bounds)
    if restarts == 1:
        return best[0]
    body = lambda i, b: _keep(b, _apgd_run(logits_fn, x, y, loss_fn, keys[i], eps=eps,
                                            steps=steps, norm=norm, bounds=bounds))
    return jax.lax.fori_loop(1, restarts, body, best)[0]


def apgd_ce(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
            steps: int = 100, norm: str = "linf", restarts: int = 1,
            bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """APGD-CE of AutoAttack: `apgd` with the cross-entropy loss."""
    return apgd(logits_fn, x, y, key=key, eps=eps, steps=steps, norm=norm, loss="ce",
                restarts=restarts, bounds=bounds)


def apgd_t(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
           steps: int = 100, norm: str = "linf", num_target_classes: int = 9,
           restarts: int = 1, targets: Optional[jax.Array] = None,
           bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """APGD-T of AutoAttack: APGD on the targeted DLR loss (Croce & Hein 2020, Eq. 7).

    For the t-th highest-scoring class other than y (t = 1..num_target_classes, AutoAttack's default 9;
    `targets.ranked_targets`), run `restarts` APGD runs maximizing
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2); keep each example's first misclassified result, else
    the highest loss. y holds the true labels.

    targets: optional (batch,) int classes, one per example (e.g. from `advjax.attacks.targets`).
      Then the attack is targeted: `restarts` runs towards that class only (num_target_classes is
      ignored), keeping each example's first iterate predicted as its target, else the highest loss.
    """
    bounds = threat.check_bounds(bounds)
    num_classes = _check(logits_fn, x, y, key, eps, steps, restarts, norm, bounds)
    if targets is not None:
        targets_lib.check_targets(targets, y, num_classes)
        keys = jax.random.split(key, restarts)

        def run_to(i):
            loss_fn = lambda logits, yy: losses_lib.dlr_targeted(logits, yy, targets)
            return _apgd_run(logits_fn, x, y, loss_fn, keys[i], eps=eps, steps=steps, norm=norm,
                             bounds=bounds, target=targets)

        best = run_to(0)
        return jax.lax.fori_loop(1, restarts, lambda i, b: _keep(b, run_to(i)), best)[0]
    v.check_positive_int(num_target_classes, "num_target_classes")
    if num_target_classes > num_classes - 1:
        raise ValueError(f"num_target_classes must be <= classes - 1 = {num_classes - 1}, "
                         f"got {num_target_classes}")
    order = targets_lib.ranked_targets(logits_fn(x), y, num_target_classes)
    keys = jax.random.split(key, num_target_classes * restarts)

    def run(i):
        target = order[:, i // restarts]
        loss_fn = lambda logits, yy: losses_lib.dlr_targeted(logits, yy, target)
        return _apgd_run(logits_fn, x, y, loss_fn, keys[i], eps=eps, steps=steps, norm=norm,
                         bounds=bounds)

    best = run(0)
    return jax.lax.fori_loop(1, num_target_classes * restarts, lambda i, b: _keep(b, run(i)),
                             best)[0]
