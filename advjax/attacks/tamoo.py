"""TA-MOO, Task-Oriented Multi-Objective Optimization attacks (thesis Ch. 4, Sec. 3, Alg. 1, Thm. 1).

An attack with m tasks maximizes losses f_1..f_m of one perturbation delta. Every step of Algorithm 1
computes the per-task gradients G (m x d), Q = G G^T, weights w on the simplex and steps along
g = sum_i w_i grad f_i:  delta <- Pi(delta + eta_delta v*(g)) (v* = sign for linf, Alg. 1 lines 11-13).

Weightings (`weighting`):
  * "uniform": w = 1/m (PGD on the sum of the losses).
  * "moo":     MGDA (Ch. 2, Eq. 2.31): w = argmin_{w in simplex} w^T Q w, by K gradient steps on
               alpha with w = softmax(alpha), alpha warm-started across attack steps (Alg. 1 lines 6-10).
  * "tamoo":   Ch. 4, Eq. 3: w^T Q w + lambda Omega(w), Omega of Theorem 1 (Eq. 6) with the achieved
               tasks of the current iterate; with no achieved task Omega = 0 and TA-MOO is MOO exactly.
  * "minmax":  Wang et al. (2021), max_delta min_{w in simplex} sum_i w_i f_i + gamma/2 ||w - 1/m||^2
               (gamma = 3): one projected-gradient step on w per attack step (learning rate
               `minmax_lr`, warm-started), then the delta step along sum_i w_i grad f_i.

Omega for s = m (every task achieved): the thesis leaves it undefined (the extended simplex
{0_s} x S_u is empty); we use Omega = sum_i w_i^2 (the first sum of Eq. 6 alone, i.e. the distance to
the origin), which is what the authors' code (1e-8 added to m - s) gives up to a w-independent
constant, so the w gradients agree.

Settings (Ch. 4, Sec. 3.2): each is a function `attack(..., x, y, *, key, eps, step_size, steps, ...)`.
  * `tamoo_ens(logits_fns, x, y, ...)`: ENS, f_i = loss(h_i(x + delta), y), goal argmax h_i != y;
    per-example (weights per example).
  * `tamoo_eot(logits_fn, x, y, ...)`: EoT over the seven deterministic transformations of Table 9
    (`EOT_TRANSFORMS`), f_i = loss(h(t_i(x + delta)), y); per-example.
  * `tamoo_uni(logits_fn, x, y, ..., group_size=K)`: UNI, one delta shared by each group of K
    consecutive images, f_i = loss(h(x_i + delta), y_i). BATCH-LEVEL: examples interact within groups
    (`tamoo_uni.batch_level = True`); the batch size must be a multiple of K.
Metrics: `a_all` (fraction of problems with every task achieved) and `a_avg` (mean task success);
`ens_success`, `eot_success`, `uni_success` give the (problems, m) success matrices.

Box: every attack takes `bounds` = (lo, hi) (default (0, 1)); x + delta is clipped to it. The EoT
transformations are defined on images in [0, 1] (they clip to it, e.g. brightness); with other
bounds they act on (x - lo) / (hi - lo) and map back.

Defaults (App. C): eta_w = 0.005, K = 10, lambda = 100; losses "ce", "kl" or "cw" (C&W margin
relu(max_{j != y} z_j - z_y + 50), App. C) or any (logits, y) -> per-example loss.

Text vs released scripts (`settings(setting, weighting, eps, variant)` returns the keyword
arguments; the authors' `TAMOO` repository, `run_ensemble.sh`, `run_uniper.sh`, `run_eot.sh`, `moo_gd_v4.py`,
`minmax_pt.py`, read for this):
  * "thesis" (App. C): every setting and weighting 100 steps of eps/4 (2/255 at 8/255), TA-MOO
    lambda = 100, eta_w = 0.005, K = 10, no entropy bonus; MOO the same solver without Omega;
    MinMax gamma = 3 with weight learning rate 0.01 (the thesis names no rate); losses ENS CE,
    UNI and EoT C&W (Table 5 and Sec. 4.4 use CW).
  * "release": TA-MOO always subtracts 20 x the entropy of the unachieved weights (App. E.1's bonus,
    `entropy_weight=20`); eta_w = 0.025 for ENS (the scripts pass no rate: the default), 0.005 for
    UNI and EoT; lambda = 100 for ENS and EoT but 10 for UNI; MOO takes ONE gradient step on alpha
    per attack step with a uniform regularizer 20 ||w - 1/m||^2 (`inner_steps=1`,
    `uniform_weight=20`) at the default rate 0.025 (0.005 for EoT); MinMax's weight rate is 0.025;
    UNI runs Uniform and MinMax for 50 steps, MOO and TA-MOO for 100; step sizes 0.007 (ENS, UNI)
    and 0.01 (EoT) at eps = 0.031, i.e. eps x 0.226 and eps x 0.323; losses ENS CE, UNI CE (the
    scripts' --loss_type=ce), EoT CW. The release's ENS "Uniform" is PGD on the ensemble output
    (its `PGD_Linf_ENS` attacks the mean-probability ensemble), not on the sum of member losses
    (`RELEASE_ENS_UNIFORM_ATTACKS_ENSEMBLE_OUTPUT`; the caller runs `attacks.pgd` for it).
    Not reproduced: the release updates delta with the previous step's weights before solving for
    the new ones (we solve, then step) and starts from U(0, eps) (we use U(-eps, eps)).
Stochastic EoT (Table 9, right column): `tamoo_eot(..., stochastic=True)` draws fresh transformation
parameters for every example, task and attack step (`STOCHASTIC_EOT_TRANSFORMS`); `eot_success(...,
stochastic_key=k)` scores one draw. Not implemented: App. D.4's gradient memory (our gamma correction
has a finite gradient everywhere, see `gamma_correction_per_example`); App. E.1's entropy bonus is
`entropy_weight` (0 by default; the authors' code uses 20 for EoT).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

WEIGHTINGS = ("uniform", "moo", "tamoo", "minmax")


# ----------------------------------------------------------------------------------------------
# Simplex weights
# ----------------------------------------------------------------------------------------------

def omega(w: jax.Array, achieved: jax.Array) -> jax.Array:
    """Theorem 1 (Ch. 4, Eq. 6): squared distance of w in the simplex to the extended simplex
    {0_s} x S_u, = sum_{achieved} w_i^2 + (1 - sum_{unachieved} w_i)^2 / (m - s).

    s = number of achieved tasks. On the simplex 1 - sum_{unachieved} w_i = sum_{achieved} w_i; the
    right-hand side is what we compute, so that Omega and its gradient are exactly 0 when s = 0 (TA-MOO
    is then MOO bit for bit). s = m gives sum_i w_i^2 (see the module docstring). Last axis = tasks.
    """
    achieved = achieved.astype(bool)
    m_minus_s = jnp.sum(~achieved, axis=-1)
    w_achieved = jnp.where(achieved, w, 0.0)
    achieved_part = jnp.sum(w_achieved * w_achieved, axis=-1)
    gap = jnp.sum(w_achieved, axis=-1)
    unachieved_part = jnp.where(m_minus_s > 0, gap * gap / jnp.maximum(m_minus_s, 1), 0.0)
    return achieved_part + unachieved_part


def weight_objective(alpha: jax.Array, q: jax.Array, achieved: jax.Array, lam: Scalar,
                     entropy_weight: Scalar = 0.0, uniform_weight: Scalar = 0.0) -> jax.Array:
    """softmax(alpha)^T Q softmax(alpha) + lambda Omega (Ch. 4, Eq. 3) for one problem (alpha (m,)).

    entropy_weight > 0 subtracts that multiple of the entropy of the unachieved weights (App. E.1);
    uniform_weight > 0 adds uniform_weight ||w - 1/m||^2 (the released MOO solver's regularizer)."""
    w = jax.nn.softmax(alpha)
    value = w @ q @ w + lam * omega(w, achieved)
    if entropy_weight:
        ent = -jnp.sum(jnp.where(achieved, 0.0, w * jnp.log(w + 1e-12)))
        value = value - entropy_weight * ent
    if uniform_weight:
        value = value + uniform_weight * jnp.sum(jnp.square(w - 1.0 / w.shape[-1]))
    return value


def solve_weights(alpha: jax.Array, q: jax.Array, achieved: jax.Array, *, lam: Scalar = 0.0,
                  lr: Scalar = 0.005, inner_steps: int = 10, entropy_weight: Scalar = 0.0,
                  uniform_weight: Scalar = 0.0) -> jax.Array:
    """K steps of gradient descent on alpha (Ch. 4, Alg. 1 lines 6-10); batched over leading axes.

    Returns the new alpha (warm start for the next attack step); w = softmax(alpha)."""
    grad_fn = jax.grad(weight_objective)
    for _ in range(q.ndim - 2):
        grad_fn = jax.vmap(grad_fn, in_axes=(0, 0, 0, None, None, None))

    def body(_, a):
        return a - lr * grad_fn(a, q, achieved, lam, entropy_weight, uniform_weight)

    return jax.lax.fori_loop(0, inner_steps, body, alpha)


def project_simplex(w: jax.Array) -> jax.Array:
    """Euclidean projection of each row (last axis) onto the probability simplex (sort-based)."""
    m = w.shape[-1]
    u = jnp.sort(w, axis=-1)[..., ::-1]
    css = jnp.cumsum(u, axis=-1)
    ks = jnp.arange(1, m + 1, dtype=w.dtype)
    cond = u - (css - 1.0) / ks > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(m), 0), axis=-1, keepdims=True)
    theta = (jnp.take_along_axis(css, rho, axis=-1) - 1.0) / (rho + 1).astype(w.dtype)
    return jnp.maximum(w - theta, 0.0)


def minmax_weights(w: jax.Array, task_losses: jax.Array, *, gamma: Scalar = 3.0,
                   lr: Scalar = 0.01) -> jax.Array:
    """One projected-gradient step on w of min_w sum_i w_i f_i + gamma/2 ||w - 1/m||^2 (Wang et al.
    2021, the MinMax baseline of Ch. 4, Sec. 4); batched over leading axes."""
    m = w.shape[-1]
    grad = task_losses + gamma * (w - 1.0 / m)
    return project_simplex(w - lr * grad)


# ----------------------------------------------------------------------------------------------
# The attack loop (Algorithm 1)
# ----------------------------------------------------------------------------------------------

def _task_gradients(task_fn, delta):
    """(losses (P, m), achieved (P, m), grads (P, m, ...)) with one forward pass and m backward passes.

    task_fn(delta) -> (losses, achieved); problem p's losses depend on delta[p] only."""
    (task_losses, vjp_fn, achieved) = jax.vjp(task_fn, delta, has_aux=True)
    m = task_losses.shape[1]

    def grad_of_task(i):
        cot = jnp.zeros_like(task_losses).at[:, i].set(1.0)
        return vjp_fn(cot)[0]

    # lax.map, not vmap: JAX cannot batch the VJP of a custom_vjp layer (advjax.models.layers.Conv's
    # default) when the attack runs inside a pmapped training step's gradient (TA-MOO AT).
    grads = jax.lax.map(grad_of_task, jnp.arange(m))          # (m, P, ...)
    return task_losses, achieved, jnp.moveaxis(grads, 0, 1)


def _moo_attack(task_fn, delta0, project, *, m, step_size, steps, norm, weighting, lam, lr_w,
                inner_steps, gamma, minmax_lr, entropy_weight, uniform_weight=0.0, task_key=None):
    """Algorithm 1 of Ch. 4 on a (P, ...) perturbation; returns the last iterate delta_L.

    task_key: if given, task_fn takes (delta, key) and step t passes fold_in(task_key, t) (stochastic
    tasks, e.g. EoT with random transformation parameters)."""
    problems = delta0.shape[0]
    alpha0 = jnp.full((problems, m), 1.0 / m, delta0.dtype)   # Alg. 1 line 2
    w0 = jnp.full((problems, m), 1.0 / m, delta0.dtype)

    def body(t, carry):
        delta, alpha, w_mm = carry
        step_fn = task_fn if task_key is None else (
            lambda d: task_fn(d, jax.random.fold_in(task_key, t)))
        task_losses, achieved, grads = _task_gradients(step_fn, delta)
        flat = grads.reshape(problems, m, -1)
        if weighting == "uniform":
            w = w0
        elif weighting == "minmax":
            w_mm = minmax_weights(w_mm, jax.lax.stop_gradient(task_losses), gamma=gamma,
                                  lr=minmax_lr)
            w = w_mm
        else:
            q = jnp.einsum("pid,pjd->pij", flat, flat)
            reg = lam if weighting == "tamoo" else 0.0
            alpha = solve_weights(alpha, q, achieved, lam=reg, lr=lr_w, inner_steps=inner_steps,
                                  entropy_weight=entropy_weight if weighting == "tamoo" else 0.0,
                                  uniform_weight=uniform_weight)
            w = jax.nn.softmax(alpha, axis=-1)
        g = jnp.einsum("pi,pi...->p...", w, grads)
        delta = project(delta + (step_size * threat.steepest_ascent(g, norm)).astype(delta.dtype))
        return delta, alpha, w_mm

    delta, _, _ = jax.lax.fori_loop(0, steps, body, (delta0, alpha0, w0))
    return delta


def _check(weighting, eps, step_size, steps, norm, key, random_start, x, bounds=DEFAULT_BOUNDS):
    v.check_in_box(x, bounds)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    threat.check_norm(norm)
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_key(key, random_start, "random_start=True")
    return v.check_positive_int(steps, "steps")


def _resolve_loss(loss):
    if loss == "kl":
        return None  # needs natural logits per task: handled by the callers
    if loss == "cw":
        return lambda logits, y: jax.nn.relu(losses_lib.cw_margin(logits, y) + 50.0)
    return losses_lib.get_loss(loss)


def _task_loss(loss, logits, y, logits_nat):
    if loss == "kl":
        return losses_lib.kl_divergence(jax.lax.stop_gradient(logits_nat), logits)
    return _resolve_loss(loss)(logits, y)


def _start(key, x, eps, norm, random_start):
    if random_start:
        return threat.random_init(key, x, eps, norm)
    return jnp.zeros_like(x)


_COMMON_DOC = """
    weighting: "uniform" | "moo" | "tamoo" | "minmax". lam: lambda of Eq. 3 (TA-MOO only). lr_w,
    inner_steps: eta_w and K of Alg. 1. gamma, minmax_lr: MinMax's gamma and weight learning rate.
    entropy_weight: App. E.1's entropy bonus (TA-MOO only). uniform_weight: the released MOO
    solver's uniform regularizer (MOO and TA-MOO). `settings(...)` gives the thesis' and the
    released scripts' values. loss: "ce" | "kl" | "cw" | callable. random_start: delta_0 ~ U(ball)
    (Alg. 1 line 1)."""


def tamoo_ens(logits_fns: Any, x: jax.Array, y: jax.Array, *,
              key: Optional[jax.Array] = None, eps: Scalar, step_size: Scalar, steps: int,
              norm: str = "linf", weighting: str = "tamoo", loss: Any = "ce", lam: float = 100.0,
              lr_w: float = 0.005, inner_steps: int = 10, gamma: float = 3.0,
              minmax_lr: float = 0.01, entropy_weight: float = 0.0, uniform_weight: float = 0.0,
              random_start: bool = True, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """ENS (Ch. 4, Sec. 3.2): one perturbation per example against every member h_i of an ensemble;
    task i = fool member i (argmax h_i(x + delta) != y). Per-example.

    logits_fns: a sequence of member logits functions, or one callable x -> member logits (m, B, C)
    (e.g. an `Ensemble` applied with return_members=True: all members in one vectorized pass)."""
    bounds = threat.check_bounds(bounds)
    steps = _check(weighting, eps, step_size, steps, norm, key, random_start, x, bounds)
    if callable(logits_fns):
        stacked = logits_fns
        m = jax.eval_shape(stacked, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape[0]
        members = lambda xa: list(stacked(xa))
    else:
        fns = tuple(logits_fns)
        m = len(fns)
        members = lambda xa: [f(xa) for f in fns]
    nat = members(x) if loss == "kl" else [None] * m

    def task_fn(delta):
        xa = threat.clip_to_box(x + delta, *bounds)
        outs = members(xa)
        task_losses = jnp.stack([_task_loss(loss, o, y, n) for o, n in zip(outs, nat)], axis=1)
        achieved = jnp.stack([jnp.argmax(o, -1) != y for o in outs], axis=1)
        return task_losses, achieved

    project = lambda d: threat.project_to_threat(x + d, x, eps, norm, bounds) - x
    delta0 = project(_start(key, x, eps, norm, random_start))
    delta = _moo_attack(task_fn, delta0, project, m=m, step_size=step_size, steps=steps,
                        norm=norm, weighting=weighting, lam=lam, lr_w=lr_w,
                        inner_steps=inner_steps, gamma=gamma, minmax_lr=minmax_lr,
                        entropy_weight=entropy_weight, uniform_weight=uniform_weight)
    return threat.project_to_threat(x + delta, x, eps, norm, bounds)


tamoo_ens.__doc__ += _COMMON_DOC


def tamoo_ens_members(logits_fn: Callable, x: jax.Array, y: jax.Array, *,
                      key: Optional[jax.Array] = None, eps: Scalar, step_size: Scalar,
                      steps: int, norm: str = "linf", weighting: str = "tamoo", loss: Any = "ce",
                      lam: float = 100.0, lr_w: float = 0.005, inner_steps: int = 10,
                      gamma: float = 3.0, minmax_lr: float = 0.01, entropy_weight: float = 0.0,
                      uniform_weight: float = 0.0, random_start: bool = True,
                      bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """ENS (thesis Ch. 4, Sec. 3.2, Alg. 1): `tamoo_ens` against the members of an ensemble given as
    ONE logits function, so that ENS runs from a config like any attack (registered as
    "tamoo_ens_members"): `logits_fn.members(x)` must return the member logits (m, B, C);
    `advjax.train.eval_logits_fn` sets it for an `Ensemble` model. Arguments as `tamoo_ens`."""
    members = getattr(logits_fn, "members", None)
    if not callable(members):
        raise ValueError("logits_fn: the ENS attack needs the ensemble's members, a callable "
                         "logits_fn.members(x) -> (members, batch, classes) (set by "
                         "advjax.train.eval_logits_fn for an ensemble model); for separate "
                         "networks call tamoo_ens with a list of logits functions")
    return tamoo_ens(members, x, y, key=key, eps=eps, step_size=step_size, steps=steps, norm=norm,
                     weighting=weighting, loss=loss, lam=lam, lr_w=lr_w, inner_steps=inner_steps,
                     gamma=gamma, minmax_lr=minmax_lr, entropy_weight=entropy_weight,
                     uniform_weight=uniform_weight, random_start=random_start, bounds=bounds)


def tamoo_uni(logits_fn: Callable, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
              eps: Scalar, step_size: Scalar, steps: int, group_size: int, norm: str = "linf",
              weighting: str = "tamoo", loss: Any = "ce", lam: float = 100.0,
              lr_w: float = 0.005, inner_steps: int = 10, gamma: float = 3.0,
              minmax_lr: float = 0.01, entropy_weight: float = 0.0, uniform_weight: float = 0.0,
              random_start: bool = True, valid: Optional[jax.Array] = None,
              bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """UNI (Ch. 4, Sec. 3.2): one perturbation shared by each group of `group_size` = K consecutive
    images; task i = fool image i of the group. BATCH-LEVEL (batch size a multiple of K).

    valid: optional (B,) bool row mask (`advjax.evaluate` pads the last batch): a padded row's task
    has zero loss and counts as achieved, so it neither pushes delta nor draws TA-MOO's weight."""
    bounds = threat.check_bounds(bounds)
    steps = _check(weighting, eps, step_size, steps, norm, key, random_start, x, bounds)
    k = v.check_positive_int(group_size, "group_size")
    if x.shape[0] % k:
        raise ValueError(f"batch size {x.shape[0]} is not a multiple of group_size {k}")
    groups = x.shape[0] // k
    xg = x.reshape((groups, k) + x.shape[1:])
    nat = logits_fn(x) if loss == "kl" else None

    def task_fn(delta):
        xa = threat.clip_to_box(xg + delta[:, None], *bounds).reshape(x.shape)
        out = logits_fn(xa)
        task_losses = _task_loss(loss, out, y, nat).reshape(groups, k)
        achieved = (jnp.argmax(out, -1) != y).reshape(groups, k)
        if valid is not None:
            real = valid.reshape(groups, k)
            task_losses = jnp.where(real, task_losses, 0.0)
            achieved = achieved | ~real
        return task_losses, achieved

    project = lambda d: threat.project(d, eps, norm)
    delta0 = project(_start(key, xg[:, 0], eps, norm, random_start))
    delta = _moo_attack(task_fn, delta0, project, m=k, step_size=step_size, steps=steps,
                        norm=norm, weighting=weighting, lam=lam, lr_w=lr_w,
                        inner_steps=inner_steps, gamma=gamma, minmax_lr=minmax_lr,
                        entropy_weight=entropy_weight, uniform_weight=uniform_weight)
    x_adv = threat.clip_to_box(xg + delta[:, None], *bounds).reshape(x.shape)
    return x_adv.astype(x.dtype)


tamoo_uni.__doc__ += _COMMON_DOC
tamoo_uni.batch_level = True


# ----------------------------------------------------------------------------------------------
# EoT: the deterministic transformations of Table 9 (Ch. 4, App. C), NHWC in [0, 1]
# ----------------------------------------------------------------------------------------------

def identity(x: jax.Array) -> jax.Array:
    """t(x) = x."""
    return x


def hflip(x: jax.Array) -> jax.Array:
    """Horizontal flip (width axis)."""
    return x[:, :, ::-1, :]


def vflip(x: jax.Array) -> jax.Array:
    """Vertical flip (height axis)."""
    return x[:, ::-1, :, :]


def center_crop_resize(x: jax.Array, fraction: float = 0.6) -> jax.Array:
    """The central `fraction` of height and width, resized back bilinearly (Table 9: crop 0.6)."""
    _, h, w, ch = x.shape
    ch_h, ch_w = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch_h) // 2, (w - ch_w) // 2
    crop = x[:, top:top + ch_h, left:left + ch_w, :]
    return jnp.clip(jax.image.resize(crop, x.shape, "bilinear"), 0.0, 1.0)


def brightness(x: jax.Array, factor: float = 1.3) -> jax.Array:
    """clip(factor * x, 0, 1) (Table 9: brightness 1.3)."""
    return jnp.clip(x * factor, 0.0, 1.0)


def gamma_correction(x: jax.Array, gamma: float = 1.3) -> jax.Array:
    """x ** gamma (Table 9: gamma 1.3); stays in [0, 1]."""
    return jnp.power(jnp.clip(x, 0.0, 1.0), gamma)


def rotate(x: jax.Array, degrees: float = 10.0) -> jax.Array:
    """Rotation by `degrees` counter-clockwise (as displayed, row 0 on top; torchvision's convention)
    about the image center, bilinear, zero fill (Table 9: rotation 10)."""
    _, h, w, _ = x.shape
    theta = -math.radians(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype),
                              indexing="ij")
    # Inverse map: output pixel (r, c) samples the input at the point rotated by -theta.
    src_r = cy + (rows - cy) * math.cos(theta) - (cols - cx) * math.sin(theta)
    src_c = cx + (rows - cy) * math.sin(theta) + (cols - cx) * math.cos(theta)

    def one_channel(img):
        return jax.scipy.ndimage.map_coordinates(img, [src_r, src_c], order=1, mode="constant",
                                                 cval=0.0)

    per_image = jax.vmap(one_channel, in_axes=2, out_axes=2)     # over channels
    return jnp.clip(jax.vmap(per_image)(x), 0.0, 1.0)


EOT_TRANSFORMS = {
    "identity": identity,
    "hflip": hflip,
    "vflip": vflip,
    "center_crop": center_crop_resize,
    "brightness": brightness,
    "rotation": rotate,
    "gamma": gamma_correction,
}


def _in_unit_box(t, bounds):
    """t (defined on images in [0, 1]) applied to images in the box `bounds`: rescale, t, back."""
    lo, hi = bounds
    if (lo, hi) == DEFAULT_BOUNDS:
        return t
    return lambda x, *args: lo + (hi - lo) * t((x - lo) / (hi - lo), *args)


def _transforms(names, bounds=DEFAULT_BOUNDS):
    names = tuple(EOT_TRANSFORMS) if names is None else tuple(names)
    unknown = [n for n in names if n not in EOT_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown EoT transforms {unknown}; valid: {sorted(EOT_TRANSFORMS)}")
    return [_in_unit_box(EOT_TRANSFORMS[n], bounds) for n in names]


# Stochastic EoT (Table 9, right column): parameters drawn per example. Each entry is
# t(key, x) -> transformed x; the transforms are differentiable in x.

def _resample(x, src_r, src_c):
    """Bilinear resampling of each image of x (NHWC) at per-example source coordinates (B, H, W),
    zero fill outside the image."""
    def one_image(img, r, c):
        return jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(
            ch, [r, c], order=1, mode="constant", cval=0.0), in_axes=2, out_axes=2)(img)
    return jnp.clip(jax.vmap(one_image)(x, src_r, src_c), 0.0, 1.0)


def _grid(x):
    _, h, w, _ = x.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype),
                              indexing="ij")
    return rows, cols, (h - 1) / 2.0, (w - 1) / 2.0


def center_crop_resize_per_example(x: jax.Array, fractions: jax.Array) -> jax.Array:
    """Central crop of `fractions[b]` of each side of image b, resized back (bilinear, by sampling
    the input at the center + (pixel - center) * fraction); traceable fractions, unlike
    `center_crop_resize`, whose crop size is static."""
    rows, cols, cy, cx = _grid(x)
    f = fractions.astype(x.dtype)[:, None, None]
    return _resample(x, cy + (rows - cy) * f, cx + (cols - cx) * f)


def rotate_per_example(x: jax.Array, degrees: jax.Array) -> jax.Array:
    """`rotate` with one (traceable) angle per image."""
    rows, cols, cy, cx = _grid(x)
    theta = -jnp.deg2rad(degrees.astype(x.dtype))[:, None, None]
    src_r = cy + (rows - cy) * jnp.cos(theta) - (cols - cx) * jnp.sin(theta)
    src_c = cx + (rows - cy) * jnp.sin(theta) + (cols - cx) * jnp.cos(theta)
    return _resample(x, src_r, src_c)


def gamma_correction_per_example(x: jax.Array, gammas: jax.Array) -> jax.Array:
    """x ** gamma[b] with a finite gradient everywhere: for gamma < 1 the derivative of x ** gamma is
    infinite at x = 0 (the overflow the thesis reports in App. D.4 on stochastic EoT); here pixels at
    exactly 0 map to 0 with gradient 0, all others as x ** gamma."""
    g = gammas.astype(x.dtype)[:, None, None, None]
    xc = jnp.clip(x, 0.0, 1.0)
    positive = xc > 0
    safe = jnp.where(positive, xc, 1.0)
    return jnp.where(positive, jnp.power(safe, g), 0.0)


def _per_example_uniform(key, x, low, high):
    return jax.random.uniform(key, (x.shape[0],), x.dtype, low, high)


def _random_flip(flip):
    def t(key, x):
        coin = jax.random.bernoulli(key, 0.5, (x.shape[0],))[:, None, None, None]
        return jnp.where(coin, flip(x), x)
    return t


STOCHASTIC_EOT_TRANSFORMS = {
    "identity": lambda key, x: x,
    "hflip": _random_flip(hflip),                                   # p = 0.5
    "vflip": _random_flip(vflip),                                   # p = 0.5
    "center_crop": lambda key, x: center_crop_resize_per_example(
        x, _per_example_uniform(key, x, 0.6, 1.0)),                 # scale ~ U(0.6, 1.0)
    "brightness": lambda key, x: jnp.clip(
        x * _per_example_uniform(key, x, 1.0, 1.3)[:, None, None, None], 0.0, 1.0),  # U(1.0, 1.3)
    "rotation": lambda key, x: rotate_per_example(
        x, _per_example_uniform(key, x, -10.0, 10.0)),              # angle ~ U(-10, 10)
    "gamma": lambda key, x: gamma_correction_per_example(
        x, _per_example_uniform(key, x, 0.7, 1.3)),                 # gamma ~ U(0.7, 1.3)
}


def _stochastic_transforms(names, key, bounds=DEFAULT_BOUNDS):
    """[x -> t_i(x)] with the parameters of task i drawn from `key` (one key per task)."""
    names = tuple(EOT_TRANSFORMS) if names is None else tuple(names)
    _transforms(names)  # validates the names
    keys = jax.random.split(key, len(names))
    return [_in_unit_box(functools.partial(STOCHASTIC_EOT_TRANSFORMS[n], k), bounds)
            for n, k in zip(names, keys)]


def tamoo_eot(logits_fn: Callable, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
              eps: Scalar, step_size: Scalar, steps: int,
              transforms: Optional[Sequence[str]] = None, norm: str = "linf",
              weighting: str = "tamoo", loss: Any = "ce", lam: float = 100.0,
              lr_w: float = 0.005, inner_steps: int = 10, gamma: float = 3.0,
              minmax_lr: float = 0.01, entropy_weight: float = 0.0, uniform_weight: float = 0.0,
              random_start: bool = True, stochastic: bool = False,
              bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """EoT (Ch. 4, Sec. 3.2, Table 9): one perturbation per example that fools the model under every
    deterministic transformation t_i (`transforms`, names of EOT_TRANSFORMS, default all seven);
    task i = argmax h(t_i(x + delta)) != y. Per-example.

    stochastic: Table 9's stochastic setting; task i is the family of t_i (STOCHASTIC_EOT_TRANSFORMS:
    flips with p = 0.5, crop scale U(0.6, 1), brightness U(1, 1.3), rotation U(-10, 10) degrees,
    gamma U(0.7, 1.3)), with parameters drawn afresh for every example, task and step (one sample
    of the expectation per step); needs `key`, and the same key gives the same attack."""
    bounds = threat.check_bounds(bounds)
    steps = _check(weighting, eps, step_size, steps, norm, key, random_start or stochastic, x,
                   bounds)
    if stochastic:
        key, task_key = jax.random.split(key)
        _transforms(transforms)
    else:
        task_key = None
        ts = _transforms(transforms, bounds)

    def task_fn(delta, step_key=None):
        tfs = ts if step_key is None else _stochastic_transforms(transforms, step_key, bounds)
        nat = [logits_fn(t(x)) for t in tfs] if loss == "kl" else [None] * len(tfs)
        xa = threat.clip_to_box(x + delta, *bounds)
        outs = [logits_fn(t(xa)) for t in tfs]
        task_losses = jnp.stack([_task_loss(loss, o, y, n) for o, n in zip(outs, nat)], axis=1)
        achieved = jnp.stack([jnp.argmax(o, -1) != y for o in outs], axis=1)
        return task_losses, achieved

    project = lambda d: threat.project_to_threat(x + d, x, eps, norm, bounds) - x
    delta0 = project(_start(key, x, eps, norm, random_start))
    m = len(tuple(EOT_TRANSFORMS) if transforms is None else tuple(transforms))
    delta = _moo_attack(task_fn, delta0, project, m=m, step_size=step_size, steps=steps,
                        norm=norm, weighting=weighting, lam=lam, lr_w=lr_w,
                        inner_steps=inner_steps, gamma=gamma, minmax_lr=minmax_lr,
                        entropy_weight=entropy_weight, uniform_weight=uniform_weight,
                        task_key=task_key)
    return threat.project_to_threat(x + delta, x, eps, norm, bounds)


tamoo_eot.__doc__ += _COMMON_DOC


# ----------------------------------------------------------------------------------------------
# Settings: the thesis' (App. C) and the released scripts' (module docstring)
# ----------------------------------------------------------------------------------------------

SETTINGS = ("ens", "uni", "eot")
SETTINGS_VARIANTS = ("thesis", "release")
RELEASE_ENS_UNIFORM_ATTACKS_ENSEMBLE_OUTPUT = True
_RELEASE_EPS = 0.031


def settings(setting: str, weighting: str, eps: float, variant: str = "thesis") -> dict:
    """Keyword arguments of `tamoo_ens` / `tamoo_uni` / `tamoo_eot` (setting "ens" | "uni" | "eot")
    for `weighting` at radius `eps`: steps, step_size, loss and the weighting's solver settings, as
    the thesis states them (variant "thesis", App. C) or as the authors' scripts run them
    ("release"; module docstring). The release's step sizes are scaled from its eps = 0.031 to `eps`."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if variant not in SETTINGS_VARIANTS:
        raise ValueError(f"variant must be one of {SETTINGS_VARIANTS}, got {variant!r}")
    v.check_nonnegative(eps, "eps")
    kw = dict(weighting=weighting, steps=100, step_size=eps / 4, lam=100.0, lr_w=0.005,
              inner_steps=10, gamma=3.0, minmax_lr=0.01, entropy_weight=0.0, uniform_weight=0.0,
              loss="ce" if setting == "ens" else "cw")
    if variant == "thesis":
        return kw
    kw.update(step_size=eps * (0.01 if setting == "eot" else 0.007) / _RELEASE_EPS,
              minmax_lr=0.025, entropy_weight=20.0, loss="cw" if setting == "eot" else "ce")
    if setting == "uni":
        kw.update(lam=10.0)
        if weighting in ("uniform", "minmax"):
            kw.update(steps=50)
    if weighting == "tamoo":
        kw.update(lr_w=0.025 if setting == "ens" else 0.005)
    elif weighting == "moo":
        kw.update(lr_w=0.005 if setting == "eot" else 0.025, inner_steps=1, uniform_weight=20.0)
    return kw


# ----------------------------------------------------------------------------------------------
# Metrics (Ch. 4, Sec. 4)
# ----------------------------------------------------------------------------------------------

def a_all(success: jax.Array) -> jax.Array:
    """A-All: fraction of problems (rows) whose every task succeeded; success is (P, m) bool."""
    return jnp.mean(jnp.all(success, axis=1))


def a_avg(success: jax.Array) -> jax.Array:
    """A-Avg: mean task success over all problems and tasks."""
    return jnp.mean(success.astype(jnp.float32))


def ens_success(logits_fns: Sequence[Callable], x_adv: jax.Array, y: jax.Array) -> jax.Array:
    """(B, m): member i misclassifies x_adv."""
    return jnp.stack([jnp.argmax(f(x_adv), -1) != y for f in logits_fns], axis=1)


def eot_success(logits_fn: Callable, x_adv: jax.Array, y: jax.Array,
                transforms: Optional[Sequence[str]] = None, *,
                stochastic_key: Optional[jax.Array] = None,
                bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """(B, m): the model misclassifies t_i(x_adv); with stochastic_key, t_i is one draw of the
    stochastic family (STOCHASTIC_EOT_TRANSFORMS) per example. `bounds`: the attack's box."""
    bounds = threat.check_bounds(bounds)
    ts = (_transforms(transforms, bounds) if stochastic_key is None
          else _stochastic_transforms(transforms, stochastic_key, bounds))
    return jnp.stack([jnp.argmax(logits_fn(t(x_adv)), -1) != y for t in ts], axis=1)


def uni_success(logits_fn: Callable, x_adv: jax.Array, y: jax.Array, group_size: int) -> jax.Array:
    """(B / K, K): image i of each group is misclassified."""
    wrong = jnp.argmax(logits_fn(x_adv), -1) != y
    return wrong.reshape(-1, group_size)
