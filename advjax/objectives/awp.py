"""AWP: adversarial weight perturbation (Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust
Generalization", NeurIPS 2020), and UDR-AWP-AT (the thesis' Chapter 5, Table 4 and App. D).

AWP-AT solves

    min_w max_{v : ||v_l|| <= gamma ||w_l|| for every layer l}  mean_i CE(f_{w+v}(x'_i), y_i),

x'_i from PGD at the unperturbed weights w. The inner max over v takes one ascent step, normalized
per layer to the edge of the layer-wise relative ball (the authors' code: a proxy model takes one
SGD step on -CE, and the difference d_l is rescaled to ||w_l|| d_l / ||d_l||, times gamma):

    g = grad_w mean_i CE(f_w(x'_i), y_i),   v_l = gamma ||w_l|| g_l / ||g_l||     (Frobenius norms),

then the gradient of the loss at w + v is applied to w (perturb, step, restore). In JAX: v is computed
first, and the objective is loss(w + stop_gradient(v)) differentiated w.r.t. w, which is that gradient.

Which weights are perturbed (the paper is not in /work/shared/papers; this follows the authors' public
code, which perturbs the parameters named "weight" with more than one dimension): every parameter leaf
with ndim > 1, i.e. the Dense and Conv kernels; biases and batch-norm scales / offsets (ndim 1) are not.
gamma = 0.01 (default here and in the authors' CIFAR-10 runs; UDR-AWP-AT uses the same).
The proxy forward pass that computes g runs in training mode (the code calls proxy.train()), with its
batch-norm statistics discarded; the forward pass at w + v updates them. The code's warm-up (no AWP for
the first epochs, `awp_warmup`) is not implemented. g is averaged across devices (`cross_device_mean`)
before the normalization, so v is the global batch's, the same on 1 or N devices.

  * `awp_at` ("awp"): PGD-AT (loss on adversarial examples only, as the authors' AT-AWP) + AWP.
  * `udr_awp` ("udr_awp"): UDR-AWP-AT, the UDR adversary (`udr.udr_adversary` with the risk
    g = CE(h(x'), y), App. D: "omit the cross-entropy loss of the natural images"), lambda updated by
    (19), then the AWP step on mean CE(f_{w+v}(x^a), y).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from advjax import attacks, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.objectives import udr
from advjax.threat import Scalar

# The authors' code adds EPS = 1e-20 to ||d_l|| before dividing.
_NORM_EPS = 1e-20


def is_perturbed(leaf: Any) -> bool:
    """AWP perturbs weight matrices / convolution kernels (ndim > 1), not biases or batch-norm."""
    return jnp.ndim(leaf) > 1


def weight_perturbation(grads: Any, params: Any, gamma: Scalar) -> Any:
    """v_l = gamma ||w_l|| g_l / (||g_l|| + 1e-20) for kernels (ndim > 1), 0 elsewhere (Frobenius norms).

    The one-step solution of max_{||v_l|| <= gamma ||w_l||} <g, v>: ||v_l|| = gamma ||w_l|| exactly
    (unless g_l = 0).
    """
    def one(g, w):
        if not is_perturbed(w):
            return jnp.zeros_like(w)
        scale = gamma * jnp.linalg.norm(w.reshape(-1)) / (jnp.linalg.norm(g.reshape(-1)) + _NORM_EPS)
        return (scale * g).astype(w.dtype)

    return jax.tree_util.tree_map(one, grads, params)


def _proxy_ce(apply_fn, model_state, x_adv, y, key):
    """params -> mean CE(f_params(x'), y) in training mode, batch-norm updates discarded."""
    def loss(p):
        logits, _ = c.train_forward(apply_fn, p, model_state, x_adv, key)
        return c.mean_ce(logits, y)
    return loss


def awp_loss(apply_fn: c.ApplyFn, params: Any, model_state: Dict[str, Any], x_adv: jax.Array,
             y: jax.Array, key: jax.Array, gamma: Scalar) -> Tuple[Any, ...]:
    """(loss at w + stop_gradient(v), logits, new model state, v): the AWP outer step on x_adv."""
    k_proxy, k_train = jax.random.split(key)
    w = jax.lax.stop_gradient(params)  # v is a constant for the outer gradient
    g = jax.grad(_proxy_ce(apply_fn, model_state, x_adv, y, k_proxy))(w)
    g = c.cross_device_mean(g)
    vp = jax.lax.stop_gradient(weight_perturbation(g, w, gamma))
    perturbed = jax.tree_util.tree_map(lambda w, d: w + d, params, vp)
    logits, ms = c.train_forward(apply_fn, perturbed, model_state, x_adv, k_train)
    return c.mean_ce(logits, y), logits, ms, vp


def _relative_size(vp, params):
    num = sum(jnp.sum(d * d) for d in jax.tree_util.tree_leaves(vp))
    den = sum(jnp.sum(w * w) for w, d in zip(jax.tree_util.tree_leaves(params),
                                             jax.tree_util.tree_leaves(vp)) if is_perturbed(w))
    return jnp.sqrt(num / den)


def awp_at(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, gamma: float = 0.01,
           norm: str = "linf", random_start: bool = True, attack_bn: str = "eval") -> c.Objective:
    """AWP-AT (Wu et al. 2020): x' by PGD at w, v by one normalized ascent step (module docstring),
    L = mean CE(f_{w+v}(x'), y), differentiated at w + v and applied to w.

    Metrics: acc_adv at w + v, "awp_norm" = ||v|| / ||w|| over the perturbed leaves (= gamma).
    """
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    v.check_nonnegative(gamma, "gamma")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop, k_awp = jax.random.split(key, 3)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop)
        x_adv = jax.lax.stop_gradient(attacks.pgd(
            f, x, y, key=k_attack, eps=eps, step_size=step_size, steps=steps, norm=norm,
            random_start=random_start))
        loss, logits, ms, vp = awp_loss(apply_fn, params, state["model"], x_adv, y, k_awp, gamma)
        metrics = {"adv_acc": c.accuracy(logits, y), "awp_norm": _relative_size(vp, params)}
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)


def udr_awp(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, gamma: float = 0.01,
            tau: Optional[float] = None, tau_steps: float = 1.0, lambda_0: float = 1.0,
            lambda_lr: float = 0.02, lambda_distance: str = "mean_abs",
            lambda_schedule: str = "paper", lambda_period: int = udr.CODE_LAMBDA_PERIOD,
            norm: str = "linf", pull: str = "linf", start: str = "uniform",
            attack_bn: str = "eval") -> c.Objective:
    """UDR-AWP-AT (thesis Ch. 5, Table 4, App. D): the UDR adversary (Algorithm 1, risk CE(h(x'), y))
    with its lambda update (19), then AWP: L = mean CE(f_{w+v}(x^a), y). See `udr` for tau, the pull
    and the lambda update (distance, schedule); the authors' UDR-AWP script is the [code] there."""
    udr.check_udr(eps, step_size, steps, lambda_0, lambda_lr, norm, pull, start, attack_bn,
                  lambda_distance, lambda_schedule, lambda_period)
    v.check_nonnegative(gamma, "gamma")
    tau = udr.resolve_tau(step_size, tau, tau_steps)
    risk = lambda la, ln, y: udr.risk_pgd(la, ln, y, beta=1.0, natural_weight=0.0)

    def objective(params, state, batch, key):
        y = batch["label"]
        k_search, _, k_awp = jax.random.split(key, 3)   # k_search as in udr's objectives
        x_adv, method, metrics = udr.udr_adversary(
            apply_fn, params, state, batch, k_search, risk=risk, eps=eps, step_size=step_size,
            steps=steps, tau=tau, lambda_lr=lambda_lr, norm=norm, pull=pull, start=start,
            attack_bn=attack_bn, lambda_distance=lambda_distance,
            lambda_schedule=lambda_schedule, lambda_period=lambda_period)
        loss, logits, ms, vp = awp_loss(apply_fn, params, state["model"], x_adv, y, k_awp, gamma)
        metrics.update(adv_acc=c.accuracy(logits, y), awp_norm=_relative_size(vp, params))
        return c.result(loss, metrics, ms, method)

    return c.Objective(objective, init_method_state=lambda key: udr.init_lambda_state(
        lambda_0, lambda_schedule))
