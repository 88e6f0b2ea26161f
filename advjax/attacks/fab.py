"""FAB, the Fast Adaptive Boundary attack: Croce & Hein, "Minimally distorted adversarial examples with a
fast adaptive boundary attack", ICML 2020 (Algorithm 1; the projection of Sec. 3.1), in the form
AutoAttack runs it (untargeted FAB and targeted FAB-T, linf and l2).

FAB looks for the adversarial example of smallest l_p norm. Per example, from x^(0) = x_orig (or a
random start) and with f_l = z_l - z_y, each iteration

  1. linearizes the decision boundary of every class l != y at x^(i) and picks the closest one,
       s = argmin_l |f_l(x^(i))| / ||grad f_l(x^(i))||_q          (q dual to p; FAB-T: l = target),
     i.e. the hyperplane pi_s = {z : f_s(x^(i)) + <grad f_s(x^(i)), z - x^(i)> = 0};
  2. projects both x^(i) and x_orig onto pi_s inside the box (`project_to_hyperplane`):
       delta = proj_p(x^(i), pi_s) - x^(i),   delta_orig = proj_p(x_orig, pi_s) - x_orig;
  3. takes the biased step, with alpha = min(||delta|| / (||delta|| + ||delta_orig||), alpha_max),
       x^(i+1) = clip_box((1 - alpha)(x^(i) + eta delta) + alpha (x_orig + eta delta_orig));
  4. if x^(i+1) is misclassified: records it if its norm ||x^(i+1) - x_orig|| is the smallest so far,
     and steps back towards x_orig, x^(i+1) <- x_orig + beta (x^(i+1) - x_orig).
Published hyperparameters (also AutoAttack's): alpha_max = 0.1, eta = 1.05, beta = 0.9, 100 iterations.
Norms are floored at 1e-8 in alpha and the distances in step 1 get 1e-12 in the denominator, as in the
reference code.

As an attack with a budget eps (`fab`, `fab_t`): an example counts as broken if the smallest-norm
adversarial point found has norm <= eps; that point is returned, otherwise x itself (also for examples
misclassified at x). Restarts (`restarts`): the first run starts at x_orig, later ones at
x_orig + (eps / 2) t / ||t||_p with t ~ U(-1, 1)^d (linf) or N(0, I) (l2), clipped to the box, as the
AutoAttack code; each example keeps its first success. FAB-T (`fab_t`, `targeted=True`) runs, for the
t-th highest clean logit other than y (t = 1 .. num_target_classes, AutoAttack's 9), `restarts` runs
towards that class only (step 1 without the argmin); success is still misclassification. `y` holds
the true labels in both.

Departures from the reference code, all without effect on which examples are broken: the constant of
a hyperplane is computed as f_s(x^(i)) + <w, t - x^(i)> for the point t being projected, rather than
through b = <w, x^(i)> - f_s(x^(i)) (the same number, with less cancellation); an iteration loop stops
once every example of the batch has an adversarial point within eps (later iterations could only
shrink a norm that is already within the budget); the optional final line search of the authors'
first release (off by default there, absent from AutoAttack) is not implemented.

One XLA program: iterations in `lax.while_loop`, restarts and targets in `lax.fori_loop`, and a
target is skipped (`lax.cond`) when every example already succeeded. Deterministic given `key`.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from advjax import threat
from advjax.attacks import _validation as v
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9


# ------------------------------------------------------------------------------------------------
# Projection onto a hyperplane inside the box (Sec. 3.1)
# ------------------------------------------------------------------------------------------------

# Bisection steps for mu: the bracket shrinks to max(b) / 2^40, far below float32 resolution.
_BISECTION_STEPS = 40


def _solve_piecewise_linear(a, b, c):
    """Per row, the smallest mu >= 0 with sum_i a_i min(mu, b_i) = c (a, b >= 0, c >= 0); the
    largest b_i where no mu reaches c.

    The left-hand side h is piecewise linear and nondecreasing with breakpoints b_i. Bisection on mu
    keeps h(lo) < c <= h(hi) until the bracket is below float resolution; on it h is linear,
    h(mu) = sum_{b_i <= lo} a_i b_i + mu sum_{b_i > lo} a_i, which gives mu exactly. (O(n) per step:
    XLA's sort, the textbook way to find the segment, costs ~5x more on CPU.)
    """
    def h(mu):
        return jnp.sum(a * jnp.minimum(mu[:, None], b), axis=1)

    top = jnp.max(b, axis=1)
    feasible = h(top) >= c

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = h(mid) < c
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, (jnp.zeros_like(top), top))
    saturated = b <= lo[:, None]
    fixed = jnp.sum(jnp.where(saturated, a * b, 0.0), axis=1)
    slope = jnp.sum(jnp.where(saturated, 0.0, a), axis=1)
    mu = jnp.clip((c - fixed) / jnp.where(slope > 0, slope, 1.0), lo, hi)
    mu = jnp.where(feasible, mu, top)
    return jnp.where(c > 0, mu, 0.0)


def project_to_hyperplane(t: jax.Array, w: jax.Array, c: jax.Array, *, norm: str,
                          lo: float = 0.0, hi: float = 1.0) -> jax.Array:
    """Per row of (batch, n) arrays: the d of smallest ||d||_p with c + <w, d> = 0, lo <= t + d <= hi.

    That is the step from t onto the hyperplane {z : c + <w, z - t> = 0} (c = the linear function's
    value at t) inside the box, p = inf or 2 (Croce & Hein 2020, Sec. 3.1). Solved exactly: with the
    sign of w chosen so that c >= 0, moving coordinate i against sign(w_i) has room r_i (distance from
    t_i to the box's edge in that direction), and

      linf: d_i = -sign(w_i) min(mu, r_i);           mu solves sum_i |w_i| min(mu, r_i) = c,
      l2:   d_i = -sign(w_i) min(mu |w_i|, r_i);     mu solves sum_i w_i^2 min(mu, r_i / |w_i|) = c,

    (the KKT conditions of the two convex problems; `_solve_piecewise_linear` finds mu). If even the
    box corner (the largest mu) cannot reach the hyperplane, the corner is returned. Coordinates with
    w_i = 0 stay.
    """
    dtype = t.dtype
    sign = jnp.where(c >= 0, 1.0, -1.0).astype(dtype)
    w = w * sign[:, None]
    c = c * sign
    room = jnp.maximum(jnp.where(w > 0, t - lo, hi - t), 0.0)
    aw = jnp.abs(w)
    moves = aw > 0
    if norm == "linf":
        a, b = aw, room
    elif norm == "l2":
        a, b = aw * aw, room / jnp.where(moves, aw, 1.0)
    else:
        raise ValueError(f"norm must be 'linf' or 'l2' for FAB, got {norm!r}")
    a = jnp.where(moves, a, 0.0)
    b = jnp.where(moves, b, 0.0)
    mu = _solve_piecewise_linear(a, b, c)[:, None]
    size = jnp.minimum(mu, room) if norm == "linf" else jnp.minimum(mu * aw, room)
    return jnp.where(moves, -jnp.sign(w) * size, 0.0).astype(dtype)


# ------------------------------------------------------------------------------------------------
# One FAB run
# ------------------------------------------------------------------------------------------------

def _norm(a, norm):
    flat = a.reshape(a.shape[0], -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def _random_start(key, x, eps, norm, lo, hi):
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
    scale = (0.5 * eps) / (_norm(t, norm) + 1e-12)
    return jnp.clip(x + t * scale.reshape((-1,) + (1,) * (x.ndim - 1)), lo, hi)


def _boundary(logits_fn, x1, y, target):
    """(df, dg): f_l(x1) = z_l - z_y and its input gradient for the candidate classes l.

    Untargeted (target None): all classes, (batch, C) and (batch, C, n), f_y set to +inf so that
    y is never chosen. Targeted: the target class only, (batch, 1) and (batch, 1, n)."""
    b = x1.shape[0]
    logits, vjp = jax.vjp(logits_fn, x1)
    num_classes = logits.shape[-1]
    onehot_y = jax.nn.one_hot(y, num_classes, dtype=logits.dtype)
    if target is not None:
        ct = jax.nn.one_hot(target, num_classes, dtype=logits.dtype) - onehot_y
        (g,) = vjp(ct)
        df = jnp.sum(ct * logits, axis=-1)[:, None]
        return logits, df, g.reshape(b, 1, -1)
    cts = jnp.eye(num_classes, dtype=logits.dtype)[:, None, :] - onehot_y[None]  # (C, b, C)
    (g,) = jax.vmap(vjp)(cts)  # (C, b, ...)
    dg = jnp.moveaxis(g.reshape(num_classes, b, -1), 0, 1)
    df = logits - jnp.sum(onehot_y * logits, axis=-1, keepdims=True)
    df = jnp.where(onehot_y > 0, jnp.inf, df)
    return logits, df, dg


def _fab_run(logits_fn, x0, y, x_start, target, *, eps, norm, steps, alpha_max, eta, beta, lo,
             hi, todo):
    """One FAB run from x_start. Returns (x_out, best_norm): the smallest-norm misclassified iterate
    and its norm (+inf where none was found). Rows with todo = False are not attacked."""
    b = x0.shape[0]
    shape = x0.shape
    bshape = (-1,) + (1,) * (x0.ndim - 1)
    x0_flat = x0.reshape(b, -1)
    q_norm = "l1" if norm == "linf" else "l2"

    def dual_norm(g):  # g: (b, L, n)
        if q_norm == "l1":
            return jnp.sum(jnp.abs(g), axis=-1)
        return jnp.sqrt(jnp.sum(g * g, axis=-1))

    def step(x1):
        _, df, dg = _boundary(logits_fn, x1, y, target)
        dist = jnp.abs(df) / (dual_norm(dg) + 1e-12)
        s = jnp.argmin(dist, axis=1)
        w = jnp.take_along_axis(dg, s[:, None, None], axis=1)[:, 0]
        f_s = jnp.take_along_axis(df, s[:, None], axis=1)[:, 0]
        x1_flat = x1.reshape(b, -1)
        c0 = f_s + jnp.sum(w * (x0_flat - x1_flat), axis=1)
        d = project_to_hyperplane(jnp.concatenate([x1_flat, x0_flat]), jnp.concatenate([w, w]),
                                  jnp.concatenate([f_s, c0]), norm=norm, lo=lo, hi=hi)
        d1, d2 = d[:b], d[b:]
        a1 = jnp.maximum(_norm(d1, norm), 1e-8)
        a2 = jnp.maximum(_norm(d2, norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x_new = (1 - alpha) * (x1_flat + eta * d1) + alpha * (x0_flat + eta * d2)
        return jnp.clip(x_new, lo, hi).reshape(shape).astype(x0.dtype)

    def cond(state):
        i, _, _, best = state
        return (i < steps) & jnp.any(todo & ~(best <= eps))

    def body(state):
        i, x1, x_out, best = state
        x1 = step(x1)
        is_adv = (jnp.argmax(logits_fn(x1), axis=-1) != y) & todo
        dist = _norm(x1 - x0, norm)
        better = is_adv & (dist < best)
        x_out = jnp.where(better.reshape(bshape), x1, x_out)
        best = jnp.where(better, dist, best)
        x1 = jnp.where(is_adv.reshape(bshape), x0 + beta * (x1 - x0), x1).astype(x0.dtype)
        return i + 1, x1, x_out, best

    state = (jnp.int32(0), x_start, x0, jnp.full((b,), jnp.inf, x0.dtype))
    _, _, x_out, best = jax.lax.while_loop(cond, body, state)
    return x_out, best


# ------------------------------------------------------------------------------------------------
# The attacks
# ------------------------------------------------------------------------------------------------

def _check(logits_fn, x, y, key, eps, norm, steps, restarts, bounds, alpha_max, eta, beta):
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2' for FAB, got {norm!r}")
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(steps, "steps")
    v.check_positive_int(restarts, "restarts")
    for name, value in (("alpha_max", alpha_max), ("eta", eta), ("beta", beta)):
        v.check_nonnegative(value, name)
    v.check_key(key, restarts > 1, "FAB's restarts start at random points")
    lo, hi = threat.check_bounds(bounds)
    return lo, hi, v.check_batch(logits_fn, x, y, bounds=(lo, hi))


def fab(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        eps: Scalar, norm: str = "linf", steps: int = 100, restarts: int = 1,
        targeted: bool = False, num_target_classes: int = 9,
        alpha_max: float = ALPHA_MAX, eta: float = ETA, beta: float = BETA,
        bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """FAB (Croce & Hein, ICML 2020) with budget eps: see the module docstring.

    Args:
      y: the true labels (also for targeted=True, where the targets are the highest other classes).
      eps: the budget: a minimal-norm adversarial point is returned only if its norm is <= eps (and
        sets the radius eps / 2 of the restarts' random starts).
      steps: iterations per run (100 as published).
      restarts: runs per example (per target class if targeted); the first starts at x.
      targeted: FAB-T, towards each of the `num_target_classes` highest-scoring other classes.
      alpha_max, eta, beta: the published 0.1, 1.05, 0.9.
      bounds: the valid-input box (lo, hi).
    """
    lo, hi, num_classes = _check(logits_fn, x, y, key, eps, norm, steps, restarts, bounds,
                                 alpha_max, eta, beta)
    if targeted:
        v.check_positive_int(num_target_classes, "num_target_classes")
        if num_target_classes > num_classes - 1:
            raise ValueError(f"num_target_classes must be <= classes - 1 = {num_classes - 1}, "
                             f"got {num_target_classes}")
    n_targets = num_target_classes if targeted else 1
    bshape = (-1,) + (1,) * (x.ndim - 1)
    logits = logits_fn(x)
    correct = jnp.argmax(logits, axis=-1) == y
    order = None
    if targeted:
        others = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, logits)
        order = jnp.argsort(-others, axis=-1)[:, :num_target_classes]
    keys = jax.random.split(key, n_targets * restarts) if key is not None else None

    def one(i, state):
        x_adv, done = state
        todo = correct & ~done
        target = None if order is None else jnp.take(order, i // restarts, axis=1)
        start = x
        if restarts > 1:  # run r = i % restarts > 0 starts at a random point
            start = jnp.where(i % restarts > 0, _random_start(keys[i], x, eps, norm, lo, hi), x)

        def attack(_):
            x_out, best = _fab_run(logits_fn, x, y, start, target, eps=eps, norm=norm, steps=steps,
                                   alpha_max=alpha_max, eta=eta, beta=beta, lo=lo, hi=hi,
                                   todo=todo)
            still = jnp.argmax(logits_fn(x_out), axis=-1) == y
            return x_out, todo & (best <= eps) & ~still

        x_out, success = jax.lax.cond(jnp.any(todo), attack,
                                      lambda _: (x, jnp.zeros_like(done)), None)
        return jnp.where(success.reshape(bshape), x_out, x_adv), done | success

    state = (x, jnp.zeros(x.shape[0], bool))
    x_adv, _ = jax.lax.fori_loop(0, n_targets * restarts, one, state)
    return x_adv


def fab_t(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
          eps: Scalar, norm: str = "linf", steps: int = 100, restarts: int = 1,
          num_target_classes: int = 9,
          alpha_max: float = ALPHA_MAX, eta: float = ETA, beta: float = BETA,
          bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """FAB-T of AutoAttack: `fab(targeted=True)`; y holds the true labels."""
    return fab(logits_fn, x, y, key=key, eps=eps, norm=norm, steps=steps, restarts=restarts,
               targeted=True, num_target_classes=num_target_classes, alpha_max=alpha_max, eta=eta,
               beta=beta, bounds=bounds)
