"""The valid-input box [lo, hi] of the gradient-free and minimum-norm attacks (Square, FAB).

`_validation.check_batch` checks inputs against [0, 1]; these attacks take `bounds=(lo, hi)`, so they
check the box here and hand `check_batch` the inputs clipped into [0, 1] for the rest of its checks
(shapes, dtypes, labels, the logits' shape).
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np

from advjax.attacks import _validation as v


def check_bounds(bounds):
    """(lo, hi) as floats with lo < hi, both finite; else a ValueError naming `bounds`."""
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}") from None
    if not all(isinstance(b, (numbers.Real, np.floating, np.integer)) and not isinstance(b, bool)
               for b in (lo, hi)):
        raise ValueError(f"bounds must be two numbers (static), got {bounds!r}")
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}")
    return lo, hi


def check_batch_in_bounds(logits_fn, x, y, bounds):
    """`_validation.check_batch` with the box [lo, hi] instead of [0, 1]; returns the class count."""
    lo, hi = check_bounds(bounds)
    if v.is_concrete(x) and hasattr(x, "shape") and (lo, hi) != (0.0, 1.0):
        xv = np.asarray(x)
        if xv.size and np.all(np.isfinite(xv)) and (xv.min() < lo or xv.max() > hi):
            raise ValueError(f"x must lie in the box bounds=[{lo}, {hi}], got values in "
                             f"[{xv.min()}, {xv.max()}]")
        x = jnp.clip(x, 0.0, 1.0) if np.all(np.isfinite(xv)) else x
    return v.check_batch(logits_fn, x, y)
