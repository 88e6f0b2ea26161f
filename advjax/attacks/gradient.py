"""Gradient attacks: FGSM/FGM, R+FGSM, BIM, PGD (with restarts), MIM, C&W-margin PGD, multi-targeted PGD.

Contract (all attacks here): `attack(logits_fn, x, y, *, key, **hyperparameters) -> x_adv`, with x_adv
of x's shape and dtype, inside B_p(x, eps) and the box `bounds` = (lo, hi), default (0, 1).
`logits_fn` maps a batch in the box to logits (for a model trained on normalized inputs, attack in
pixel space through `advjax.attacks.normalized(logits_fn, mean, std)`).
The attacks are per-example: every example's perturbation depends only on that example (provided
`logits_fn` treats examples independently, e.g. batch norm in inference mode), so the batched result
equals `jax.vmap` over single examples for deterministic settings. Random starts draw one noise tensor
for the whole batch, so with `random_start=True` a vmapped call (one key per example) agrees in
distribution only.

Steps run in `lax.fori_loop`, so memory does not depend on `steps`; `steps`, `restarts`, `norm`,
`loss`, `targeted`, `random_start`, `l1_k` and `bounds` are static (they change the program); `eps`
and `step_size` may be traced scalars, so an eps sweep does not recompile.

Default step sizes and step counts (where the literature has a standard):
  pgd, cw_pgd, multitargeted_pgd: step_size = 2.5 eps / steps, the Madry lab's rule (Madry et al.
    2018 and their `robustness` library), which lets the iterate travel 2.5 eps in all, enough to
    cross the ball from any start. `steps` has no single standard (Madry et al. train with 40 steps
    on MNIST and 7 on CIFAR-10) and is required.
  bim: Kurakin et al. (2017, "basic iterative method"): a step of one intensity level,
    (hi - lo) / 255, and min(eps + 4, 1.25 eps) steps with eps in intensity levels (needs a
    concrete eps).
  mim: Dong et al. (2018, experiments): steps T = 10, step_size = eps / T, decay mu = 1.
  rfgsm: alpha = eps / 2 (Tramer et al. 2018).

Targeted attacks (`targeted=True`) take the target labels as `y` and maximize -loss(logits, y).
Success is misclassification (untargeted) or hitting the target (targeted); restarts keep, per example,
the successful result if any restart succeeds, else the one with the highest objective.

References (the thesis' Ch. 2 collects these definitions, Eqs. 2.18-2.24):
  FGSM  Goodfellow, Shlens, Szegedy (ICLR 2015), Eq. 3: x + eps sign(grad).
  FGM   Miyato et al. 2017 / Kurakin et al. 2017 (l2: x + eps g/||g||_2); l1: top-k step of Shaham et al.
  R+FGSM Tramer et al. (ICLR 2018), Eq. 7: x' = x + alpha sign(N(0, I)), then (eps - alpha) sign(grad).
  BIM   Kurakin, Goodfellow, Bengio (2017): iterated FGSM from x with projection.
  PGD   Madry et al. (ICLR 2018), Eq. 2.24 of the thesis: BIM from a uniform random start.
  MIM   Dong et al. (CVPR 2018), Alg. 1: g <- mu g + grad / ||grad||_1, step along sign(g).
  C&W   Carlini & Wagner (S&P 2017) margin loss optimized by PGD (ADT paper's C&W column).
  MT    Gowal et al. 2019 (multi-targeted): targeted PGD on z_t - z_y towards every other class.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]
Loss = Union[str, losses_lib.LossFn]


# ----------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------

def _objective(logits_fn: LogitsFn, loss_fn, y, targeted: bool):
    """Per-example objective to maximize and the gradient of its sum (= per-example gradients)."""
    sign = -1.0 if targeted else 1.0

    def per_example(xa):
        logits = logits_fn(xa)
        return sign * loss_fn(logits, y), logits

    def total(xa):
        obj, logits = per_example(xa)
        return jnp.sum(obj), (obj, logits)

    def value_and_grad(xa):
        """(per-example objective, logits, gradient) at xa, from one forward and backward pass."""
        (_, (obj, logits)), g = jax.value_and_grad(total, has_aux=True)(xa)
        return obj, logits, g

    return per_example, value_and_grad


def _success(logits, y, targeted: bool):
    pred = jnp.argmax(logits, axis=-1)
    return pred == y if targeted else pred != y


def _score(per_example, x_adv, y, targeted):
    obj, logits = per_example(x_adv)
    return obj, _success(logits, y, targeted)


def _keep_better(best, new):
    """Per-example choice between two (x_adv, objective, success) triples: success first, then objective."""
    bx, bo, bs = best
    nx, no, ns = new
    take = (ns & ~bs) | ((ns == bs) & (no > bo))
    bcast = take.reshape((-1,) + (1,) * (bx.ndim - 1))
    return jnp.where(bcast, nx, bx), jnp.where(take, no, bo), bs | ns


def _resolve_loss(logits_fn, x, loss, kappa):
    logits_nat = logits_fn(x) if loss == "kl" else None
    return losses_lib.get_loss(loss, kappa=kappa, logits_nat=logits_nat)


def _iterate(value_and_grad, x, x_start, *, eps, step_size, steps: int, norm: str, l1_k: int,
             decay: Optional[float], bounds: Bounds = DEFAULT_BOUNDS):
    """`steps` projected steepest-ascent steps from x_start (momentum if `decay` is set)."""
    dtype = x.dtype

    def body(_, carry):
        x_adv, g_mom = carry
        _, _, g = value_and_grad(x_adv)
        if decay is not None:
            # MIM (Dong et al. 2018, Alg. 1 line 6): accumulate the l1-normalized gradient.
            l1 = threat.norm_of(g, "l1").reshape((-1,) + (1,) * (g.ndim - 1))
            g = decay * g_mom + g / (l1 + 1e-12)
            g_mom = g
        x_adv = x_adv + (step_size * threat.steepest_ascent(g, norm, l1_k)).astype(dtype)
        x_adv = threat.project_to_threat(x_adv, x, eps, norm, bounds)
        return x_adv, g_mom

    x_adv, _ = jax.lax.fori_loop(0, steps, body, (x_start, jnp.zeros_like(x)))
    return x_adv


def _check_common(logits_fn, x, y, eps, norm, bounds=DEFAULT_BOUNDS):
    threat.check_norm(norm)
    v.check_nonnegative(eps, "eps")
    return v.check_batch(logits_fn, x, y, bounds=bounds)


def madry_step_size(eps: Scalar, steps: int) -> Scalar:
    """The default PGD step size 2.5 eps / steps (the Madry lab's rule; traceable in eps)."""
    return 2.5 * eps / steps


def kurakin_steps(eps: float, bounds: Bounds = DEFAULT_BOUNDS) -> int:
    """BIM's step count min(eps + 4, 1.25 eps), eps in intensity levels of 1/255 of the box
    (Kurakin, Goodfellow, Bengio 2017, the basic iterative method); at least 1. Needs a concrete
    eps."""
    if not v.is_concrete(eps):
        raise ValueError("steps is required when eps is traced (BIM's default step count "
                         "min(eps + 4, 1.25 eps) needs a concrete eps)")
    lo, hi = bounds
    levels = round(float(eps) * 255.0 / (hi - lo), 6)  # 8/255 * 255 = 8.000000000000002
    return max(1, int(min(levels + 4.0, 1.25 * levels)))


# ----------------------------------------------------------------------------------------------
# Single-step attacks
# ----------------------------------------------------------------------------------------------

def fgm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        eps: Scalar, norm: str = "linf", loss: Loss = "ce", kappa: float = float("inf"),
        targeted: bool = False, l1_k: int = 1, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Fast gradient method: one steepest-ascent step of length eps, x + eps * v*(grad), in the box.

    linf: FGSM (Goodfellow et al. 2015, Eq. 3). l2: x + eps g/||g||_2. l1: eps on the top-l1_k
    coordinates of |g| (robust-optimization paper, Sec. 4.1). `key` is unused (kept for the contract).
    For a linear loss this is the exact maximizer over the ball (before the box clip).
    """
    del key
    bounds = threat.check_bounds(bounds)
    _check_common(logits_fn, x, y, eps, norm, bounds)
    loss_fn = _resolve_loss(logits_fn, x, loss, kappa)
    _, value_and_grad = _objective(logits_fn, loss_fn, y, targeted)
    _, _, g = value_and_grad(x)
    x_adv = x + (eps * threat.steepest_ascent(g, norm, l1_k)).astype(x.dtype)
    return threat.project_to_threat(x_adv, x, eps, norm, bounds)


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
         eps: Scalar, loss: Loss = "ce", kappa: float = float("inf"), targeted: bool = False,
         bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """FGSM (Goodfellow et al., ICLR 2015, Eq. 3; thesis Eq. 2.18): clip(x + eps sign(grad L), lo, hi)."""
    return fgm(logits_fn, x, y, key=key, eps=eps, norm="linf", loss=loss, kappa=kappa,
               targeted=targeted, bounds=bounds)


def rfgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
          alpha: Optional[Scalar] = None, loss: Loss = "ce", kappa: float = float("inf"),
          targeted: bool = False, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """R+FGSM (Tramer et al., ICLR 2018, Eq. 7; thesis Eq. 2.19), linf.

    x' = clip(x + alpha sign(N(0, I))), then x_adv = x' + (eps - alpha) sign(grad_x L(x')), projected
    onto the eps-ball and the box. alpha defaults to eps / 2 (Tramer et al. use alpha = eps / 2).
    """
    bounds = threat.check_bounds(bounds)
    _check_common(logits_fn, x, y, eps, "linf", bounds)
    v.check_key(key, True, "R+FGSM takes a random step")
    alpha = eps / 2 if alpha is None else alpha
    v.check_nonnegative(alpha, "alpha")
    if v.is_concrete(alpha) and v.is_concrete(eps) and alpha > eps:
        raise ValueError(f"alpha must be <= eps, got alpha={alpha}, eps={eps}")
    loss_fn = _resolve_loss(logits_fn, x, loss, kappa)
    _, value_and_grad = _objective(logits_fn, loss_fn, y, targeted)
    noise = jnp.sign(jax.random.normal(key, x.shape, x.dtype))
    x1 = threat.clip_to_box(x + (alpha * noise).astype(x.dtype), *bounds)
    _, _, g = value_and_grad(x1)
    x_adv = x1 + ((eps - alpha) * jnp.sign(g)).astype(x.dtype)
    return threat.project_to_threat(x_adv, x, eps, "linf", bounds)


# ----------------------------------------------------------------------------------------------
# Iterative attacks
# ----------------------------------------------------------------------------------------------

def _iterative_attack(logits_fn, x, y, *, key, eps, step_size, steps, norm, loss, kappa,
                      random_start, restarts, targeted, l1_k, decay, x_init=None,
                      bounds=DEFAULT_BOUNDS):
    bounds = threat.check_bounds(bounds)
    _check_common(logits_fn, x, y, eps, norm, bounds)
    steps = v.check_positive_int(steps, "steps")
    step_size = madry_step_size(eps, steps) if step_size is None else step_size
    v.check_nonnegative(step_size, "step_size")
    restarts = v.check_positive_int(restarts, "restarts")
    v.check_key(key, random_start or restarts > 1, "random_start=True or restarts > 1")
    if x_init is not None and x_init.shape != x.shape:
        raise ValueError(f"x_init must have x's shape {x.shape}, got {x_init.shape}")
    loss_fn = _resolve_loss(logits_fn, x, loss, kappa)
    per_example, value_and_grad = _objective(logits_fn, loss_fn, y, targeted)

    def one_run(k):
        if x_init is not None:
            start = threat.project_to_threat(x_init.astype(x.dtype), x, eps, norm, bounds)
        elif random_start:
            start = threat.clip_to_box(x + threat.random_init(k, x, eps, norm), *bounds)
        else:
            start = x
        return _iterate(value_and_grad, x, start, eps=eps, step_size=step_size, steps=steps,
                        norm=norm, l1_k=l1_k, decay=decay, bounds=bounds)

    if restarts == 1:
        return one_run(key)

    keys = jax.random.split(key, restarts)
    first = one_run(keys[0])
    best = (first,) + _score(per_example, first, y, targeted)

    def body(i, best):
        x_adv = one_run(keys[i])
        return _keep_better(best, (x_adv,) + _score(per_example, x_adv, y, targeted))

    return jax.lax.fori_loop(1, restarts, body, best)[0]


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        eps: Scalar, steps: int, step_size: Optional[Scalar] = None, norm: str = "linf",
        loss: Loss = "ce", kappa: float = float("inf"), random_start: bool = True,
        restarts: int = 1, targeted: bool = False, l1_k: int = 1,
        x_init: Optional[jax.Array] = None, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Projected gradient descent (Madry et al., ICLR 2018; thesis Eq. 2.24), any l_p ball.

    x_{t+1} = Pi_{B_p(x, eps) n [lo,hi]}( x_t + step_size * v*(grad_x loss(logits_fn(x_t), y)) ),
    with v* the normalized steepest-ascent direction (`threat.steepest_ascent`) and x_0 uniform in the
    ball (`random_start=True`), x itself, or `x_init` (e.g. TRADES' x + 0.001 N(0, I)).
    `restarts` independent runs keep each example's strongest result. Returns the last iterate.
    step_size defaults to 2.5 eps / steps (`madry_step_size`); `bounds` = (lo, hi) is the
    valid-input box (default (0, 1)).
    """
    return _iterative_attack(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps,
                             norm=norm, loss=loss, kappa=kappa, random_start=random_start,
                             restarts=restarts, targeted=targeted, l1_k=l1_k, decay=None,
                             x_init=x_init, bounds=bounds)


def bim(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        eps: Scalar, steps: Optional[int] = None, step_size: Optional[Scalar] = None,
        norm: str = "linf", loss: Loss = "ce", kappa: float = float("inf"),
        targeted: bool = False, l1_k: int = 1, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Basic iterative method (Kurakin et al. 2017; thesis Eq. 2.20): PGD started at x, no restarts.

    Defaults (Kurakin et al. 2017, images of 255 intensity levels): step_size = one level,
    (hi - lo) / 255; steps = min(eps + 4, 1.25 eps) with eps in levels (`kurakin_steps`; needs a
    concrete eps, so pass `steps` when eps is traced).
    """
    bounds = threat.check_bounds(bounds)
    steps = kurakin_steps(eps, bounds) if steps is None else steps
    step_size = (bounds[1] - bounds[0]) / 255.0 if step_size is None else step_size
    return pgd(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, norm=norm,
               loss=loss, kappa=kappa, random_start=False, restarts=1, targeted=targeted, l1_k=l1_k,
               bounds=bounds)


def mim(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        eps: Scalar, steps: int = 10, step_size: Optional[Scalar] = None, decay: float = 1.0,
        norm: str = "linf", loss: Loss = "ce", kappa: float = float("inf"),
        random_start: bool = False, restarts: int = 1, targeted: bool = False, l1_k: int = 1,
        bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Momentum iterative method (Dong et al., CVPR 2018, Alg. 1; thesis Eqs. 2.22-2.23).

    g_{t+1} = decay * g_t + grad_t / ||grad_t||_1;  x_{t+1} = Pi(x_t + step_size * v*(g_{t+1})),
    where v* is sign for linf (the paper) and the normalized steepest-ascent direction for l2/l1.
    Starts at x by default (the paper); `random_start=True` gives DAA's "Momentum PGD".
    Defaults are the paper's (its experiments): steps = 10, step_size = eps / steps, decay = 1.
    """
    steps = v.check_positive_int(steps, "steps")
    step_size = eps / steps if step_size is None else step_size
    return _iterative_attack(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps,
                             norm=norm, loss=loss, kappa=kappa, random_start=random_start,
                             restarts=restarts, targeted=targeted, l1_k=l1_k, decay=float(decay),
                             bounds=bounds)


def cw_pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
           eps: Scalar, steps: int, step_size: Optional[Scalar] = None,
           kappa: float = float("inf"), norm: str = "linf", random_start: bool = True,
           restarts: int = 1, targeted: bool = False,
           bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """PGD on the C&W margin loss (Carlini & Wagner 2017, f_6; the ADT paper's "C&W" column, 30 steps).

    Maximizes min(max_{j != y} z_j - z_y, kappa) (`losses.cw_margin`). step_size defaults to
    2.5 eps / steps, as `pgd`.
    """
    return pgd(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, norm=norm,
               loss="cw", kappa=kappa, random_start=random_start, restarts=restarts,
               targeted=targeted, bounds=bounds)


def _targeted_margin(target):
    """z_t - z_y: the multi-targeted surrogate of Gowal et al. (2019), maximized towards class t."""

    def loss(logits, y):
        z_t = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
        z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        return z_t - z_y

    return loss


def multitargeted_pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                      key: Optional[jax.Array] = None, eps: Scalar, steps: int,
                      step_size: Optional[Scalar] = None, norm: str = "linf",
                      num_targets: Optional[int] = None, random_start: bool = True, l1_k: int = 1,
                      bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Multi-targeted PGD (Gowal et al. 2019; the thesis' Ch. 3 "multi-targeted" column).

    For each target t among the `num_targets` classes other than y with the highest clean logits
    (default: all C - 1 other classes), run PGD maximizing z_t - z_y, and keep per example the result
    that is misclassified if any is, else the one with the largest C&W margin max_{j != y} z_j - z_y.
    Untargeted overall: y holds the true labels. Targets run in a `lax.fori_loop` (one program).
    step_size defaults to 2.5 eps / steps, as `pgd`.
    """
    bounds = threat.check_bounds(bounds)
    num_classes = _check_common(logits_fn, x, y, eps, norm, bounds)
    steps = v.check_positive_int(steps, "steps")
    step_size = madry_step_size(eps, steps) if step_size is None else step_size
    v.check_nonnegative(step_size, "step_size")
    n_t = num_classes - 1 if num_targets is None else v.check_positive_int(num_targets, "num_targets")
    if n_t > num_classes - 1:
        raise ValueError(f"num_targets must be <= classes - 1 = {num_classes - 1}, got {n_t}")
    v.check_key(key, random_start, "random_start=True")
    keys = jax.random.split(key, n_t) if random_start else None
    # Rank the other classes by clean logit, true class pushed last.
    z = logits_fn(x)
    z = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, z)
    order = jnp.argsort(-z, axis=-1)[:, :n_t]
    margin = lambda logits, yy: losses_lib.cw_margin(logits, yy)

    def run(i):
        target = order[:, i]
        _, value_and_grad = _objective(logits_fn, _targeted_margin(target), y, False)
        start = x
        if random_start:
            start = threat.clip_to_box(x + threat.random_init(keys[i], x, eps, norm), *bounds)
        x_adv = _iterate(value_and_grad, x, start, eps=eps, step_size=step_size, steps=steps,
                         norm=norm, l1_k=l1_k, decay=None, bounds=bounds)
        logits = logits_fn(x_adv)
        return x_adv, margin(logits, y), _success(logits, y, False)

    best = run(0)
    return jax.lax.fori_loop(1, n_t, lambda i, b: _keep_better(b, run(i)), best)[0]
