"""UDR: unified distributional robustness (Bui et al., ICLR 2022; Chapter 5 of the thesis in
/work/shared/papers/thesis-representation-ensemble-distribution.txt; notes in
/work/shared/notes/thesis-ch2-ch5-udr.md). Equation numbers are the paper's.

Dual objective (17) with the soft-ball cost (16):

    inf_{theta, lambda >= 0}  lambda eps + E_P[ sup_{x'} g_theta(x', x, y) - lambda c_hat(x', x) ],
    c_hat(x', x) = c(x', x)                     if c(x', x) < eps,
                   eps + (c(x', x) - eps) / tau  otherwise,

with c(x', x) = ||x' - x||_p the threat model's distance (linf by default; the chapter's App. G: "the
perturbation strength eps has been measured in L_inf, therefore we still use L_inf" for c_hat and
lambda). Risk functions g (Sec. 3; x'' = x and y' = y):

    UDR-PGD     g = CE(h(x), y) + beta CE(h(x'), y)
    UDR-TRADES  g = CE(h(x), y) + beta KL(h(x) || h(x'))
    UDR-MART    g = BCE(h(x), y) + beta (1 - [h(x)]_y) KL(h(x) || h(x'))     (Eq. 7 and footnote 2)

Algorithm 1, per minibatch:
  1. x_0 = x + U(-eps, eps) (clipped to [0, 1]); k push/pull steps (18):
       push  x_inter = x_n + eta sign(grad_x' g(x_n, x, y))
       pull  x_{n+1} = x_inter - eta lambda grad c_hat(x_inter, x)
  2. lambda <- max(0, lambda - eta_lambda (eps - mean_i c_hat(x_i^a, x_i)))            (19)
  3. theta <- theta - eta_theta grad_theta mean_i g(x_i^a, x_i, y_i)                     (20)

The pull (`pull`), as the chapter and the authors' code write it:
  * "linf" ([code], per pixel; the default, the only pull the authors released): delta_i <- delta_i
    - kappa (delta_i - sign(delta_i) eps) on the pixels with |delta_i| > eps, kappa = lambda eta /
    tau: a step on the per-pixel soft cost outside the ball.
  * "linf_single" (App. G, MNIST: "when using L_inf norm as the cost function ... only single pixel
    has been traced back at each iteration"): the gradient of c = ||delta||_inf is one-hot at the
    pixel of largest |delta_i| (Table 11), so only that pixel is pulled, by the same per-pixel step as
    "linf" (only when it is outside the ball, as the [code] pull). The thesis' MNIST code is not
    released; reading its step as the [code]'s proportional step (rather than a literal step of
    eta lambda / tau = lambda, which would throw the pixel across the whole [0, 1] range at
    tau = eta) is our choice.
  * "l2" (App. B, Eq. 29, c = ||.||_2^2 / 2; the chapter's CIFAR choice): delta <- (1 - kappa)
    delta, an interpolation towards x, with kappa = eta lambda inside the ball and eta lambda / tau
    outside it (the two branches of (16)).
kappa is capped at 1 (`min(kappa, 1)`): kappa = 1 is the projection onto the ball ("linf") or back to
x ("l2"); a larger kappa would overshoot past it (and oscillate for kappa > 2), which the papers never
intend (the [code] has no cap, but its lambda starts at 1 and only exceeds 1 transiently). With the
cap the hard-ball limit (tau -> 0 or lambda -> inf, Theorem 1) is exactly PGD-AT / TRADES / MART's
projected step. With the [code] defaults lambda_0 = 1 and tau = eta, kappa = 1 already, so the
"linf" pull IS hard clipping until lambda has decreased.

The lambda update (19) (`lambda_distance`, `lambda_schedule`):
  * The distance c(x^a, x) inside c_hat. Default "mean_abs", the authors' code: (1/d) sum_j |delta_j|
    (its `mynorm(delta, order=1)`). "threat": ||delta||_p of the threat model, linf by default, as
    App. G writes it ("we still use L_inf in the Equation to update lambda"). Why the code's is the
    default: with the linf pull and kappa >= 1 (lambda_0 eta / tau >= 1, e.g. the [code] lambda_0 = 1
    and tau = eta) every example ends on the ball's surface, linf distance exactly eps, so eps -
    mean c_hat = 0 and lambda never moves; below kappa = 1 the linf distance exceeds eps and lambda
    rises back to kappa = 1. So "threat" with the "linf" pull converges to, and stays at, the hard
    ball: UDR becomes exactly PGD-AT / TRADES / MART (a fixed point, not an error, hence allowed; the
    udr_toy study shows it). The pixel mean is below eps whenever some pixels are inside the ball, so
    "mean_abs" lets lambda decrease until the perturbations' mean size reaches eps.
  * The schedule. "paper" (default): (19) after every minibatch (Algorithm 1, step 3), kept in
    lambda >= 0 (lambda is a dual variable of (17)). "code": the authors' code: the per-batch mean
    distance is accumulated and lambda <- lambda - eta_lambda (eps - mean of the accumulated batch
    means) every `lambda_period` (10) steps (at steps 0, 10, 20, ..., as the code's `i % 10 == 0`
    within its first epoch; the code restarts i every epoch, we count globally), on the raw distance
    (no c_hat) and without the clamp at 0. With eta_lambda = 0.02 that is about 0.002 per step, ten
    times slower than "paper" at the same eta_lambda.
  The objective logs "lambda", "soft_cost" (the mean c_hat of this batch), "distance" (mean threat
  norm), "linf", "l2" and "mean_abs" (the training adversary's mean perturbation sizes), and "outside"
  (the fraction of examples outside the ball).

Other choices:
  * Every step clips x_{n+1} to the box [0, 1] (Algorithm 1 clips only at the end; the model only sees
    valid inputs, and that is what PGD does). The push uses `threat.steepest_ascent(grad, norm)`
    (sign for linf, as in Algorithm 1), and the start `threat.random_init(key, x, eps, norm)`, the same
    calls as `attacks.pgd`, so the hard-ball limit reproduces `attacks.pgd` bit for bit with the same
    key. `start="trades"` starts from x + 0.001 N(0, I) instead (the TRADES / MART code's start).
  * tau: the text uses tau = 2 eta ("performs well", Sec. 5.2), the code tau = eta. `tau_steps` gives
    tau in units of the step size (default 1: the code); `tau` overrides it with an absolute value.
  * KL(h(x) || h(x')) as in `advjax.objectives.trades` (the chapter writes D_KL(h(x'), h(x)) but its
    TRADES is Zhang et al.'s, whose code computes KL(p_nat || p_adv)).
  * lambda is updated from the global-batch mean of c_hat (`cross_device_mean`), so the max(0, .) of
    (19) gives the same lambda on 1 or N devices.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from advjax import losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.objectives.mart import boosted_ce
from advjax.threat import Scalar

RISKS = ("pgd", "trades", "mart")
PULLS = ("linf", "linf_single", "l2")
STARTS = ("uniform", "trades")
LAMBDA_DISTANCES = ("mean_abs", "threat")
LAMBDA_SCHEDULES = ("paper", "code")
CODE_LAMBDA_PERIOD = 10
TRADES_INIT_STD = 0.001

RiskFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------------------------------------
# Risk functions g(x', x, y), per example, on logits
# ------------------------------------------------------------------------------------------------

def risk_pgd(logits_adv: jax.Array, logits_nat: jax.Array, y: jax.Array, *, beta: Scalar = 1.0,
             natural_weight: Scalar = 1.0) -> jax.Array:
    """UDR-PGD (Sec. 3): natural_weight CE(h(x), y) + beta CE(h(x'), y). natural_weight = 0 is the
    variant of App. D ("omit the cross-entropy loss of the natural images", WRN-34-10 and AWP)."""
    return natural_weight * losses.cross_entropy(logits_nat, y) + \
        beta * losses.cross_entropy(logits_adv, y)


def risk_trades(logits_adv: jax.Array, logits_nat: jax.Array, y: jax.Array, *,
                beta: Scalar = 6.0) -> jax.Array:
    """UDR-TRADES (Sec. 3): CE(h(x), y) + beta KL(h(x) || h(x'))."""
    return losses.cross_entropy(logits_nat, y) + beta * losses.kl_divergence(logits_nat, logits_adv)


def risk_mart(logits_adv: jax.Array, logits_nat: jax.Array, y: jax.Array, *, beta: Scalar = 5.0,
              bce_input: str = "natural") -> jax.Array:
    """UDR-MART (Sec. 3, Eq. 7): BCE(h(x), y) + beta (1 - [h(x)]_y) KL(h(x) || h(x')).

    BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k) (`mart.boosted_ce`). The chapter puts BCE on the
    natural input (its footnote 2: "slightly different from the original MART"); bce_input =
    "adversarial" gives Wang et al.'s original BCE(h(x'), y).
    """
    p_y = jnp.take_along_axis(jax.nn.softmax(logits_nat, axis=-1), y[:, None], axis=-1)[:, 0]
    bce = boosted_ce(logits_nat if bce_input == "natural" else logits_adv, y)
    return bce + beta * (1.0 - p_y) * losses.kl_divergence(logits_nat, logits_adv)


# ------------------------------------------------------------------------------------------------
# Soft ball, pull, lambda
# ------------------------------------------------------------------------------------------------

def soft_ball_cost(distance: jax.Array, eps: Scalar, tau: Scalar) -> jax.Array:
    """Eq. (16): c_hat = c if c < eps, else eps + (c - eps) / tau. Continuous; tau -> 0 gives the hard
    ball (13) (cost inf outside)."""
    return jnp.where(distance < eps, distance, eps + (distance - eps) / tau)


def lambda_update(lam: Scalar, mean_soft_cost: Scalar, eps: Scalar, lr: Scalar) -> jax.Array:
    """Eq. (19) kept in lambda >= 0: max(0, lambda - lr (eps - mean c_hat)). Decreases when the
    adversarial examples are on average inside the ball (mean c_hat < eps), increases otherwise."""
    return jnp.maximum(0.0, lam - lr * (eps - mean_soft_cost))


def pull_strength(lam: Scalar, step_size: Scalar, tau: Scalar, outside: bool = True) -> jax.Array:
    """kappa = min(eta lambda / tau, 1) outside the ball, min(eta lambda, 1) inside (module docstring)."""
    k = lam * step_size / tau if outside else lam * step_size
    return jnp.minimum(k, 1.0)


def pull_linf(delta: jax.Array, eps: Scalar, kappa: Scalar) -> jax.Array:
    """[code] per-pixel pull: on pixels with |delta_i| > eps, delta_i <- (1 - kappa) delta_i +
    kappa eps sign(delta_i) (= delta_i - kappa (delta_i - sign(delta_i) eps)); kappa = 1 is the linf
    projection (written so that it is exactly eps sign(delta_i))."""
    kappa = jnp.asarray(kappa, delta.dtype)
    pulled = (1.0 - kappa) * delta + kappa * (eps * jnp.sign(delta))
    return jnp.where(jnp.abs(delta) > eps, pulled, delta).astype(delta.dtype)


def pull_linf_single(delta: jax.Array, eps: Scalar, kappa: Scalar) -> jax.Array:
    """App. G's linf pull: only the pixel of largest |delta_i| per example is pulled ("only single
    pixel has been traced back at each iteration"), by `pull_linf`'s step, if it is outside the
    ball. Ties go to the first such pixel (row-major), so exactly one pixel moves."""
    flat = delta.reshape(delta.shape[0], -1)
    top = jax.nn.one_hot(jnp.argmax(jnp.abs(flat), axis=1), flat.shape[1], dtype=jnp.bool_)
    pulled = pull_linf(flat, eps, kappa)
    return jnp.where(top, pulled, flat).reshape(delta.shape).astype(delta.dtype)


def pull_l2(delta: jax.Array, distance: jax.Array, eps: Scalar, kappa_in: Scalar,
            kappa_out: Scalar) -> jax.Array:
    """Eq. (18 ii) / (29) with c = ||.||_2^2 / 2: delta <- (1 - kappa) delta, x_{n+1} =
    (1 - kappa) x_inter + kappa x, kappa = kappa_in if distance < eps else kappa_out (per example)."""
    kappa = jnp.where(distance < eps, kappa_in, kappa_out).astype(delta.dtype)
    return ((1.0 - kappa).reshape((-1,) + (1,) * (delta.ndim - 1)) * delta).astype(delta.dtype)


# ------------------------------------------------------------------------------------------------
# The adversary (Algorithm 1, step 2)
# ------------------------------------------------------------------------------------------------

def udr_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, *,
               key: jax.Array, lam: Scalar, eps: Scalar, step_size: Scalar, steps: int, tau: Scalar,
               risk: RiskFn = risk_pgd, norm: str = "linf", pull: str = "linf",
               start: str = "uniform") -> jax.Array:
    """Algorithm 1 step 2: k push/pull steps (18) on g(x', x, y) - lambda c_hat(x', x), no projection.

    risk(logits_adv, logits_nat, y) -> per-example g; the natural logits are constants here. Returns
    x^a in [0, 1] (not in the eps-ball in general: lambda and tau set how far it may go).
    """
    v.check_batch(logits_fn, x, y)
    threat.check_norm(norm)
    if pull not in PULLS:
        raise ValueError(f"pull must be one of {PULLS}, got {pull!r}")
    if pull in ("linf", "linf_single") and norm != "linf":
        raise ValueError(f'pull={pull!r} is a pull of the linf ball; use pull="l2" '
                         f'with norm={norm!r}')
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    steps = v.check_positive_int(steps, "steps")
    dtype = x.dtype
    logits_nat = jax.lax.stop_gradient(logits_fn(x))

    def total_risk(xa):
        return jnp.sum(risk(logits_fn(xa), logits_nat, y))

    grad_risk = jax.grad(total_risk)
    if start == "uniform":
        x0 = threat.clip_to_box(x + threat.random_init(key, x, eps, norm))
    else:
        x0 = threat.clip_to_box(x + TRADES_INIT_STD * jax.random.normal(key, x.shape, dtype))
    kappa_out = pull_strength(lam, step_size, tau, outside=True)
    kappa_in = pull_strength(lam, step_size, tau, outside=False)

    def body(_, xa):
        g = grad_risk(xa)
        x_inter = xa + (step_size * threat.steepest_ascent(g, norm)).astype(dtype)
        delta = x_inter - x
        if pull == "linf":
            delta = pull_linf(delta, eps, kappa_out)
        elif pull == "linf_single":
            delta = pull_linf_single(delta, eps, kappa_out)
        else:
            delta = pull_l2(delta, threat.norm_of(delta, norm), eps, kappa_in, kappa_out)
        return threat.clip_to_box(x + delta).astype(dtype)

    return jax.lax.fori_loop(0, steps, body, x0)


# ------------------------------------------------------------------------------------------------
# Objectives
# ------------------------------------------------------------------------------------------------

def resolve_tau(step_size: Scalar, tau: Optional[float], tau_steps: float) -> Scalar:
    """tau if given, else tau_steps * step_size (1: the authors' code; 2: the text, Sec. 5.2)."""
    t = tau if tau is not None else tau_steps * step_size
    if not t > 0:
        raise ValueError(f"tau must be > 0, got {t} (tau={tau}, tau_steps={tau_steps})")
    return t


def check_udr(eps: Scalar, step_size: Scalar, steps: int, lambda_0: Scalar, lambda_lr: Scalar,
              norm: str, pull: str, start: str, attack_bn: str,
              lambda_distance: str = "mean_abs", lambda_schedule: str = "paper",
              lambda_period: int = CODE_LAMBDA_PERIOD) -> None:
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    v.check_nonnegative(lambda_0, "lambda_0")
    v.check_nonnegative(lambda_lr, "lambda_lr")
    threat.check_norm(norm)
    if pull not in PULLS:
        raise ValueError(f"pull must be one of {PULLS}, got {pull!r}")
    if pull in ("linf", "linf_single") and norm != "linf":
        raise ValueError(f'pull={pull!r} needs norm="linf", got norm={norm!r}')
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if lambda_distance not in LAMBDA_DISTANCES:
        raise ValueError(f"lambda_distance must be one of {LAMBDA_DISTANCES}, "
                         f"got {lambda_distance!r}")
    if lambda_schedule not in LAMBDA_SCHEDULES:
        raise ValueError(f"lambda_schedule must be one of {LAMBDA_SCHEDULES}, "
                         f"got {lambda_schedule!r}")
    v.check_positive_int(lambda_period, "lambda_period")
    c.check_attack_bn(attack_bn)


def lambda_distance_of(delta: jax.Array, kind: str, norm: str) -> jax.Array:
    """Per-example distance c(x^a, x) that enters the lambda update (19).

    "mean_abs" (default): the mean absolute pixel perturbation (1/d) sum_j |delta_j|, what the
    authors' code uses (its `mynorm(delta, order=1)`). "threat": ||delta||_p of the threat model
    (linf by default), as App. G states ("we still use L_inf in the Equation to update lambda").
    """
    if kind == "threat":
        return threat.norm_of(delta, norm)
    if kind == "mean_abs":
        return jnp.mean(jnp.abs(delta.reshape(delta.shape[0], -1)), axis=1)
    raise ValueError(f"lambda_distance must be one of {LAMBDA_DISTANCES}, got {kind!r}")


def init_lambda_state(lambda_0: Scalar, schedule: str = "paper") -> Dict[str, jax.Array]:
    """The method state of the lambda update: {"lambda"} ("paper"), plus the accumulator of the
    authors' code ("code": "dist_sum", "dist_count" and the integer step counter "lambda_step")."""
    state = {"lambda": jnp.asarray(lambda_0, jnp.float32)}
    if schedule == "code":
        state.update(dist_sum=jnp.zeros((), jnp.float32), dist_count=jnp.zeros((), jnp.float32),
                     lambda_step=jnp.zeros((), jnp.int32))
    return state


def lambda_step(method: Dict[str, jax.Array], distance: Scalar, soft_cost: Scalar, eps: Scalar,
                lr: Scalar, schedule: str = "paper",
                period: int = CODE_LAMBDA_PERIOD) -> Dict[str, jax.Array]:
    """One minibatch of the lambda update; `distance` and `soft_cost` are this (global) batch's means
    of c(x^a, x) and c_hat(x^a, x). Returns the new method state.

    "paper": Eq. (19) with the clamp, every step. "code": accumulate the raw distance; at steps
    0, period, 2 period, ...: lambda <- lambda - lr (eps - accumulated mean), no clamp; reset.
    """
    lam = method["lambda"]
    if schedule == "paper":
        return {**method, "lambda": lambda_update(lam, soft_cost, eps, lr)}
    total = method["dist_sum"] + distance
    count = method["dist_count"] + 1.0
    due = method["lambda_step"] % period == 0
    updated = lam - lr * (eps - total / count)
    return {**method,
            "lambda": jnp.where(due, updated, lam).astype(jnp.float32),
            "dist_sum": jnp.where(due, 0.0, total).astype(jnp.float32),
            "dist_count": jnp.where(due, 0.0, count).astype(jnp.float32),
            "lambda_step": method["lambda_step"] + 1}


def udr_adversary(apply_fn: c.ApplyFn, params: Any, state: Dict[str, Any],
                  batch: Dict[str, jax.Array], key: jax.Array, *, risk: RiskFn, eps: Scalar,
                  step_size: Scalar, steps: int, tau: Scalar, lambda_lr: Scalar, norm: str,
                  pull: str, start: str, attack_bn: str, lambda_distance: str = "mean_abs",
                  lambda_schedule: str = "paper",
                  lambda_period: int = CODE_LAMBDA_PERIOD) -> Tuple[Any, ...]:
    """Steps 2-3 of Algorithm 1: (x^a, new method state, metrics). Shared with UDR-AWP."""
    x, y = batch["image"], batch["label"]
    k_attack, k_drop = jax.random.split(key)
    lam = state["method"]["lambda"]
    f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop)
    x_adv = jax.lax.stop_gradient(udr_attack(
        f, x, y, key=k_attack, lam=lam, eps=eps, step_size=step_size, steps=steps, tau=tau,
        risk=risk, norm=norm, pull=pull, start=start))
    delta = x_adv - x
    distance = threat.norm_of(delta, norm)
    lam_distance = lambda_distance_of(delta, lambda_distance, norm)
    mean_distance = c.cross_device_mean(jnp.mean(lam_distance))
    mean_soft = c.cross_device_mean(jnp.mean(soft_ball_cost(lam_distance, eps, tau)))
    method = lambda_step(state["method"], mean_distance, mean_soft, eps, lambda_lr,
                         lambda_schedule, lambda_period)
    metrics = {"lambda": method["lambda"], "soft_cost": mean_soft, "distance": jnp.mean(distance),
               "linf": jnp.mean(threat.norm_of(delta, "linf")),
               "l2": jnp.mean(threat.norm_of(delta, "l2")),
               "mean_abs": jnp.mean(jnp.abs(delta)),
               # beyond float32 rounding: (x + eps) - x can exceed eps by an ulp
               "outside": jnp.mean((distance > eps * (1 + 1e-5) + 1e-7).astype(jnp.float32))}
    return x_adv, method, metrics


def _make(apply_fn, risk, *, eps, step_size, steps, tau, tau_steps, lambda_0, lambda_lr,
          lambda_distance, lambda_schedule, lambda_period, norm, pull, start,
          attack_bn) -> c.Objective:
    check_udr(eps, step_size, steps, lambda_0, lambda_lr, norm, pull, start, attack_bn,
              lambda_distance, lambda_schedule, lambda_period)
    tau = resolve_tau(step_size, tau, tau_steps)

    def objective(params, state, batch, key):
        y = batch["label"]
        k_adv_search, k_nat, k_adv = jax.random.split(key, 3)
        x_adv, method, metrics = udr_adversary(
            apply_fn, params, state, batch, k_adv_search, risk=risk, eps=eps, step_size=step_size,
            steps=steps, tau=tau, lambda_lr=lambda_lr, norm=norm, pull=pull, start=start,
            attack_bn=attack_bn, lambda_distance=lambda_distance,
            lambda_schedule=lambda_schedule, lambda_period=lambda_period)
        logits_nat, ms = c.train_forward(apply_fn, params, state["model"], batch["image"], k_nat)
        logits_adv, ms = c.train_forward(apply_fn, params, ms, x_adv, k_adv)
        loss = jnp.mean(risk(logits_adv, logits_nat, y))
        metrics.update(acc=c.accuracy(logits_nat, y), adv_acc=c.accuracy(logits_adv, y))
        return c.result(loss, metrics, ms, method)

    return c.Objective(objective,
                       init_method_state=lambda key: init_lambda_state(lambda_0, lambda_schedule))


_LAMBDA_DOC = """
    The soft ball and lambda (module docstring): tau = tau_steps * step_size unless `tau` is given;
    lambda starts at lambda_0 and follows (19) with learning rate lambda_lr, on the distance
    `lambda_distance` ("mean_abs", the [code]'s, default; "threat", App. G's linf), on the schedule
    `lambda_schedule` ("paper": every step, lambda >= 0, default; "code": every `lambda_period` steps
    with the mean of those batches, no clamp). `pull`: "linf" ([code], default), "linf_single"
    (App. G, MNIST) or "l2" (App. B). [code] values: lambda_0 = 1, lambda_lr = 0.02 (every 10
    steps), tau = eta."""


def udr_pgd(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 1.0,
            natural_weight: float = 1.0, tau: Optional[float] = None, tau_steps: float = 1.0,
            lambda_0: float = 1.0, lambda_lr: float = 0.02, lambda_distance: str = "mean_abs",
            lambda_schedule: str = "paper", lambda_period: int = CODE_LAMBDA_PERIOD,
            norm: str = "linf", pull: str = "linf", start: str = "uniform",
            attack_bn: str = "eval") -> c.Objective:
    """UDR-PGD (Sec. 3, Algorithm 1): L = mean natural_weight CE(h(x)) + beta CE(h(x^a)).

    Hard-ball limit (Theorem 1): PGD-AT with the loss of Eq. (5), `at.pgd_at(beta=...)` (the
    matched baseline). Paper: beta = 1 (MNIST), k = 40, eps = 0.3, eta = 0.01; CIFAR-10 k = 10,
    8/255, 2/255. Metrics: lambda, soft_cost, distance, linf, l2, mean_abs, outside, acc, adv_acc.
    """
    v.check_nonnegative(beta, "beta")
    v.check_nonnegative(natural_weight, "natural_weight")
    risk = lambda la, ln, y: risk_pgd(la, ln, y, beta=beta, natural_weight=natural_weight)
    return _make(apply_fn, risk, eps=eps, step_size=step_size, steps=steps, tau=tau,
                 tau_steps=tau_steps, lambda_0=lambda_0, lambda_lr=lambda_lr,
                 lambda_distance=lambda_distance, lambda_schedule=lambda_schedule,
                 lambda_period=lambda_period, norm=norm, pull=pull, start=start,
                 attack_bn=attack_bn)


def udr_trades(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 6.0,
               tau: Optional[float] = None, tau_steps: float = 1.0, lambda_0: float = 1.0,
               lambda_lr: float = 0.02, lambda_distance: str = "mean_abs",
               lambda_schedule: str = "paper", lambda_period: int = CODE_LAMBDA_PERIOD,
               norm: str = "linf", pull: str = "linf", start: str = "uniform",
               attack_bn: str = "eval") -> c.Objective:
    """UDR-TRADES (Sec. 3, Algorithm 1): L = mean CE(h(x)) + beta KL(h(x) || h(x^a)); the adversary
    maximizes the same g (its gradient in x' is beta grad KL). beta = 6 (CIFAR), 1 (MNIST)."""
    v.check_nonnegative(beta, "beta")
    risk = lambda la, ln, y: risk_trades(la, ln, y, beta=beta)
    return _make(apply_fn, risk, eps=eps, step_size=step_size, steps=steps, tau=tau,
                 tau_steps=tau_steps, lambda_0=lambda_0, lambda_lr=lambda_lr,
                 lambda_distance=lambda_distance, lambda_schedule=lambda_schedule,
                 lambda_period=lambda_period, norm=norm, pull=pull, start=start,
                 attack_bn=attack_bn)


def udr_mart(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 5.0,
             bce_input: str = "natural", tau: Optional[float] = None, tau_steps: float = 1.0,
             lambda_0: float = 1.0, lambda_lr: float = 0.02, lambda_distance: str = "mean_abs",
             lambda_schedule: str = "paper", lambda_period: int = CODE_LAMBDA_PERIOD,
             norm: str = "linf", pull: str = "linf", start: str = "uniform",
             attack_bn: str = "eval") -> c.Objective:
    """UDR-MART (Sec. 3, Eq. 7, Algorithm 1): L = mean BCE(h(x)) + beta (1 - h(x)_y) KL(h(x) || h(x^a));
    bce_input="adversarial" for the original MART's BCE(h(x^a)). beta = 5 (CIFAR), 1 (MNIST)."""
    v.check_nonnegative(beta, "beta")
    if bce_input not in ("natural", "adversarial"):
        raise ValueError(f'bce_input must be "natural" or "adversarial", got {bce_input!r}')
    risk = lambda la, ln, y: risk_mart(la, ln, y, beta=beta, bce_input=bce_input)
    return _make(apply_fn, risk, eps=eps, step_size=step_size, steps=steps, tau=tau,
                 tau_steps=tau_steps, lambda_0=lambda_0, lambda_lr=lambda_lr,
                 lambda_distance=lambda_distance, lambda_schedule=lambda_schedule,
                 lambda_period=lambda_period, norm=norm, pull=pull, start=start,
                 attack_bn=attack_bn)


for _factory in (udr_pgd, udr_trades, udr_mart):
    _factory.__doc__ += _LAMBDA_DOC
