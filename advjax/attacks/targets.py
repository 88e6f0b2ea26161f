"""Target classes for targeted attacks: the rules, and `targeted(attack, rule)` that applies one.

A targeted attack moves x towards a chosen class t != y. advjax's targeted attacks take the targets
directly (`pgd(..., targeted=True)` with y = the targets; `apgd_t(..., targets=t)` with y = the true
labels); this module chooses t. A rule ("selector") is a function

    select(logits_fn, x, y, key) -> targets, shape (batch,), int32

and `targeted(attack, select)` turns any attack with a targeted mode into an attack with the usual
contract `(logits_fn, x, y, *, key, **hyperparameters) -> x_adv`, y the TRUE labels, that picks its
targets by the rule, as torchattacks' `set_mode_targeted_random / _least_likely / _by_function` do.

Rules (factories returning a selector):
  * `random()`: uniform over the classes other than y (needs a key); torchattacks'
    `set_mode_targeted_random`.
  * `least_likely(k=1)`: the k-th least likely class under the clean logits, y excluded;
    torchattacks' `set_mode_targeted_least_likely(kth_min)` (which does not exclude y; for a trained
    classifier y is almost never among the least likely, and excluding it keeps every target a real
    target).
  * `most_likely(k=1)`: the k-th most likely class other than y, the target of APGD-T's k-th run
    (Croce & Hein 2020; `ranked_targets`).
  * `by_label_map(mapping)`: t = mapping[y], a fixed class-to-target table (e.g. y + 1 mod C).
  * `by_function(fn)`: t = fn(x, y); torchattacks' `set_mode_targeted_by_function`.
Target labels known in advance need no rule: pass them as y with `targeted=True`, or as `targets=` to
`apgd_t` (torchattacks' `set_mode_targeted_by_label`).

Only jax here (no Flax); the rules run inside `jit` (the class count comes from `jax.eval_shape`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import _validation as v

LogitsFn = Callable[[jax.Array], jax.Array]
Selector = Callable[[LogitsFn, jax.Array, jax.Array, Optional[jax.Array]], jax.Array]
Attack = Callable[..., jax.Array]


# ------------------------------------------------------------------------------------------------
# Target rules as functions of logits / labels
# ------------------------------------------------------------------------------------------------

def ranked_targets(logits: jax.Array, y: jax.Array, num: int) -> jax.Array:
    """(batch, num) int32: the classes other than y in decreasing order of their logit.

    Column k-1 is the k-th most likely class other than y. For a correctly classified example this is
    the (k+1)-th most likely class overall, APGD-T's k-th target in the reference AutoAttack code
    (`output.sort(dim=1)[1][:, -(k + 1)]`). Ties are broken towards the lower class index.
    """
    num_classes = logits.shape[-1]
    num = v.check_positive_int(num, "num")
    if num > num_classes - 1:
        raise ValueError(f"num must be <= classes - 1 = {num_classes - 1}, got {num}")
    z = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, logits)
    return jnp.argsort(-z, axis=-1, stable=True)[:, :num].astype(jnp.int32)


def least_likely_targets(logits: jax.Array, y: jax.Array, k: int = 1) -> jax.Array:
    """(batch,) int32: the k-th least likely class other than y (k = 1: the least likely)."""
    num_classes = logits.shape[-1]
    k = v.check_positive_int(k, "k")
    if k > num_classes - 1:
        raise ValueError(f"k must be <= classes - 1 = {num_classes - 1}, got {k}")
    z = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), jnp.inf, logits)
    return jnp.argsort(z, axis=-1, stable=True)[:, k - 1].astype(jnp.int32)


def random_targets(key: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """(batch,) int32: a class drawn uniformly from the num_classes - 1 classes other than y.

    t = (y + u) mod C with u uniform on {1, ..., C - 1}: uniform over the other classes, never y.
    """
    num_classes = v.check_positive_int(num_classes, "num_classes", minimum=2)
    u = jax.random.randint(key, jnp.shape(y), 1, num_classes)
    return ((y.astype(jnp.int32) + u) % num_classes).astype(jnp.int32)


def label_map_targets(y: jax.Array, mapping: Union[Sequence[int], Mapping[int, int], jax.Array],
                      num_classes: int) -> jax.Array:
    """(batch,) int32: mapping[y]. `mapping` is a sequence of num_classes target classes (class c ->
    mapping[c]) or a dict that names every class."""
    table = _mapping_table(mapping, num_classes)
    return jnp.asarray(table)[y]


def _mapping_table(mapping, num_classes: int) -> np.ndarray:
    if isinstance(mapping, Mapping):
        missing = [c for c in range(num_classes) if c not in mapping]
        if missing:
            raise ValueError(f"mapping must give a target for every class 0..{num_classes - 1}; "
                             f"missing {missing}")
        mapping = [mapping[c] for c in range(num_classes)]
    table = np.asarray(mapping)
    if table.shape != (num_classes,) or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"mapping must hold {num_classes} integer classes (one per class), got "
                         f"{table.tolist()!r}")
    if table.min() < 0 or table.max() >= num_classes:
        raise ValueError(f"mapping values must be classes in [0, {num_classes}), got {table.tolist()}")
    return table.astype(np.int32)


def check_targets(targets: Any, y: jax.Array, num_classes: int, *,
                  allow_true_class: bool = False) -> jax.Array:
    """Checks a (batch,) integer array of target classes against y; returns it.

    Shape and dtype at trace time; the range [0, num_classes) and (unless allow_true_class) targets
    != y when the values are concrete.
    """
    if not hasattr(targets, "shape") or jnp.shape(targets) != jnp.shape(y):
        raise ValueError(f"targets must be an int array of y's shape {jnp.shape(y)}, got "
                         f"{getattr(targets, 'shape', type(targets).__name__)}")
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise ValueError(f"targets must hold integer classes, got dtype {jnp.result_type(targets)}")
    if v.is_concrete(targets):
        t = np.asarray(targets)
        if t.size and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"targets must be classes in [0, {num_classes}), got values in "
                             f"[{t.min()}, {t.max()}]")
        if not allow_true_class and v.is_concrete(y) and np.any(t == np.asarray(y)):
            raise ValueError(f"targets must differ from the true labels y; equal at rows "
                             f"{np.flatnonzero(t == np.asarray(y))[:10].tolist()}")
    return targets


def _num_classes(logits_fn: LogitsFn, x: jax.Array) -> int:
    return jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape[-1]


# ------------------------------------------------------------------------------------------------
# Rules as selectors (logits_fn, x, y, key) -> targets
# ------------------------------------------------------------------------------------------------

def random() -> Selector:
    """Selector: a uniformly random class other than y (needs the attack's key)."""

    def select(logits_fn, x, y, key):
        v.check_key(key, True, "random targets are drawn from the key")
        return random_targets(key, y, _num_classes(logits_fn, x))

    select.rule = "random"
    return select


def least_likely(k: int = 1) -> Selector:
    """Selector: the k-th least likely class other than y under the clean logits."""
    k = v.check_positive_int(k, "k")

    def select(logits_fn, x, y, key):
        del key
        return least_likely_targets(jax.lax.stop_gradient(logits_fn(x)), y, k)

    select.rule = f"least_likely(k={k})"
    return select


def most_likely(k: int = 1) -> Selector:
    """Selector: the k-th most likely class other than y under the clean logits (APGD-T's k-th)."""
    k = v.check_positive_int(k, "k")

    def select(logits_fn, x, y, key):
        del key
        return ranked_targets(jax.lax.stop_gradient(logits_fn(x)), y, k)[:, k - 1]

    select.rule = f"most_likely(k={k})"
    return select


def by_label_map(mapping: Union[Sequence[int], Mapping[int, int], jax.Array]) -> Selector:
    """Selector: t = mapping[y] (a sequence of one target per class, or a dict naming every class)."""

    def select(logits_fn, x, y, key):
        del key
        return label_map_targets(y, mapping, _num_classes(logits_fn, x))

    select.rule = "by_label_map"
    return select


def by_function(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Selector:
    """Selector: t = fn(x, y), any JAX function of the inputs and true labels."""
    if not callable(fn):
        raise ValueError(f"fn must be a callable (x, y) -> targets, got {fn!r}")

    def select(logits_fn, x, y, key):
        del logits_fn, key
        return jnp.asarray(fn(x, y)).astype(jnp.int32)

    select.rule = f"by_function({getattr(fn, '__name__', 'fn')})"
    return select


# ------------------------------------------------------------------------------------------------
# The targeted mode of an attack
# ------------------------------------------------------------------------------------------------

def targeted(attack: Attack, select: Selector) -> Attack:
    """`attack` in targeted mode with targets chosen by `select`; y of the result is the TRUE labels.

    Works with every attack that has a targeted mode: those with a `targets` argument (`apgd_t`) get
    `targets=t` and y; those with a `targeted` flag (fgsm, fgm, rfgsm, pgd, bim, mim, cw_pgd, wrm) get
    y = t and `targeted=True`. The key is split: one half for `select` (random targets), the other for
    the attack. The returned function has `.targets(logits_fn, x, y, key)`, which gives the targets
    it uses for that key (to score targeted success), `.attack` and `.select`.
    """
    if not callable(attack):
        raise ValueError(f"attack must be a callable, got {attack!r}")
    if not callable(select):
        raise ValueError(f"select must be a selector (logits_fn, x, y, key) -> targets, got {select!r}")
    name = getattr(attack, "__name__", repr(attack))
    params = inspect.signature(attack).parameters
    if "targets" in params:
        mode = "targets"
    elif "targeted" in params:
        mode = "flag"
    else:
        raise ValueError(f"attack {name!r} has no targeted mode (no `targeted` or `targets` "
                         f"argument)")

    def split(key):
        if key is None:
            return None, None
        k_select, k_attack = jax.random.split(key)
        return k_select, k_attack

    def targets_for(logits_fn, x, y, key=None):
        t = select(logits_fn, x, y, split(key)[0])
        return check_targets(t, y, _num_classes(logits_fn, x))

    def run(logits_fn, x, y, *, key=None, **hyperparameters):
        for bad in ("targeted", "targets"):
            if bad in hyperparameters:
                raise ValueError(f"{bad} is set by targeted(); do not pass it")
        t = targets_for(logits_fn, x, y, key)
        k_attack = split(key)[1]
        if mode == "targets":
            return attack(logits_fn, x, y, key=k_attack, targets=t, **hyperparameters)
        return attack(logits_fn, x, t, key=k_attack, targeted=True, **hyperparameters)

    run.__name__ = f"targeted_{name}"
    run.__qualname__ = run.__name__
    run.__doc__ = (f"{name} in targeted mode, targets by {getattr(select, 'rule', 'a selector')}; "
                   f"y holds the true labels (`advjax.attacks.targets.targeted`).")
    run.targets = targets_for
    run.attack = attack
    run.select = select
    for attr in ("batch_level", "set_level"):
        if hasattr(attack, attr):
            setattr(run, attr, getattr(attack, attr))
    return run


__all__ = ["Selector", "ranked_targets", "least_likely_targets", "random_targets",
           "label_map_targets", "check_targets", "random", "least_likely", "most_likely",
           "by_label_map", "by_function", "targeted"]
