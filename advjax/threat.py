"""Threat models: norm balls around a batch of inputs, inside the valid-input box [lo, hi].

Every function works on a batch whose leading axis indexes examples; norms and reductions run over all
other axes, so each example has its own ball. The l_p ball of radius eps around x is

    B_p(x, eps) = {x' : ||x' - x||_p <= eps},   p in {inf, 2, 1},

and an admissible adversarial example lies in B_p(x, eps) intersected with the box [lo, hi]^d, the
`bounds` of every attack: (0, 1) by default (images scaled to [0, 1]), any finite lo < hi otherwise
(e.g. (0, 255), or (-1, 1) for a model trained on inputs scaled to [-1, 1]).

Contents:
  * `project(delta, eps, norm)`: exact Euclidean projection of a perturbation onto the ball
    (l1 by the sort-based simplex projection of Duchi et al., ICML 2008, Fig. 1).
  * `steepest_ascent(grad, norm, l1_k)`: the normalized steepest-ascent direction of unit norm
    (sign for linf; g / ||g||_2 for l2; the top-k coordinate step for l1, Sec. 4.1 of
    Shaham et al., "Understanding adversarial training: increasing local stability of neural nets through
    robust optimization", the robust-optimization paper).
  * `random_init(key, x, eps, norm)`: a perturbation drawn uniformly from the ball.
  * `clip_to_box(x, lo, hi)`: the box; `check_bounds(bounds)` validates a (lo, hi) pair.

Projecting onto the ball and then clipping x + delta to the box keeps the result in both sets: x is in
the box (the attacks check it), so clipping only moves each coordinate of delta towards 0 and never
increases an l_p norm. (It is not the exact projection onto the intersection; no attack library computes that, and the
attacks only need a feasible point.)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("linf", "l2", "l1")

# eps, step sizes and other traceable hyperparameters: a Python number or a 0-d (maybe traced) array.
Scalar = Union[float, int, jax.Array]
# The valid-input box (lo, hi): static Python numbers.
Bounds = Tuple[float, float]
DEFAULT_BOUNDS: Bounds = (0.0, 1.0)

# Added to norms before dividing, so that a zero gradient gives a zero step rather than NaN.
_TINY = 1e-12


def check_norm(norm: str) -> str:
    """Returns `norm` if it is one of `NORMS`, else raises a ValueError naming the argument."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a (batch,) vector so that it broadcasts against x."""
    return v.reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def norm_of(delta: jax.Array, norm: str) -> jax.Array:
    """Per-example l_p norm of a batch of perturbations, shape (batch,)."""
    check_norm(norm)
    flat = _flat(delta)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=1))
    return jnp.sum(jnp.abs(flat), axis=1)


def linf_project(delta: jax.Array, eps: Scalar) -> jax.Array:
    """Projection onto the linf ball: elementwise clip to [-eps, eps]."""
    return jnp.clip(delta, -eps, eps).astype(delta.dtype)


def l2_project(delta: jax.Array, eps: Scalar) -> jax.Array:
    """Projection onto the l2 ball: delta * min(1, eps / ||delta||_2)."""
    n = norm_of(delta, "l2")
    factor = jnp.minimum(1.0, eps / (n + _TINY))
    return delta * _per_example(factor, delta).astype(delta.dtype)


def _simplex_threshold(v: jax.Array, z) -> jax.Array:
    """Threshold theta of the projection of |v| >= 0 (one example, flat) onto {w >= 0, sum w = z}.

    Duchi, Shalev-Shwartz, Singer, Chandra (ICML 2008), Fig. 1: sort u descending, find the largest
    rho with u_rho - (sum_{r<=rho} u_r - z) / rho > 0, and theta = (sum_{r<=rho} u_r - z) / rho.
    """
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u)
    ks = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    cond = u - (css - z) / ks > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(v.shape[0]), 0))
    return (css[rho] - z) / (rho + 1).astype(v.dtype)


def l1_project(delta: jax.Array, eps: Scalar) -> jax.Array:
    """Exact Euclidean projection onto the l1 ball of radius eps (sort-based, O(d log d) per example).

    Inside the ball delta is returned unchanged; outside, |delta| is projected onto the simplex of
    radius eps (Duchi et al. 2008) and the signs restored: sign(delta) * max(|delta| - theta, 0).
    """
    flat = _flat(delta)
    a = jnp.abs(flat)
    eps_b = jnp.broadcast_to(jnp.asarray(eps, dtype=flat.dtype), (flat.shape[0],))
    theta = jax.vmap(_simplex_threshold)(a, eps_b)
    inside = jnp.sum(a, axis=1) <= eps_b
    theta = jnp.where(inside, 0.0, theta)
    out = jnp.sign(flat) * jnp.maximum(a - theta[:, None], 0.0)
    return out.reshape(delta.shape).astype(delta.dtype)


def project(delta: jax.Array, eps: Scalar, norm: str) -> jax.Array:
    """Euclidean projection of each example's perturbation onto its l_p ball of radius eps."""
    check_norm(norm)
    if norm == "linf":
        return linf_project(delta, eps)
    if norm == "l2":
        return l2_project(delta, eps)
    return l1_project(delta, eps)


def l1_topk_direction(grad: jax.Array, k: int = 1) -> jax.Array:
    """Steepest l1 ascent: sign(g_i) / k on the k coordinates of largest |g_i|, zero elsewhere.

    For k = 1 this is the exact maximizer of <g, v> over the unit l1 ball (one pixel changes, Fig. 1
    of the robust-optimization paper); k > 1 spreads the step over the k largest coordinates ("or a
    small number of the entries", Sec. 4.1), still with unit l1 norm.
    """
    flat = _flat(grad)
    k = int(k)
    if not 1 <= k <= flat.shape[1]:
        raise ValueError(f"l1_k must be in [1, {flat.shape[1]}], got {k}")
    _, idx = jax.lax.top_k(jnp.abs(flat), k)
    picked = jnp.take_along_axis(flat, idx, axis=1)
    rows = jnp.arange(flat.shape[0])[:, None]
    out = jnp.zeros_like(flat).at[rows, idx].set(jnp.sign(picked) / k)
    return out.reshape(grad.shape)


def steepest_ascent(grad: jax.Array, norm: str, l1_k: int = 1) -> jax.Array:
    """The normalized steepest-ascent direction v = argmax_{||v||_p <= 1} <grad, v>.

    linf: sign(g).  l2: g / ||g||_2.  l1: the top-k coordinate step (`l1_topk_direction`).
    """
    check_norm(norm)
    if norm == "linf":
        return jnp.sign(grad)
    if norm == "l2":
        n = norm_of(grad, "l2")
        return grad / _per_example(n + _TINY, grad).astype(grad.dtype)
    return l1_topk_direction(grad, l1_k)


def random_init(key: jax.Array, x: jax.Array, eps: Scalar, norm: str) -> jax.Array:
    """A perturbation drawn uniformly from each example's l_p ball of radius eps.

    linf: U(-eps, eps) per coordinate.  l2: Gaussian direction times eps * u^(1/d).  l1: signs times
    the first d of d+1 normalized exponentials (uniform on the l1 ball: the Dirichlet(1, ..., 1) trick).
    Not clipped to the box: callers clip x + delta.
    """
    check_norm(norm)
    d = int(x[0].size)
    dtype = x.dtype
    if norm == "linf":
        return (jax.random.uniform(key, x.shape, dtype, -1.0, 1.0) * eps).astype(dtype)
    if norm == "l2":
        k1, k2 = jax.random.split(key)
        g = jax.random.normal(k1, x.shape, dtype)
        g = g / _per_example(norm_of(g, "l2") + _TINY, x)
        u = jax.random.uniform(k2, (x.shape[0],), dtype)
        r = eps * u ** (1.0 / d)
        return (g * _per_example(r, x)).astype(dtype)
    k1, k2 = jax.random.split(key)
    e = jax.random.exponential(k1, (x.shape[0], d + 1), dtype)
    mags = e[:, :d] / jnp.sum(e, axis=1, keepdims=True)
    signs = jax.random.rademacher(k2, (x.shape[0], d), dtype)
    return (signs * mags * eps).reshape(x.shape).astype(dtype)


def check_bounds(bounds: Any) -> Bounds:
    """Returns `bounds` as a pair of Python floats (lo, hi), or raises a ValueError naming `bounds`.

    The box is static (it fixes no shape, but attacks compare against it on the host): lo and hi must
    be concrete finite numbers with lo < hi, not traced arrays.
    """
    if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi) of numbers, got {bounds!r}")
    out = []
    for v in bounds:
        if isinstance(v, jax.core.Tracer):
            raise ValueError("bounds must be concrete numbers (static), got a traced value; pass "
                             "Python floats")
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.ndarray, np.generic,
                                                     jax.Array)):
            raise ValueError(f"bounds must be a pair (lo, hi) of numbers, got {bounds!r}")
        if np.ndim(v) != 0:
            raise ValueError(f"bounds must hold two scalars, got {bounds!r}")
        out.append(float(v))
    lo, hi = out
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"bounds must be finite, got {bounds!r}")
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds!r}")
    return lo, hi


def clip_to_box(x: jax.Array, lo: float = 0.0, hi: float = 1.0) -> jax.Array:
    """The valid-input box [lo, hi] (default [0, 1], images scaled to [0, 1])."""
    return jnp.clip(x, lo, hi)


def project_to_threat(x_adv: jax.Array, x: jax.Array, eps: Scalar, norm: str,
                      bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Maps x_adv into B_p(x, eps) intersected with the box `bounds` = (lo, hi): project x_adv - x,
    then clip to the box."""
    lo, hi = bounds
    return clip_to_box(x + project(x_adv - x, eps, norm), lo, hi).astype(x.dtype)
