"""Models trained on normalized inputs, attacked in pixel space.

Attacks perturb inputs in the box `bounds` (pixels, by default [0, 1]) and measure eps there. A model
trained on standardized inputs, (x - mean) / std per channel, is attacked through

    normalized(logits_fn, mean, std) = x -> logits_fn((x - mean) / std),

which puts the standardization inside the logits function, so the threat model (eps, the box) stays
in pixel units, as Foolbox's `preprocessing=dict(mean=..., std=...)` and torchattacks'
`set_normalization_used(mean, std)` do. (advjax's own models normalize inside the module; this is
for models that expect normalized inputs.)
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jax.Array], jax.Array]
Stats = Union[float, Sequence[float], np.ndarray, jax.Array]


def _check_stats(value, name: str) -> np.ndarray:
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{name} must be concrete numbers, got a traced value")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of per-channel numbers, "
                         f"got {value!r}") from None
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"{name} must be a number or a 1-D sequence of per-channel numbers (the "
                         f"last axis of x, NHWC), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def normalized(logits_fn: LogitsFn, mean: Stats, std: Stats) -> LogitsFn:
    """x -> logits_fn((x - mean) / std), mean and std scalars or per-channel (last axis of x).

    The attack sees pixels; the model sees standardized inputs. std must be > 0. If `logits_fn` has a
    `members` attribute (an ensemble's member logits, `advjax.train.eval_logits_fn`), the result has
    one too, normalized the same way.
    """
    if not callable(logits_fn):
        raise ValueError(f"logits_fn must be a callable x -> logits, got {logits_fn!r}")
    mean_a = _check_stats(mean, "mean")
    std_a = _check_stats(std, "std")
    if np.any(std_a <= 0):
        raise ValueError(f"std must be > 0, got {std!r}")
    if mean_a.size > 1 and std_a.size > 1 and mean_a.shape != std_a.shape:
        raise ValueError(f"mean and std must have the same number of channels, got {mean_a.size} "
                         f"and {std_a.size}")
    channels = max(mean_a.size, std_a.size)

    def standardize(x):
        if channels > 1 and x.shape[-1] != channels:
            raise ValueError(f"mean/std have {channels} channels but x has {x.shape[-1]} on its "
                             f"last axis (inputs are NHWC)")
        m = jnp.asarray(mean_a, x.dtype)
        s = jnp.asarray(std_a, x.dtype)
        return (x - m) / s

    def logits(x):
        return logits_fn(standardize(x))

    logits.mean = mean_a
    logits.std = std_a
    logits.inner = logits_fn
    members = getattr(logits_fn, "members", None)
    if callable(members):
        logits.members = lambda x: members(standardize(x))
    return logits


__all__ = ["normalized"]
