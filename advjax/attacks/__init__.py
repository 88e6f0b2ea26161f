"""Attacks: pure functions `attack(logits_fn, x, y, *, key, **hyperparameters) -> x_adv`.

One module per family; this package re-exports a flat API and a name registry (`ATTACKS`,
`get_attack`) used by configs and the CLI. Every attack takes `bounds=(lo, hi)`, the valid-input box
(default (0, 1)); `normalized(logits_fn, mean, std)` attacks a model trained on standardized inputs in
pixel space; `targets` holds the target-selection rules and `targeted(attack, rule)` the targeted
mode of any attack that has one.
"""

from __future__ import annotations

from typing import Callable

from advjax.attacks import targets
from advjax.attacks.adt import adt_exp_attack
from advjax.attacks.apgd import apgd, apgd_ce, apgd_t
from advjax.attacks.daa import daa_algorithm1, daa_blob, daa_dgf
from advjax.attacks.fab import fab, fab_t
from advjax.attacks.gradient import bim, cw_pgd, fgm, fgsm, mim, multitargeted_pgd, pgd, rfgsm
from advjax.attacks.preprocessing import normalized
from advjax.attacks.square import square, square_run
from advjax.attacks.tamoo import tamoo_ens, tamoo_ens_members, tamoo_eot, tamoo_uni
from advjax.attacks.targets import targeted
from advjax.attacks.wrm import wrm

ATTACKS = {
    "fgsm": fgsm,
    "fgm": fgm,
    "rfgsm": rfgsm,
    "bim": bim,
    "pgd": pgd,
    "mim": mim,
    "cw_pgd": cw_pgd,
    "multitargeted_pgd": multitargeted_pgd,
    "apgd": apgd,
    "apgd_ce": apgd_ce,
    "apgd_t": apgd_t,
    # AutoAttack's other two (Croce & Hein 2020): the minimum-norm FAB (untargeted / FAB-T) within an
    # eps budget, and the gradient-free Square Attack (Andriushchenko et al. 2020).
    "fab": fab,
    "fab_t": fab_t,
    "square": square,
    # ADT's EXP attack (per-example); "adt_exp_am" / "adt_imp_am" register from advjax.objectives.adt.
    "adt_exp": adt_exp_attack,
    # Lagrangian, no ball (WRM / DRA): for training and studies, not a threat-model evaluation.
    "wrm": wrm,
    # Batch-level (the evaluation batch is DAA's particle set; Algorithm 1 with R = 1):
    "daa_blob": daa_blob,
    "daa_dgf": daa_dgf,
    # Set-level: Algorithm 1 over the whole evaluation set (R rounds of reshuffled minibatches).
    "daa_algorithm1": daa_algorithm1,
    # TA-MOO (thesis Ch. 4): EoT per-example; UNI batch-level (groups of K images share one delta).
    # ENS: tamoo_ens takes the members' logits functions; the registered "tamoo_ens_members" takes
    # an ensemble's logits_fn with a .members attribute (advjax.train.eval_logits_fn sets it).
    "tamoo_ens_members": tamoo_ens_members,
    "tamoo_eot": tamoo_eot,
    "tamoo_uni": tamoo_uni,
}


def register_attack(name: str, fn: Callable) -> Callable:
    """Adds an attack to the registry (method modules register theirs, e.g. DAA, ADT)."""
    if name in ATTACKS and ATTACKS[name] is not fn:
        raise ValueError(f"attack {name!r} is already registered")
    ATTACKS[name] = fn
    return fn


def get_attack(name: str) -> Callable:
    """Looks an attack up by name; the error lists the valid names."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid: {sorted(ATTACKS)}") from None


# The attack functions imported here (a registry name may differ from its function's: "adt_exp").
__all__ = ["ATTACKS", "tamoo_ens", "square_run", "get_attack", "register_attack", "normalized",
           "targeted", "targets"] + sorted({getattr(fn, "__name__", "") for fn in ATTACKS.values()}
                                           & set(globals()))
