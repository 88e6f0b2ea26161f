"""What every training objective shares: the objective contract and model forward passes.

Contract: a training objective is a pure function

    objective(params, state, batch, key) -> (loss, aux)

* `params`: the model parameters (what the loop differentiates `loss` with respect to).
* `state`: {"model": model collections other than params (e.g. {"batch_stats": ...}, or {}),
            "method": the method's own pytree (UDR's lambda, DRA's A, ...; {} for most)}.
* `batch`: {"image": (B, H, W, C) in [0, 1], "label": (B,) int}.
* `key`: a PRNG key for this step. advjax.train calls the objective once on the whole global batch
  (jitted over the devices), so a draw of shape (B, ...) gives example i the same noise on any
  number of devices.
* `aux`: {"metrics": {name: scalar}, "state": the new state (same structure)}.

Means over the batch are means over the global batch; an objective run per device under pmap or
shard_map averages across devices itself (`cross_device_mean`).
An objective is built by a factory `make(apply_fn, **hyperparameters) -> Objective`, where `apply_fn`
is a Flax `model.apply`: `apply_fn(variables, x, train=..., rngs=..., mutable=..., return_features=...)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from advjax import losses

ObjectiveFn = Callable[[Any, Dict[str, Any], Dict[str, jax.Array], jax.Array],
                       Tuple[jax.Array, Dict[str, Any]]]

ATTACK_BN_MODES = ("eval", "train")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective, the initial value of its method state, and an optional epoch hook.

    `init_method_state(key)` returns the method's initial pytree (e.g. UDR's lambda, an ADT
    generator's parameters and optimizer state). `end_of_epoch(method_state) -> method_state`, if set,
    runs once after every epoch on the (device-averaged) method state, e.g. DRA's Algorithm 3, which
    recomputes the Mahalanobis matrix A from the perturbations accumulated during the epoch.
    """
    fn: ObjectiveFn
    init_method_state: Callable[[jax.Array], Any] = lambda key: {}
    end_of_epoch: Optional[Callable[[Any], Any]] = None

    def __call__(self, params, state, batch, key):
        return self.fn(params, state, batch, key)


def cross_device_mean(tree, axis_name: str = "batch"):
    """`lax.pmean` over the training loop's device axis when it is bound (inside the pmapped step),
    identity otherwise (objectives called directly, e.g. in tests).

    For objectives that update a sub-network of their own inside the step (an ADT generator): average
    its gradients with this before the optimizer update so that every device applies the same update.
    """
    try:
        return jax.lax.pmean(tree, axis_name)
    except NameError:
        return tree


def check_attack_bn(mode: str) -> str:
    if mode not in ATTACK_BN_MODES:
        raise ValueError(f"attack_bn must be one of {ATTACK_BN_MODES}, got {mode!r}")
    return mode


def attack_logits_fn(apply_fn, params, model_state, *, mode: str = "eval",
                     key: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
    """The logits function an attack sees while crafting examples during training.

    The variables are constants for the attack (stop_gradient), and batch norm never updates its
    running averages: mode "eval" uses the running statistics (the default, as in Madry et al.'s and
    TRADES' reference code, which call model.eval() for the attack); mode "train" normalizes with the
    attacked batch's own statistics (and applies dropout with a fixed key), discarding the update.
    """
    variables = jax.lax.stop_gradient({"params": params, **model_state})
    if mode == "eval":
        return lambda x: apply_fn(variables, x, train=False)
    check_attack_bn(mode)

    def logits(x):
        out, _ = apply_fn(variables, x, train=True, rngs={"dropout": key},
                          mutable=list(model_state.keys()))
        return out

    return logits


def train_forward(apply_fn, params, model_state, x, key, *, return_features: bool = False):
    """Training-mode forward pass: returns (output, new_model_state) (batch norm updates its stats)."""
    variables = {"params": params, **model_state}
    out, new_state = apply_fn(variables, x, train=True, rngs={"dropout": key},
                              mutable=list(model_state.keys()), return_features=return_features)
    return out, {**model_state, **new_state}


def natural_and_adversarial_logits(apply_fn, params, model_state, x, x_adv, k_nat, k_adv):
    """Training-mode passes on the clean batch, then on the adversarial one (batch norm sees them
    separately, as in the TRADES and MART reference code). Returns (logits_nat, logits_adv, state)."""
    logits_nat, model_state = train_forward(apply_fn, params, model_state, x, k_nat)
    logits_adv, model_state = train_forward(apply_fn, params, model_state, x_adv, k_adv)
    return logits_nat, logits_adv, model_state


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def mean_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(losses.cross_entropy(logits, y))


def result(loss, metrics, model_state, method_state):
    """Packs (loss, aux) in the objective contract; `loss` is also logged."""
    return loss, {"metrics": {"loss": loss, **metrics},
                  "state": {"model": model_state, "method": method_state}}
