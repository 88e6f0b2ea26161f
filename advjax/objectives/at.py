"""Adversarial training on attacked inputs: FGSM-AT, single-step robust optimization, PGD-AT.

  * `fgsm_at`: the alpha-mixed loss of Goodfellow, Shlens, Szegedy (ICLR 2015), Eq. 3 as cited by the
    robust-optimization paper: alpha J(x) + (1 - alpha) J(x + eps sign(grad_x J(x))).
  * `ro`: Shaham, Yamada, Negahban, "Understanding adversarial training: increasing local stability of
    supervised models through robust optimization" (Neurocomputing 2018), Alg. 1: one steepest-ascent
    step in an l1 / l2 / linf ball of radius r (Sec. 4.1), then a descent step on the perturbed batch
    only (the clean batch is never used for the update).
  * `pgd_at`: Madry et al. (ICLR 2018), min_theta E max_{delta in B} CE(f(x + delta), y), the inner
    max by PGD with a random start (thesis Eq. 2.25 with l = 1); `mix` in [0, 1] gives the generic
    mixed loss (1 - mix) CE(x) + mix CE(x_adv) (thesis Eq. 2.25; mix = 0.5 is Goodfellow's weighting);
    `beta` gives the UDR chapter's Eq. (5) form CE(x) + beta CE(x_adv), UDR-PGD's hard-ball limit
    (Theorem 1), the baseline matched to `udr_pgd` in everything but the soft ball.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from advjax import attacks, losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c


def _check_mix(value, name):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _adversarial_objective(apply_fn, craft, *, clean_weight: float, attack_bn: str,
                           adversarial_weight: Optional[float] = None):
    """L = clean_weight CE(f(x), y) + adversarial_weight CE(f(x_adv), y), x_adv = craft(f, x, y, key);
    adversarial_weight defaults to 1 - clean_weight (a convex mix)."""
    if adversarial_weight is None:
        adversarial_weight = 1.0 - clean_weight
    c.check_attack_bn(attack_bn)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
        x_adv = jax.lax.stop_gradient(craft(f, x, y, k_attack))
        model_state = state["model"]
        metrics = {}
        loss = 0.0
        if clean_weight > 0:
            logits_nat, model_state = c.train_forward(apply_fn, params, model_state, x, k_nat)
            loss = clean_weight * c.mean_ce(logits_nat, y)
            metrics["acc"] = c.accuracy(logits_nat, y)
        if adversarial_weight > 0:
            logits_adv, model_state = c.train_forward(apply_fn, params, model_state, x_adv, k_adv)
            loss = loss + adversarial_weight * c.mean_ce(logits_adv, y)
            metrics["adv_acc"] = c.accuracy(logits_adv, y)
        return c.result(loss, metrics, model_state, state["method"])

    return c.Objective(objective)


def fgsm_at(apply_fn: c.ApplyFn, *, eps: float, alpha: float = 0.5, attack_bn: str = "eval") -> c.Objective:
    """FGSM adversarial training with the alpha-mixed loss (Goodfellow et al. 2015, Eq. 3).

    L = alpha CE(f(x), y) + (1 - alpha) CE(f(x + eps sign(grad_x CE)), y); alpha = 0.5 in the paper.
    """
    v.check_nonnegative(eps, "eps")
    _check_mix(alpha, "alpha")
    craft = lambda f, x, y, k: attacks.fgsm(f, x, y, eps=eps)
    return _adversarial_objective(apply_fn, craft, clean_weight=alpha, attack_bn=attack_bn)


def ro(apply_fn: c.ApplyFn, *, eps: float, norm: str = "linf", l1_k: int = 1, box: bool = True,
       attack_bn: str = "eval") -> c.Objective:
    """Robust optimization with a single steepest-ascent step (Shaham et al. 2018, Alg. 1, Sec. 4.1).

    x~ = x + eps v*(grad_x CE) with v* = sign (linf), g/||g||_2 (l2), or the top-l1_k coordinates
    (l1; l1_k = 1: the single pixel of largest |g|, the paper's and the released code's choice); the
    update uses the perturbed batch only: L = CE(f(x~), y).

    box: True (default) clips x~ to the image box [0, 1] (`attacks.fgm`), advjax's threat model, in
    which every evaluation attack stays. False is the authors' released Lua code
    (`computeAdversarials.lua` is called without its `threshold` option): x~ may leave [0, 1], which
    matters most for l1, where the single pixel moves by the whole radius. The paper does not say.
    """
    v.check_nonnegative(eps, "eps")
    threat.check_norm(norm)
    v.check_positive_int(l1_k, "l1_k")
    if box:
        craft = lambda f, x, y, k: attacks.fgm(f, x, y, eps=eps, norm=norm, l1_k=l1_k)
    else:
        def craft(f, x, y, k):
            g = jax.grad(lambda z: jnp.sum(losses.cross_entropy(f(z), y)))(x)
            return x + (eps * threat.steepest_ascent(g, norm, l1_k)).astype(x.dtype)
    return _adversarial_objective(apply_fn, craft, clean_weight=0.0, attack_bn=attack_bn)


def pgd_at(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
           random_start: bool = True, mix: float = 1.0, beta: Optional[float] = None,
           attack_bn: str = "eval") -> c.Objective:
    """PGD adversarial training (Madry et al. 2018): L = (1 - mix) CE(f(x)) + mix CE(f(x_pgd)).

    mix = 1 (default) is Madry et al.'s objective, training on adversarial examples only.
    beta (with mix left at 1): the thesis' Eq. (5) (UDR chapter), L = CE(f(x)) + beta CE(f(x_pgd)),
    the loss `udr_pgd(natural_weight=1, beta=beta)` reduces to in its hard-ball limit.
    """
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    _check_mix(mix, "mix")
    craft = lambda f, x, y, k: attacks.pgd(f, x, y, key=k, eps=eps, step_size=step_size,
                                           steps=steps, norm=norm, random_start=random_start)
    if beta is not None:
        v.check_nonnegative(beta, "beta")
        if mix != 1.0:
            raise ValueError(f"pgd_at: give either mix (the convex mix (1 - mix) CE(x) + mix "
                             f"CE(x_adv)) or beta (Eq. 5: CE(x) + beta CE(x_adv)), not both; got "
                             f"mix={mix}, beta={beta}")
        return _adversarial_objective(apply_fn, craft, clean_weight=1.0,
                                      adversarial_weight=float(beta), attack_bn=attack_bn)
    return _adversarial_objective(apply_fn, craft, clean_weight=1.0 - mix, attack_bn=attack_bn)
