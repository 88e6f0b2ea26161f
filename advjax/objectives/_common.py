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
is a Flax `model.apply` in the objective contract,
`apply_fn(variables, x, train=..., rngs=..., mutable=..., return_features=...)` (advjax's models), or
any other JAX model's apply function, adapted by `as_objective_apply` (once, here: `train_forward` and
`attack_logits_fn` adapt what they are given):

  * the `.apply` of a Flax module whose `__call__(x)` takes no `train` / `return_features` (it may
    take `train` or `deterministic`, which are passed on);
  * a plain function `apply(variables, x) -> logits`, variables = {"params": params, **model_state}.

Objectives that regularize features (ADR, ASCL) need `return_features=True`: pass
`as_objective_apply(apply_fn, features="name")` to read a named intermediate (a Flax submodule's
output, by its path "block/Dense_0", captured with Flax's `capture_intermediates`, or a value the
module `sow`s into "intermediates" under that name), or `features_fn=lambda variables, x: ...` (an
extra forward pass).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
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


def cross_device_mean(tree: Any, axis_name: str = "batch") -> Any:
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
    """Returns `mode` if it is one of `ATTACK_BN_MODES`, else raises a ValueError naming attack_bn."""
    if mode not in ATTACK_BN_MODES:
        raise ValueError(f"attack_bn must be one of {ATTACK_BN_MODES}, got {mode!r}")
    return mode


ApplyFn = Callable[..., Any]
FeaturesFn = Callable[[Any, jax.Array], jax.Array]


def _parameters(fn) -> Optional[Dict[str, inspect.Parameter]]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins, some C callables
        return None


def _flax_module_of(apply_fn):
    """The Flax module whose bound `.apply` is apply_fn (or a functools.partial of it), else None
    (duck-typed: no Flax import)."""
    while isinstance(apply_fn, functools.partial):
        apply_fn = apply_fn.func
    module = getattr(apply_fn, "__self__", None)
    if (module is not None and getattr(apply_fn, "__name__", "") == "apply"
            and callable(getattr(module, "init", None)) and callable(type(module).__call__)):
        return module
    return None


def _takes(params: Optional[Dict[str, inspect.Parameter]], name: str) -> bool:
    if params is None:
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _named_intermediate(intermediates, name: str, what: str) -> jax.Array:
    node = intermediates
    for part in name.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"features={name!r}: {what} has no intermediate of that name; "
                             f"captured: {sorted(intermediates) if isinstance(intermediates, dict) else []}")
        node = node[part]
    if isinstance(node, dict):
        node = node.get("__call__")
    if not isinstance(node, (tuple, list)) or not node:
        raise ValueError(f"features={name!r}: {what} recorded no value under that name")
    return node[0]


def as_objective_apply(apply_fn: ApplyFn, *, features: Optional[str] = None,
                       features_fn: Optional[FeaturesFn] = None) -> ApplyFn:
    """apply_fn in the objective contract:
    `(variables, x, *, train=False, rngs=None, mutable=False, return_features=False)`.

    An apply function already in the contract (advjax's models, or a Flax module whose `__call__`
    takes `train` and `return_features`) is returned unchanged unless `features` / `features_fn` is
    given. Otherwise (see the module docstring) the result calls the module with `train` (or
    `deterministic = not train`) if its `__call__` takes it, returns `(out, new collections)` when
    `mutable` is set (`{}` for a plain function), and with `return_features=True` returns
    `(logits, features)`, features flattened to (batch, -1), from the intermediate named `features`
    (Flax modules only) or from `features_fn(variables, x)`. Idempotent.
    """
    if getattr(apply_fn, "objective_contract", False) and features is None and features_fn is None:
        return apply_fn
    if not callable(apply_fn):
        raise ValueError(f"apply_fn must be a callable (variables, x, ...) -> logits, got "
                         f"{apply_fn!r}")
    if features is not None and features_fn is not None:
        raise ValueError("give features (a named intermediate) or features_fn, not both")
    if features is not None and not isinstance(features, str):
        raise ValueError(f"features must be the name (path) of an intermediate, got {features!r}")
    module = _flax_module_of(apply_fn)
    call_params = _parameters(type(module).__call__) if module is not None else _parameters(apply_fn)
    # A plain function with **kwargs is taken to forward them to a Flax apply.
    native = _takes(call_params, "train") and _takes(call_params, "return_features")
    if native and features is None and features_fn is None:
        return apply_fn
    if module is None and features is not None:
        raise ValueError(f"features={features!r} names an intermediate of a Flax module, but "
                         f"apply_fn is a plain function; pass features_fn=lambda variables, x: ...")
    train_arg = next((a for a in ("train", "deterministic")
                      if call_params is not None and a in call_params), None)

    def adapted(variables, x, *, train: bool = False, rngs=None, mutable=False,
                return_features: bool = False, **kwargs):
        call_kwargs = dict(kwargs)
        if train_arg == "train":
            call_kwargs["train"] = train
        elif train_arg == "deterministic":
            call_kwargs["deterministic"] = not train
        capture = return_features and features is not None
        if return_features and features is None and features_fn is None:
            raise ValueError("this objective needs features (return_features=True): wrap the model "
                             "with advjax.objectives.as_objective_apply(apply_fn, features=NAME) "
                             "or features_fn=...")
        if module is None:
            out = apply_fn(variables, x, **call_kwargs)
            new_state = {}
        else:
            collections = list(mutable) if mutable else []
            if capture:
                collections.append("intermediates")
                call_kwargs["capture_intermediates"] = (
                    lambda mdl, method: method == "__call__" and "/".join(mdl.path) == features)
            if rngs is not None:
                call_kwargs["rngs"] = rngs
            if collections:
                out, new_state = apply_fn(variables, x, mutable=collections, **call_kwargs)
                new_state = dict(new_state)
            else:
                out, new_state = apply_fn(variables, x, **call_kwargs), {}
        if return_features:
            if capture:
                feats = _named_intermediate(new_state.pop("intermediates", {}), features,
                                            type(module).__name__)
            else:
                feats = features_fn(variables, x)
            out = (out, feats.reshape(feats.shape[0], -1))
        if mutable is not False:  # as Flax: any collection list, even [], returns the updates too
            return out, new_state
        return out

    adapted.objective_contract = True
    adapted.wrapped = apply_fn
    return adapted


def attack_logits_fn(apply_fn: ApplyFn, params: Any, model_state: Dict[str, Any], *,
                     mode: str = "eval",
                     key: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
    """The logits function an attack sees while crafting examples during training.

    The variables are constants for the attack (stop_gradient), and batch norm never updates its
    running averages: mode "eval" uses the running statistics (the default, as in Madry et al.'s and
    TRADES' reference code, which call model.eval() for the attack); mode "train" normalizes with the
    attacked batch's own statistics (and applies dropout with a fixed key), discarding the update.
    `apply_fn` is adapted by `as_objective_apply`.
    """
    apply_fn = as_objective_apply(apply_fn)
    variables = jax.lax.stop_gradient({"params": params, **model_state})
    if mode == "eval":
        return lambda x: apply_fn(variables, x, train=False)
    check_attack_bn(mode)

    def logits(x):
        out, _ = apply_fn(variables, x, train=True, rngs={"dropout": key},
                          mutable=list(model_state.keys()))
        return out

    return logits


def train_forward(apply_fn: ApplyFn, params: Any, model_state: Dict[str, Any], x: jax.Array,
                  key: jax.Array, *, return_features: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """Training-mode forward pass: returns (output, new_model_state) (batch norm updates its stats).

    `apply_fn` is adapted by `as_objective_apply` (plain JAX models and Flax modules without the
    `train` / `return_features` arguments work too)."""
    apply_fn = as_objective_apply(apply_fn)
    variables = {"params": params, **model_state}
    out, new_state = apply_fn(variables, x, train=True, rngs={"dropout": key},
                              mutable=list(model_state.keys()), return_features=return_features)
    return out, {**model_state, **new_state}


def natural_and_adversarial_logits(apply_fn: ApplyFn, params: Any, model_state: Dict[str, Any],
                                   x: jax.Array, x_adv: jax.Array, k_nat: jax.Array,
                                   k_adv: jax.Array) -> Tuple[jax.Array, jax.Array, Dict[str, Any]]:
    """Training-mode passes on the clean batch, then on the adversarial one (batch norm sees them
    separately, as in the TRADES and MART reference code). Returns (logits_nat, logits_adv, state)."""
    logits_nat, model_state = train_forward(apply_fn, params, model_state, x, k_nat)
    logits_adv, model_state = train_forward(apply_fn, params, model_state, x_adv, k_adv)
    return logits_nat, logits_adv, model_state


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of examples whose argmax logit is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def mean_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Batch mean of the cross-entropy."""
    return jnp.mean(losses.cross_entropy(logits, y))


def result(loss: jax.Array, metrics: Dict[str, Any], model_state: Any,
           method_state: Any) -> Tuple[jax.Array, Dict[str, Any]]:
    """Packs (loss, aux) in the objective contract; `loss` is also logged."""
    return loss, {"metrics": {"loss": loss, **metrics},
                  "state": {"model": model_state, "method": method_state}}
