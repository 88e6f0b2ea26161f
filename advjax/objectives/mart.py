"""MART, misclassification-aware adversarial training (Wang et al., ICLR 2020, Eq. 13 / Alg. 1).

    L = BCE(p(x'), y) + beta * mean_i [ KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i)) ],
    BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k),

with x' from PGD on the cross-entropy started at x + 0.001 N(0, I) (authors' code). The small constants
of the authors' code (log(1.0001 - p), 1.0000001 - p_y, +1e-12 inside the KL log) are kept, because they
bound the loss when a probability saturates.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from advjax import attacks, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.threat import Scalar

INIT_STD = 0.001


def boosted_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example BCE of MART, Eq. 11: -log p_y - log(1.0001 - max_{k != y} p_k)."""
    p = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    p_y = jnp.sum(jnp.where(onehot, p, 0.0), axis=-1)
    p_other = jnp.max(jnp.where(onehot, -1.0, p), axis=-1)
    return -jnp.log(p_y + 1e-12) - jnp.log(1.0001 - p_other)


def mart_loss(logits_nat: jax.Array, logits_adv: jax.Array, y: jax.Array,
              beta: Scalar) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(total, bce, weighted_kl) of MART, Eq. 13."""
    p_nat = jax.nn.softmax(logits_nat, axis=-1)
    p_adv = jax.nn.softmax(logits_adv, axis=-1)
    bce = boosted_ce(logits_adv, y).mean()
    kl = jnp.sum(p_nat * (jnp.log(p_nat + 1e-12) - jnp.log(p_adv + 1e-12)), axis=-1)
    p_y = jnp.take_along_axis(p_nat, y[:, None], axis=-1)[:, 0]
    weighted = jnp.mean(kl * (1.0000001 - p_y))
    return bce + beta * weighted, bce, weighted


def make(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, beta: float = 6.0,
         norm: str = "linf", attack_bn: str = "eval") -> c.Objective:
    """MART objective; beta = 6 in the paper's CIFAR-10 experiments."""
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(beta, "beta")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_init, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
        x_init = x + INIT_STD * jax.random.normal(k_init, x.shape, x.dtype)
        x_adv = jax.lax.stop_gradient(attacks.pgd(
            f, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=False,
            x_init=x_init))
        logits_nat, logits_adv, ms = c.natural_and_adversarial_logits(
            apply_fn, params, state["model"], x, x_adv, k_nat, k_adv)
        loss, bce, kl = mart_loss(logits_nat, logits_adv, y, beta)
        metrics = {"bce": bce, "kl": kl, "acc": c.accuracy(logits_nat, y),
                   "adv_acc": c.accuracy(logits_adv, y)}
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)
