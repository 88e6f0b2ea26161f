"""Input checks at the public boundary of every attack.

Shape, dtype and static-hyperparameter checks run at trace time, so they also fire under `jax.jit`.
Value checks (finite x inside the box `bounds`, labels in range, eps >= 0) need concrete values: they
run when an attack is called on concrete arrays (eagerly), and are skipped when its inputs are
tracers (inside `jit`/`vmap`), because a traced value cannot be inspected without a host sync. Call
the attack once eagerly, or use `advjax.evaluate`, which validates each batch before the jitted
call.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from advjax import threat


def is_concrete(a: Any) -> bool:
    """True if `a` has a value now (a NumPy/JAX array or Python number, not a tracer)."""
    return not isinstance(a, jax.core.Tracer)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Returns `value` as an int >= `minimum` (a static count: steps, restarts), else raises."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum} (static), got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_nonnegative(value: Any, name: str) -> Any:
    """eps, step sizes: a Python number or scalar array >= 0 (checked when concrete)."""
    if value is None:
        raise ValueError(f"{name} is required")
    if is_concrete(value):
        arr = np.asarray(value)
        if arr.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
        if not np.isfinite(arr) or arr < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    elif jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    return value


def check_batch(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, *,
                labels_name: str = "y", bounds: threat.Bounds = threat.DEFAULT_BOUNDS) -> int:
    """Checks x (batch of inputs in the box `bounds`, default [0, 1]) and y (batch of int labels) and
    returns the class count. `bounds` itself is validated (`threat.check_bounds`).

    The class count comes from `jax.eval_shape(logits_fn, x)`: a trace, no computation.
    """
    if not hasattr(x, "shape") or jnp.ndim(x) < 1:
        raise ValueError(f"x must be an array with a leading batch axis, got {type(x).__name__}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {jnp.result_type(x)}")
    if not hasattr(y, "shape") or jnp.ndim(y) != 1:
        raise ValueError(f"{labels_name} must be a 1-D array of int labels, got shape {jnp.shape(y)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(f"{labels_name} must hold integer labels, got dtype {jnp.result_type(y)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{labels_name} has batch size {y.shape[0]} but x has batch size {x.shape[0]}")
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"logits_fn must map a batch of {x.shape[0]} inputs to logits of shape "
            f"({x.shape[0]}, classes), got {out.shape}")
    num_classes = out.shape[1]
    check_in_box(x, bounds)
    if is_concrete(y):
        yv = np.asarray(y)
        if yv.size and (yv.min() < 0 or yv.max() >= num_classes):
            raise ValueError(
                f"{labels_name} must be class indices in [0, {num_classes}), got values in "
                f"[{yv.min()}, {yv.max()}]")
    return num_classes


def check_in_box(x: jax.Array, bounds: threat.Bounds = threat.DEFAULT_BOUNDS,
                 name: str = "x") -> threat.Bounds:
    """Validates `bounds` (`threat.check_bounds`) and, when x is concrete, that x is finite and lies
    in the box [lo, hi]. Returns (lo, hi) as floats."""
    lo, hi = threat.check_bounds(bounds)
    if is_concrete(x):
        xv = np.asarray(x)
        if not np.all(np.isfinite(xv)):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        if xv.size and (xv.min() < lo or xv.max() > hi):
            raise ValueError(f"{name} must lie in the box bounds=[{lo:g}, {hi:g}], got values in "
                             f"[{xv.min()}, {xv.max()}]")
    return lo, hi


def check_key(key: Optional[jax.Array], needed: bool, why: str) -> Optional[jax.Array]:
    if needed and key is None:
        raise ValueError(f"key is required ({why})")
    return key
