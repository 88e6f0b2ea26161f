"""TRADES (Zhang et al., ICML 2019, Eq. 5 and Alg. 1).

    L = CE(f(x), y) + beta * KL(f(x) || f(x')),
    x' = argmax_{x' in B(x, eps)} KL(f(x) || f(x')), by PGD from x + 0.001 N(0, I)

as in the authors' code: the attack runs the model in inference mode and maximizes the summed KL;
the training loss averages KL over the batch, with gradients flowing through both f(x) and f(x').
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax

from advjax import attacks, losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.threat import Scalar

# Scale of the Gaussian start of the TRADES attack (authors' code: 0.001 * randn).
INIT_STD = 0.001


def trades_attack(f: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                  key: jax.Array, *, eps: Scalar, step_size: Scalar, steps: int,
                  norm: str = "linf") -> jax.Array:
    """The TRADES inner maximization: PGD on KL(f(x) || f(x')) from x + 0.001 N(0, I)."""
    x_init = x + INIT_STD * jax.random.normal(key, x.shape, x.dtype)
    return attacks.pgd(f, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, loss="kl",
                       random_start=False, x_init=x_init)


def trades_loss(logits_nat: jax.Array, logits_adv: jax.Array, y: jax.Array,
                beta: Scalar) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(total, ce, kl): CE(f(x), y) + beta * mean_i KL(p_nat,i || p_adv,i)."""
    ce = c.mean_ce(logits_nat, y)
    kl = losses.kl_divergence(logits_nat, logits_adv).mean()
    return ce + beta * kl, ce, kl


def make(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 6.0,
         norm: str = "linf", attack_bn: str = "eval") -> c.Objective:
    """TRADES objective; beta = 6 for CIFAR-10 and 1 for MNIST in the paper."""
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(beta, "beta")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
        x_adv = jax.lax.stop_gradient(
            trades_attack(f, x, y, k_attack, eps=eps, step_size=step_size, steps=steps, norm=norm))
        logits_nat, logits_adv, ms = c.natural_and_adversarial_logits(
            apply_fn, params, state["model"], x, x_adv, k_nat, k_adv)
        loss, ce, kl = trades_loss(logits_nat, logits_adv, y, beta)
        metrics = {"ce": ce, "kl": kl, "acc": c.accuracy(logits_nat, y),
                   "adv_acc": c.accuracy(logits_adv, y)}
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)
