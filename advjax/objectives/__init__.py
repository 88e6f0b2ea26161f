"""Training objectives, one module per method family; the loop looks them up by name.

Each entry of `OBJECTIVES` is a factory `make(apply_fn, **hyperparameters) -> Objective` (see
`_common` for the contract). `make_objective(name, apply_fn, hyperparameters)` checks the
hyperparameter names against the factory's signature and lists the valid ones on a mistake.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping

from advjax.objectives import adt, at, mart, standard, trades
from advjax.objectives import awp, udr, wrm
from advjax.objectives import adr, ascl, cce, ensemble_at
from advjax.objectives._common import (Objective, accuracy, as_objective_apply, attack_logits_fn,
                                       mean_ce, result, train_forward)

OBJECTIVES: Dict[str, Callable[..., Objective]] = {
    "standard": standard.make,
    "fgsm_at": at.fgsm_at,
    "ro": at.ro,
    "pgd_at": at.pgd_at,
    "trades": trades.make,
    "mart": mart.make,
    # Distributional robustness (WRM / DRA, UDR) and adversarial weight perturbation:
    "wrm": wrm.wrm,
    "dra_inf": wrm.dra_inf,
    "dra_multi": wrm.dra_multi,
    "dra_mahalanobis": wrm.dra_mahalanobis,
    "udr_pgd": udr.udr_pgd,
    "udr_trades": udr.udr_trades,
    "udr_mart": udr.udr_mart,
    "awp": awp.awp_at,
    "udr_awp": awp.udr_awp,
    "adt_exp": adt.adt_exp,
    "adt_exp_am": adt.adt_exp_am,
    "adt_imp_am": adt.adt_imp_am,
    "adt_exp_trades": adt.adt_exp_trades,
    # Thesis Ch. 3 (ADR, ASCL) and Ch. 4 (CCE, its baseline ADV-EN, TA-MOO-AT; the model is
    # models.ensemble.Ensemble):
    "adr_adv": adr.adr_adv,
    "adr_trades": adr.adr_trades,
    "ascl": ascl.ascl,
    "cce": cce.cce,
    "adv_en": ensemble_at.adv_en,
    "ensemble_moo_at": cce.ensemble_moo_at,
}


def register_objective(name: str, factory: Callable[..., Objective]) -> Callable[..., Objective]:
    """Adds a method family's factory (method modules call this at import)."""
    if name in OBJECTIVES and OBJECTIVES[name] is not factory:
        raise ValueError(f"objective {name!r} is already registered")
    OBJECTIVES[name] = factory
    return factory


def objective_hyperparameters(name: str) -> Dict[str, Any]:
    """The keyword hyperparameters (with defaults, or None if required) of objective `name`."""
    factory = _factory(name)
    return {k: (None if p.default is p.empty else p.default)
            for k, p in inspect.signature(factory).parameters.items() if p.kind == p.KEYWORD_ONLY}


def _factory(name):
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}") from None


def make_objective(name: str, apply_fn: Callable[..., Any],
                   hyperparameters: Mapping[str, Any]) -> Objective:
    """Builds objective `name` for `apply_fn`; unknown or missing hyperparameters raise ValueError.

    `apply_fn`: a Flax `model.apply` or any JAX apply function `apply(variables, x)` (see
    `as_objective_apply`, which the objectives apply to it)."""
    factory = _factory(name)
    valid = objective_hyperparameters(name)
    unknown = set(hyperparameters) - set(valid)
    if unknown:
        raise ValueError(f"objective {name!r} got unknown hyperparameters {sorted(unknown)}; "
                         f"valid: {sorted(valid)}")
    params = inspect.signature(factory).parameters
    missing = [k for k in valid if params[k].default is params[k].empty and k not in hyperparameters]
    if missing:
        raise ValueError(f"objective {name!r} needs hyperparameters {missing}")
    return factory(apply_fn, **dict(hyperparameters))


__all__ = ["OBJECTIVES", "Objective", "make_objective", "register_objective", "as_objective_apply",
           "objective_hyperparameters", "attack_logits_fn", "train_forward", "accuracy", "mean_ce",
           "result"]
