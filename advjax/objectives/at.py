"""Adversarial training on attacked inputs: FGSM-AT, single-step robust optimization, PGD-AT.

  * `fgsm_at`: the alpha-mixed loss of Goodfellow, Shlens, Szegedy (ICLR 2015), Eq. 3 as cited by the
    robust-optimization paper: alpha J(x) + (1 - alpha) J(x + eps sign(grad_x J(x))).
  * `ro`: Shaham, Yamada, Negahban, "Understanding adversarial training: increasing local stability of
    supervised models through robust optimization" (Neurocomputing 2018), Alg. 1: one steepest-ascent
    step in an l1 / l2 / linf ball of radius r (Sec. 4.1), then a descent step on the perturbed batch
    only (the clean batch is never used for the update).
  * `pgd_at`: Madry et al. (ICLR 2018), min_theta E max_{delta in B} CE(f(x + delta), y), the inner
    max by PGD with a random start (thesis Eq. 2.25 with l = 1); `mix` in [0, 1] gives the generic
    mixed loss (1 - mix) CE(x) + mix CE(x_adv) (thesis Eq. 2.25; mix = 0.5 is Goodfellow's weighting).
"""

from __future__ import annotations

import jax

from advjax import attacks, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c


def _check_mix(value, name):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _adversarial_objective(apply_fn, craft, *, clean_weight: float, attack_bn: str):
    """L = clean_weight CE(f(x), y) + (1 - clean_weight) CE(f(x_adv), y), x_adv = craft(f, x, y, key)."""
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
        if clean_weight < 1:
            logits_adv, model_state = c.train_forward(apply_fn, params, model_state, x_adv, k_adv)
            loss = loss + (1.0 - clean_weight) * c.mean_ce(logits_adv, y)
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


def ro(apply_fn: c.ApplyFn, *, eps: float, norm: str = "linf", l1_k: int = 1,
       attack_bn: str = "eval") -> c.Objective:
    """Robust optimization with a single steepest-ascent step (Shaham et al. 2018, Alg. 1, Sec. 4.1).

    x~ = x + eps v*(grad_x CE) with v* = sign (linf), g/||g||_2 (l2), or the top-l1_k coordinates
    (l1); the update uses the perturbed batch only: L = CE(f(x~), y).
    """
    v.check_nonnegative(eps, "eps")
    threat.check_norm(norm)
    craft = lambda f, x, y, k: attacks.fgm(f, x, y, eps=eps, norm=norm, l1_k=l1_k)
    return _adversarial_objective(apply_fn, craft, clean_weight=0.0, attack_bn=attack_bn)


def pgd_at(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
           random_start: bool = True, mix: float = 1.0, attack_bn: str = "eval") -> c.Objective:
    """PGD adversarial training (Madry et al. 2018): L = (1 - mix) CE(f(x)) + mix CE(f(x_pgd)).

    mix = 1 (default) is Madry et al.'s objective, training on adversarial examples only.
    """
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    _check_mix(mix, "mix")
    craft = lambda f, x, y, k: attacks.pgd(f, x, y, key=k, eps=eps, step_size=step_size,
                                           steps=steps, norm=norm, random_start=random_start)
    return _adversarial_objective(apply_fn, craft, clean_weight=1.0 - mix, attack_bn=attack_bn)
