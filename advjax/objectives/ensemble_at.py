"""ADV-EN, adversarial training of an ensemble as one model: the ensemble baseline of CCE (thesis
Ch. 4, Sec. 4.3, "Baseline Methods").

The thesis: "ADV-EN is the variant of PGD adversarial training method (ADV) in the context of
ensemble learning, in which the entire ensemble model is treated as one unified model applied with
adversarial training", compared with CCE at "the same number of committee members and also the
member's architecture". The text does not write the loss out; the authors' code
(`Crossing-Collaborative-Ensemble`, `main_train.py` + `lib_method.adv_EN`, read for this) does:

    x_a^en = PGD on CE(f^en(x + delta), y),  f^en = (1/N) sum_n softmax(f^n)  (the ensemble output)
    L = sum_n [ CE(f^n(x_a^en), y) + CE(f^n(x), y) ]                     (`loss="members"`, default)

i.e. every member is trained on the ensemble's adversarial examples and on the clean batch, with
per-member cross-entropies, batch means. `loss="ensemble"` is the other reading of "one unified
model": L = CE(f^en(x_a^en), y) + CE(f^en(x), y) on the ensemble output (the form TA-MOO's released
ensemble training uses). The model is an `advjax.models.ensemble.Ensemble`, whose default output is
log f^en, so the attack sees the ensemble exactly as an evaluation attack does.

Contrast: CCE-Base (`cce(mode="base")`) attacks every member separately (x_a^n against f^n alone).
With N = 1, ADV-EN is ADR-None (Ch. 3, Eq. 4): CE(f(x_a)) + CE(f(x)), x_a by PGD on CE.
Batch norm: two training-mode passes (x, then x_a^en), as `cce`.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import jax

from advjax import attacks, losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.objectives.cce import ensemble_log_probs

LOSSES = ("members", "ensemble")


def adv_en_loss(logits_nat: jax.Array, logits_adv: jax.Array, y: jax.Array,
                loss: str = "members") -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(L, metrics) from member logits (N, B, C) on x and on x_a^en (module docstring)."""
    if loss == "members":
        per_member = lambda z: jax.vmap(losses.cross_entropy, in_axes=(0, None))(z, y).mean(-1)
        ce_nat, ce_adv = per_member(logits_nat), per_member(logits_adv)
        metrics = {f"loss_member{i}": ce_nat[i] + ce_adv[i] for i in range(ce_nat.shape[0])}
        return (ce_nat + ce_adv).sum(), metrics
    if loss == "ensemble":
        ce_nat = c.mean_ce(ensemble_log_probs(logits_nat), y)
        ce_adv = c.mean_ce(ensemble_log_probs(logits_adv), y)
        return ce_nat + ce_adv, {"ce_nat": ce_nat, "ce_adv": ce_adv}
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def adv_en(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
           random_start: bool = True, loss: str = "members",
           attack_bn: str = "eval") -> c.Objective:
    """ADV-EN (Ch. 4, Sec. 4.3 baselines) for an `Ensemble` apply_fn: PGD against the ensemble
    output, then every member's CE on those examples and on x (`loss="members"`, the authors' code)
    or the ensemble output's CE (`loss="ensemble"`)."""
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    members_fn = functools.partial(apply_fn, return_members=True)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
        x_adv = jax.lax.stop_gradient(
            attacks.pgd(f, x, y, key=k_attack, eps=eps, step_size=step_size, steps=steps,
                        norm=norm, random_start=random_start))
        logits_nat, ms = c.train_forward(members_fn, params, state["model"], x, k_nat)
        logits_adv, ms = c.train_forward(members_fn, params, ms, x_adv, k_adv)
        total, metrics = adv_en_loss(logits_nat, logits_adv, y, loss)
        metrics.update({"acc": c.accuracy(ensemble_log_probs(logits_nat), y),
                        "adv_acc": c.accuracy(ensemble_log_probs(logits_adv), y)})
        return c.result(total, metrics, ms, state["method"])

    return c.Objective(objective)
