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
  * "linf" ([code], per pixel): delta_i <- delta_i - kappa (delta_i - sign(delta_i) eps) on the pixels
    with |delta_i| > eps, kappa = lambda eta / tau: a step on the per-pixel soft cost outside the ball.
  * "l2" (App. B, Eq. 29, c = ||.||_2^2 / 2): delta <- (1 - kappa) delta, an interpolation towards x,
    with kappa = eta lambda inside the ball and eta lambda / tau outside it (the two branches of (16)).
kappa is capped at 1 (`min(kappa, 1)`): kappa = 1 is the projection onto the ball ("linf") or back to
x ("l2"); a larger kappa would overshoot past it (and oscillate for kappa > 2), which the papers never
intend. With the cap the hard-ball limit (tau -> 0 or lambda -> inf, Theorem 1) is exactly PGD-AT /
TRADES / MART's projected step. Caveat (notes): with the [code] defaults lambda_0 = 1 and tau = eta,
kappa = 1 already, so the "linf" pull IS hard clipping until lambda has decreased; a short run needs a
smaller lambda_0 or a larger eta_lambda before UDR departs from its baseline.

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
  * The distance inside c_hat for (19) (`lambda_distance`): "threat" (default, the paper: ||delta||_p
    of the threat model, linf) or "mean_abs" (the authors' code: (1/d) sum_j |delta_j|, without c_hat
    in the code; c_hat changes it only when the mean exceeds eps). They differ in kind: under hard
    clipping every example's linf distance is exactly eps (so "threat" keeps lambda near its
    hard-ball value), while the pixel mean is below eps whenever some pixels are inside (so
    "mean_abs" lets lambda decrease, the decay the chapter reports). The code also (a) updates lambda
    every 10 steps with the mean of those 10 batches (about eta_lambda / 10 per step) and (b) does not
    clip lambda at 0; here (19) runs every step and lambda >= 0.
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
PULLS = ("linf", "l2")
STARTS = ("uniform", "trades")
LAMBDA_DISTANCES = ("threat", "mean_abs")
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
    if pull == "linf" and norm != "linf":
        raise ValueError('pull="linf" is the per-pixel pull of the linf ball; use pull="l2" '
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
              lambda_distance: str = "threat") -> None:
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    v.check_nonnegative(lambda_0, "lambda_0")
    v.check_nonnegative(lambda_lr, "lambda_lr")
    threat.check_norm(norm)
    if pull not in PULLS:
        raise ValueError(f"pull must be one of {PULLS}, got {pull!r}")
    if pull == "linf" and norm != "linf":
        raise ValueError(f'pull="linf" needs norm="linf", got norm={norm!r}')
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if lambda_distance not in LAMBDA_DISTANCES:
        raise ValueError(f"lambda_distance must be one of {LAMBDA_DISTANCES}, "
                         f"got {lambda_distance!r}")
    c.check_attack_bn(attack_bn)


def lambda_distance_of(delta: jax.Array, kind: str, norm: str) -> jax.Array:
    """Per-example distance c(x^a, x) that enters c_hat in the lambda update (19).

    "threat": ||delta||_p of the threat model (linf by default), as App. G states ("we still use L_inf
    in the Equation to update lambda"). "mean_abs": the mean absolute pixel perturbation
    (1/d) sum_j |delta_j|, what the authors' code uses (its `mynorm(delta, order=1)`).
    """
    if kind == "threat":
        return threat.norm_of(delta, norm)
    if kind == "mean_abs":
        return jnp.mean(jnp.abs(delta.reshape(delta.shape[0], -1)), axis=1)
    raise ValueError(f"lambda_distance must be one of {LAMBDA_DISTANCES}, got {kind!r}")


def udr_adversary(apply_fn: c.ApplyFn, params: Any, state: Dict[str, Any], batch: Dict[str, jax.Array],
                  key: jax.Array, *, risk: RiskFn, eps: Scalar, step_size: Scalar, steps: int,
                  tau: Scalar, lambda_lr: Scalar, norm: str, pull: str, start: str, attack_bn: str,
                  lambda_distance: str = "threat") -> Tuple[Any, ...]:
    """Steps 2-3 of Algorithm 1: (x^a, new method state {"lambda"}, metrics). Shared with UDR-AWP."""
    x, y = batch["image"], batch["label"]
    k_attack, k_drop = jax.random.split(key)
    lam = state["method"]["lambda"]
    f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop)
    x_adv = jax.lax.stop_gradient(udr_attack(
        f, x, y, key=k_attack, lam=lam, eps=eps, step_size=step_size, steps=steps, tau=tau,
        risk=risk, norm=norm, pull=pull, start=start))
    delta = x_adv - x
    distance = threat.norm_of(delta, norm)
    soft = soft_ball_cost(lambda_distance_of(delta, lambda_distance, norm), eps, tau)
    mean_soft = c.cross_device_mean(jnp.mean(soft))
    new_lam = lambda_update(lam, mean_soft, eps, lambda_lr)
    metrics = {"lambda": new_lam, "soft_cost": mean_soft, "distance": jnp.mean(distance),
               "mean_abs": jnp.mean(jnp.abs(delta)),
               # beyond float32 rounding: (x + eps) - x can exceed eps by an ulp
               "outside": jnp.mean((distance > eps * (1 + 1e-5) + 1e-7).astype(jnp.float32))}
    return x_adv, {**state["method"], "lambda": new_lam}, metrics


def _init_lambda(lambda_0):
    return lambda key: {"lambda": jnp.asarray(lambda_0, jnp.float32)}


def _make(apply_fn, risk, *, eps, step_size, steps, tau, tau_steps, lambda_0, lambda_lr,
          lambda_distance, norm, pull, start, attack_bn) -> c.Objective:
    check_udr(eps, step_size, steps, lambda_0, lambda_lr, norm, pull, start, attack_bn,
              lambda_distance)
    tau = resolve_tau(step_size, tau, tau_steps)

    def objective(params, state, batch, key):
        y = batch["label"]
        k_adv_search, k_nat, k_adv = jax.random.split(key, 3)
        x_adv, method, metrics = udr_adversary(
            apply_fn, params, state, batch, k_adv_search, risk=risk, eps=eps, step_size=step_size,
            steps=steps, tau=tau, lambda_lr=lambda_lr, norm=norm, pull=pull, start=start,
            attack_bn=attack_bn, lambda_distance=lambda_distance)
        logits_nat, ms = c.train_forward(apply_fn, params, state["model"], batch["image"], k_nat)
        logits_adv, ms = c.train_forward(apply_fn, params, ms, x_adv, k_adv)
        loss = jnp.mean(risk(logits_adv, logits_nat, y))
        metrics.update(acc=c.accuracy(logits_nat, y), adv_acc=c.accuracy(logits_adv, y))
        return c.result(loss, metrics, ms, method)

    return c.Objective(objective, init_method_state=_init_lambda(lambda_0))


def udr_pgd(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 1.0,
            natural_weight: float = 1.0, tau: Optional[float] = None, tau_steps: float = 1.0,
            lambda_0: float = 1.0, lambda_lr: float = 0.02, lambda_distance: str = "threat",
            norm: str = "linf", pull: str = "linf", start: str = "uniform",
            attack_bn: str = "eval") -> c.Objective:
    """UDR-PGD (Sec. 3, Algorithm 1): L = mean natural_weight CE(h(x)) + beta CE(h(x^a)).

    Hard-ball limit (Theorem 1): PGD-AT with the loss of Eq. (5). Paper: beta = 1 (MNIST),
    k = 40, eps = 0.3, eta = 0.01; CIFAR-10 k = 10, 8/255, 2/255. [code] lambda_0 = 1,
    lambda_lr = 0.02, tau = eta. Metrics: lambda, soft_cost, distance, outside, acc, adv_acc.
    """
    v.check_nonnegative(beta, "beta")
    v.check_nonnegative(natural_weight, "natural_weight")
    risk = lambda la, ln, y: risk_pgd(la, ln, y, beta=beta, natural_weight=natural_weight)
    return _make(apply_fn, risk, eps=eps, step_size=step_size, steps=steps, tau=tau,
                 tau_steps=tau_steps, lambda_0=lambda_0, lambda_lr=lambda_lr,
                 lambda_distance=lambda_distance, norm=norm, pull=pull, start=start,
                 attack_bn=attack_bn)


def udr_trades(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 6.0,
               tau: Optional[float] = None, tau_steps: float = 1.0, lambda_0: float = 1.0,
               lambda_lr: float = 0.02, lambda_distance: str = "threat", norm: str = "linf",
               pull: str = "linf", start: str = "uniform", attack_bn: str = "eval") -> c.Objective:
    """UDR-TRADES (Sec. 3, Algorithm 1): L = mean CE(h(x)) + beta KL(h(x) || h(x^a)); the adversary
    maximizes the same g (its gradient in x' is beta grad KL). beta = 6 (CIFAR), 1 (MNIST)."""
    v.check_nonnegative(beta, "beta")
    risk = lambda la, ln, y: risk_trades(la, ln, y, beta=beta)
    return _make(apply_fn, risk, eps=eps, step_size=step_size, steps=steps, tau=tau,
                 tau_steps=tau_steps, lambda_0=lambda_0, lambda_lr=lambda_lr,
                 lambda_distance=lambda_distance, norm=norm, pull=pull, start=start,
                 attack_bn=attack_bn)


def udr_mart(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 5.0,
             bce_input: str = "natural", tau: Optional[float] = None, tau_steps: float = 1.0,
             lambda_0: float = 1.0, lambda_lr: float = 0.02, lambda_distance: str = "threat",
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
                 lambda_distance=lambda_distance, norm=norm, pull=pull, start=start,
                 attack_bn=attack_bn)
