"""Distributionally adversarial attack (DAA): DAA-BLOB, DAA-DGF and the paper's Algorithm 1.

Zheng, Chen, Ren, "Distributionally Adversarial Attack" (AAAI 2019; the seed paper
daa-distributionally-adversarial-attack.txt). DAA treats the M examples of a minibatch as particles
approximating an adversarial distribution mu and moves them along a Wasserstein gradient flow that
increases the energy E(mu) = int L dmu + c KL(mu || p) (Eq. 11), with p(x) ~ exp(-L(x)). Each step
is a PGD step (sign of a direction, projection onto the linf eps-ball, then the [0, 1] box) whose
direction adds a particle-interaction term to the per-example loss gradient:

  DAA-BLOB (Lagrangian blob method, Eq. 20):
      x_i <- Pi_clip{ x_i + step * sign( grad L(x_i)
                     + (c / M) sum_j [ K(x_i, x_j) grad L(x_j) -/+ grad_{x_j} K(x_i, x_j) ] ) }
      K(x, x') = exp(-||x - x'||_2^2 / h),  h = med^2 / log M  (Sec. 4.1),
      med = the median pairwise distance among the particles.
  DAA-DGF (discrete gradient flow, Eqs. 18, 19, 21):
      x_i <- Pi_clip{ x_i + step * sign( grad L(x_i)
                     - coef * sum_j (d_ij / lam - 1) exp(-d_ij / lam) (x_i - x_j) ) },
      d_ij = ||x_i - x_j||_2^2, coef = 2 gamma c / (1 + c) (the single number of Table 2).

Pi_clip = clip to the box `bounds` (default [0, 1]) after clip to [x - eps, x + eps] (Algorithm 1),
the same projection as
`pgd` (`gradient._iterate` runs the steps; only the direction inside sign(.) differs). With c = 0
(coef = 0), or M = 1, both updates are PGD's (Sec. 3.3, "Connection with PGD"): the M = 1 blob term
is c K(x, x) grad L(x) + c grad K(x, x) = c grad L(x), and sign((1 + c) g) = sign(g).

These are BATCH-LEVEL attacks: the particles interact, so each example's perturbation depends on the
whole batch (the evaluation batch is the particle set). They are not per-example and `jax.vmap` over
single examples is meaningless (M = 1 particles give PGD). `valid` (a boolean mask over the batch)
excludes padded rows from every interaction (kernel sums, median, M); padded rows are still updated,
their results are meaningless. The functions carry `batch_level = True` so that loops can tell.

Where the paper is ambiguous, this module follows the authors' released code
(github.com/tianzheng4/Distributionally-Adversarial-Attack, mnist_challenge-master/blob_rand.py and
dgf_rand.py), which produced the paper's tables:
  * Sign of the kernel-gradient term in DAA-BLOB. Eq. (20) prints "+ grad_{x_j} K" (SVGD's repulsive
    term), but Eqs. (13)-(16) carry a sign slip (grad log p = -grad L for p ~ exp(-L)), and
    ascending the energy (11) gives "+ K grad L(x_j) - grad_{x_j} K" (an attractive term: the c
    KL(mu || p) part rewards low entropy). The released code computes exactly that: sign(grad + c *
    (-(K @ (-grad) + dxkxy) / M)), dxkxy = sum_j grad_{x_j} K(x_i, x_j). Default `repulsive=False`
    is the code's (and the consistent derivation's) sign; `repulsive=True` is Eq. (20) as printed.
    Both reduce to PGD at c = 0 and M = 1.
  * DGF's lambda is not given in the paper; the code uses the median heuristic lam = med^2 / log(M +
    1) (note M + 1, unlike BLOB's log M), which is the default (`lam=None`); the coefficient 0.001
    of the code's FMNIST run sits in Table 2's range. Eq. (19) pairs x_i with the previous iterate
    x_{k-1}^j; Eq. (21) and the code use the current iterate, as here.
  * med: the paper's "median of the pairwise distance between particles" over the M (M - 1) / 2
    distinct pairs, squared. (The code takes the median of the M x M squared-distance matrix,
    diagonal zeros included: the 49.75th instead of the 50th percentile at M = 200.)
  * The CW loss ("CW_inf loss", Tables 1-3) is Madry et al.'s -relu(z_y - max_{j != y} z_j + 50),
    i.e. `losses.cw_margin` with kappa = 50 (same gradient): `kappa` defaults to 50 here (PGD's
    default is inf, so pass kappa=50 to `pgd` for a like-for-like CW comparison).
  * Random start: x + U(-eps, eps) clipped to the box (the code leaves the start unclipped until the
    first step's projection), drawn exactly as `pgd` draws it, so c = 0 reproduces `pgd` bit for
    bit.
  * Degenerate bandwidths: a median distance below 1e-6 (most particles coincide, below float32
    resolution) or M_valid <= 1 gives h = 1 (lam = 1) instead of 0 or 0/0. For coincident particles
    K = 1 and grad_{x_j} K = 0 whatever h is, so the fallback only keeps the arithmetic finite.

Evaluation. As an attack in `advjax.evaluate.robust_accuracy` (registered "daa_blob", "daa_dgf"),
each evaluation batch is one minibatch of M particles updated for all `steps`: Algorithm 1 with R =
1 and no shuffling across batches, so set the evaluation batch size to M (100-200 in the paper).
Note that `robust_accuracy` pads the last batch by repeating its first example; unless it passes
`valid`, those copies take part in the kernel sums of the last batch. The full multi-round Algorithm
1 is `daa_algorithm1`, a host loop over jitted minibatch updates that returns x_adv for the whole
set (score it directly: accuracy = mean(argmax logits_fn(x_adv) == y), batch by batch).

Cost: the interaction term is O(M^2 d) per step (two M x M x d matmuls for the pairwise distances
and the kernel-weighted sums, and an O(M^2) bisection for the median), against PGD's O(M * cost of a
forward and backward pass); see benchmarks/daa_overhead.py.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.attacks import gradient
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]
Loss = Union[str, losses_lib.LossFn]

# Squared median distances below this (a median distance below 1e-6, under float32 resolution for
# inputs in [0, 1]) are treated as "all particles coincide": the bandwidth falls back to 1.
_MIN_MED_SQ = 1e-12
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Pairwise geometry (batch-level, no Python loops)
# ----------------------------------------------------------------------------------------------

def _flat(x: jax.Array) -> jax.Array:
    """(M, d), in at least float32 (the pairwise geometry is too imprecise in 16-bit floats)."""
    return x.reshape(x.shape[0], -1).astype(jnp.promote_types(x.dtype, jnp.float32))


def _valid_mask(valid: Optional[jax.Array], m: int) -> jax.Array:
    if valid is None:
        return jnp.ones((m,), bool)
    valid = jnp.asarray(valid)
    if valid.shape != (m,):
        raise ValueError(f"valid must be a boolean mask of shape ({m},), got {valid.shape}")
    return valid.astype(bool)


def _centered(xf: jax.Array, valid: jax.Array) -> jax.Array:
    """xf minus the mean of the valid rows: differences are unchanged and the Gram-matrix distances
    lose less precision to cancellation (||a||^2 + ||b||^2 - 2 a.b with small ||a||, ||b||)."""
    w = valid.astype(xf.dtype)
    mean = jnp.sum(xf * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    return xf - mean


def pairwise_sq_dists(xf: jax.Array) -> jax.Array:
    """(M, M) squared Euclidean distances of the rows of xf, as ||a||^2 + ||b||^2 - 2 a.b.

    One M x M x d matmul at full float32 precision (no TF32); the squared norms are the Gram
    matrix's diagonal, so identical rows get distance exactly 0; float round-off negatives are
    clamped to 0 and the diagonal is set to 0.
    """
    gram = jnp.matmul(xf, xf.T, precision=_HIGHEST)
    sq = jnp.diagonal(gram)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    return jnp.where(jnp.eye(xf.shape[0], dtype=bool), 0.0, d2)


def _kth_smallest_bits(bits: jax.Array, k) -> jax.Array:
    """Bit pattern of the k-th smallest (0-based) of nonnegative float32 values given as int32 bits.

    For nonnegative floats the int32 bit patterns are ordered like the values, so bisection on
    [0, bits(+inf)] with a count per probe finds the exact order statistic in 31 passes over the
    data: O(31 n) instead of a full O(n log n) sort (~30x faster for M = 1000 particles on CPU).
    """
    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    init = (jnp.int32(0), jnp.int32(0x7F800000))
    return jax.lax.fori_loop(0, 31, body, init)[0]


def median_sq_distance(d2: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """med^2: the squared median of the distances ||x_i - x_j|| over distinct valid pairs i != j.

    Each unordered pair appears twice in the M x M matrix, which leaves the median unchanged. The
    two middle order statistics are found by bisection on the float bit patterns (exact, no sort) on
    the squared distances (same ranks); med is the mean of their square roots (an even number of
    pairs averages the two middle distances, as np.median does). Returns 0 with fewer than two valid
    particles.
    """
    m = d2.shape[0]
    valid = _valid_mask(valid, m)
    pair = valid[:, None] & valid[None, :] & ~jnp.eye(m, dtype=bool)
    vals = jnp.where(pair, jnp.abs(d2).astype(jnp.float32), jnp.inf)
    bits = jax.lax.bitcast_convert_type(vals, jnp.int32)
    n = jnp.sum(pair)
    k_lo = jnp.maximum((n - 1) // 2, 0)
    k_hi = n // 2
    lo_bits = _kth_smallest_bits(bits, k_lo)
    lo = jax.lax.bitcast_convert_type(lo_bits, jnp.float32)
    # The next order statistic: the same value if it is repeated, else the smallest larger value.
    repeated = jnp.sum(bits <= lo_bits) >= k_hi + 1
    hi = jnp.where(repeated, lo, jnp.min(jnp.where(bits > lo_bits, vals, jnp.inf)))
    med = 0.5 * (jnp.sqrt(lo) + jnp.sqrt(hi))
    return jnp.where(n > 0, med * med, 0.0).astype(d2.dtype)


def _num_valid(valid: jax.Array, dtype) -> jax.Array:
    return jnp.sum(valid).astype(dtype)


def median_bandwidth(d2: jax.Array, valid: Optional[jax.Array] = None, *,
                     log_offset: float = 0.0) -> jax.Array:
    """The median heuristic h = med^2 / log(M + log_offset) over the valid particles (Sec. 4.1).

    log_offset = 0 is the paper's (and the blob code's) h = med^2 / log M; DGF's lambda in the
    released code uses log(M + 1). Falls back to 1 when M <= 1 or the particles (nearly) coincide.
    """
    valid = _valid_mask(valid, d2.shape[0])
    med2 = median_sq_distance(d2, valid)
    m = _num_valid(valid, d2.dtype) + log_offset
    ok = (m > 1.0) & (med2 > _MIN_MED_SQ)
    return jnp.where(ok, med2 / jnp.log(jnp.where(ok, m, 2.0)), 1.0)


def rbf_kernel(d2: jax.Array, bandwidth: Scalar) -> jax.Array:
    """K_ij = exp(-||x_i - x_j||^2 / h)."""
    return jnp.exp(-d2 / bandwidth)


def blob_interaction(x: jax.Array, g: jax.Array, *, bandwidth: Optional[Scalar] = None,
                     valid: Optional[jax.Array] = None, repulsive: bool = False) -> jax.Array:
    """The bracket of Eq. (20), averaged: (1/M) sum_j [K(x_i, x_j) g_j -/+ grad_{x_j} K(x_i, x_j)].

    x, g: the particles and their per-example loss gradients (same shape, leading axis M).
    grad_{x_j} K(x_i, x_j) = (2 / h) K_ij (x_i - x_j), so the kernel-gradient sum is (2 / h) (x_i
    sum_j K_ij - sum_j K_ij x_j): both sums come from one matmul K @ [g, x]. `repulsive=False`
    subtracts it (released code; ascent on Eq. 11), True adds it (Eq. 20 as printed). bandwidth: h,
    or None for the median heuristic med^2 / log M. Padded rows (valid False) are left out of the
    sums, the median and M. Returns an array of x's shape.
    """
    m = x.shape[0]
    valid = _valid_mask(valid, m)
    xf = _centered(_flat(x), valid)
    gf = _flat(g).astype(xf.dtype)
    d2 = pairwise_sq_dists(xf)
    h = median_bandwidth(d2, valid) if bandwidth is None else jnp.asarray(bandwidth, xf.dtype)
    h = jax.lax.stop_gradient(h)
    k = rbf_kernel(d2, h) * valid[None, :].astype(xf.dtype)
    both = jnp.matmul(k, jnp.concatenate([gf, xf], axis=1), precision=_HIGHEST)
    kg, kx = both[:, :gf.shape[1]], both[:, gf.shape[1]:]
    grad_k = (2.0 / h) * (xf * jnp.sum(k, axis=1, keepdims=True) - kx)
    sign = 1.0 if repulsive else -1.0
    out = (kg + sign * grad_k) / jnp.maximum(_num_valid(valid, xf.dtype), 1.0)
    return out.reshape(x.shape).astype(x.dtype)


def dgf_interaction(x: jax.Array, *, lam: Optional[Scalar] = None,
                    valid: Optional[jax.Array] = None) -> jax.Array:
    """The sum of Eq. (21): sum_j (d_ij/lam - 1) exp(-d_ij/lam) (x_i - x_j), d_ij = ||x_i - x_j||^2.

    Computed as x_i sum_j W_ij - (W @ x)_i. lam: lambda, or None for the released code's median
    heuristic med^2 / log(M + 1). Padded rows (valid False) are left out. Returns an array of x's
    shape.
    """
    m = x.shape[0]
    valid = _valid_mask(valid, m)
    xf = _centered(_flat(x), valid)
    d2 = pairwise_sq_dists(xf)
    if lam is None:
        lam = median_bandwidth(d2, valid, log_offset=1.0)
    lam = jax.lax.stop_gradient(jnp.asarray(lam, xf.dtype))
    # Beyond r = 100 the weight (r - 1) e^-r is < 1e-41 (0 in float32); the cap keeps d/lam finite.
    r = jnp.minimum(d2 / lam, 100.0)
    w = (r - 1.0) * jnp.exp(-r) * valid[None, :].astype(xf.dtype)
    out = xf * jnp.sum(w, axis=1, keepdims=True) - jnp.matmul(w, xf, precision=_HIGHEST)
    return out.reshape(x.shape).astype(x.dtype)


def blob_direction(x: jax.Array, g: jax.Array, *, c: Scalar, bandwidth: Optional[Scalar] = None,
                   valid: Optional[jax.Array] = None, repulsive: bool = False) -> jax.Array:
    """The vector inside sign(.) of Eq. (20): g + c * `blob_interaction`."""
    return g + (c * blob_interaction(x, g, bandwidth=bandwidth, valid=valid,
                                     repulsive=repulsive)).astype(g.dtype)


def dgf_direction(x: jax.Array, g: jax.Array, *, coef: Scalar, lam: Optional[Scalar] = None,
                  valid: Optional[jax.Array] = None) -> jax.Array:
    """The vector inside sign(.) of Eq. (21): g - coef * `dgf_interaction`."""
    return g - (coef * dgf_interaction(x, lam=lam, valid=valid)).astype(g.dtype)


# ----------------------------------------------------------------------------------------------
# The attacks
# ----------------------------------------------------------------------------------------------

def _check_loss(loss):
    if not (callable(loss) or loss in ("ce", "cw")):
        raise ValueError(
            f'DAA loss must be "ce", "cw" or a callable (logits, y) -> loss, got {loss!r}')


def _check_positive(value, name):
    if value is not None and v.is_concrete(value):
        arr = np.asarray(value)
        if arr.ndim != 0 or not np.isfinite(arr) or arr <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _direction_fn(method: str, *, c, coef, lam, bandwidth, repulsive, valid):
    if method == "blob":
        if c is None:
            raise ValueError("DAA-BLOB needs c (Table 2: 1-2 for CE, 10-20 for CW on [0,1] images)")
        v.check_nonnegative(c, "c")
        _check_positive(bandwidth, "bandwidth")
        return lambda xa, g: blob_direction(xa, g, c=c, bandwidth=bandwidth, valid=valid,
                                            repulsive=repulsive)
    if method == "dgf":
        if coef is None:
            raise ValueError("DAA-DGF needs coef = 2 gamma c / (1 + c) (Table 2: 0.001-0.01 CE, "
                             "0.01-0.1 CW)")
        v.check_nonnegative(coef, "coef")
        _check_positive(lam, "lam")
        return lambda xa, g: dgf_direction(xa, g, coef=coef, lam=lam, valid=valid)
    raise ValueError(f'method must be "blob" or "dgf", got {method!r}')


def _run_particles(value_and_grad, direction, x, start, *, eps, step_size, steps: int,
                   bounds=DEFAULT_BOUNDS):
    """`steps` DAA steps from `start`: PGD's step and projection (gradient._iterate) with the
    per-example gradient replaced by the interacting direction."""

    def vag(xa):
        obj, logits, g = value_and_grad(xa)
        return obj, logits, direction(xa, g)

    return gradient._iterate(vag, x, start, eps=eps, step_size=step_size, steps=steps, norm="linf",
                             l1_k=1, decay=None, bounds=bounds)


def _random_start(key, x, eps, random_start: bool, bounds=DEFAULT_BOUNDS):
    if random_start:
        return threat.clip_to_box(x + threat.random_init(key, x, eps, "linf"), *bounds)
    return x


def _daa(logits_fn, x, y, *, key, eps, step_size, steps, loss, kappa, random_start, restarts,
         valid, method, c=None, coef=None, lam=None, bandwidth=None, repulsive=False,
         bounds=DEFAULT_BOUNDS):
    bounds = threat.check_bounds(bounds)
    gradient._check_common(logits_fn, x, y, eps, "linf", bounds)
    v.check_nonnegative(step_size, "step_size")
    steps = v.check_positive_int(steps, "steps")
    restarts = v.check_positive_int(restarts, "restarts")
    v.check_key(key, random_start or restarts > 1, "random_start=True or restarts > 1")
    _check_loss(loss)
    valid = None if valid is None else _valid_mask(valid, x.shape[0])
    direction = _direction_fn(method, c=c, coef=coef, lam=lam, bandwidth=bandwidth,
                              repulsive=repulsive, valid=valid)
    loss_fn = gradient._resolve_loss(logits_fn, x, loss, kappa)
    per_example, value_and_grad = gradient._objective(logits_fn, loss_fn, y, False)

    def one_run(k):
        start = _random_start(k, x, eps, random_start, bounds)
        return _run_particles(value_and_grad, direction, x, start, eps=eps, step_size=step_size,
                              steps=steps, bounds=bounds)

    # Same key use as gradient._iterative_attack, so that c = 0 reproduces pgd exactly.
    if restarts == 1:
        return one_run(key)
    keys = jax.random.split(key, restarts)
    first = one_run(keys[0])
    best = (first,) + gradient._score(per_example, first, y, False)

    def body(i, best):
        x_adv = one_run(keys[i])
        return gradient._keep_better(best, (x_adv,) + gradient._score(per_example, x_adv, y, False))

    return jax.lax.fori_loop(1, restarts, body, best)[0]


def daa_blob(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
             eps: Scalar, step_size: Scalar, steps: int, c: Scalar, loss: Loss = "ce",
             kappa: float = 50.0, random_start: bool = True, restarts: int = 1,
             bandwidth: Optional[Scalar] = None, repulsive: bool = False,
             valid: Optional[jax.Array] = None, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """DAA-BLOB (Zheng et al., AAAI 2019, Eq. 20), linf, untargeted. BATCH-LEVEL: the batch is the
    particle set; each example's result depends on the others (do not vmap over examples).

    x_i <- Pi_clip{ x_i + step_size * sign( grad L(x_i)
                    + (c/M) sum_j [ K(x_i, x_j) grad L(x_j) -/+ grad_{x_j} K(x_i, x_j) ] ) },
    K(x, x') = exp(-||x - x'||^2 / h), h = med^2 / log M recomputed every step (or `bandwidth`).
    Pi_clip: clip to the eps-ball around x, then to the box `bounds` (default [0, 1]; as `pgd`).
    `repulsive` picks the sign of the kernel-gradient term (default: the released code's minus;
    True: Eq. 20 as printed; see the module docstring). c = 0 or M = 1 gives `pgd` exactly (same key, same random start).

    Args:
      c: the KL weight of Eq. (11) (Table 2: 1-2 with CE, 10-20 with CW on [0, 1] inputs).
      loss: "ce", "cw" (Madry's CW_inf: `losses.cw_margin` capped at `kappa`, default 50) or a
        callable.
      random_start: start at x + U(-eps, eps) (clipped to [0, 1]); restarts keep each example's
        strongest run (misclassified first, then higher loss; `gradient._keep_better`).
      valid: optional (M,) boolean mask; False rows (padding) take no part in the interactions.
    eps, step_size, c and bandwidth may be traced scalars; steps, restarts, loss, random_start and
    repulsive are static.
    """
    return _daa(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, loss=loss,
                kappa=kappa, random_start=random_start, restarts=restarts, valid=valid,
                method="blob", c=c, bandwidth=bandwidth, repulsive=repulsive, bounds=bounds)


def daa_dgf(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
            eps: Scalar, step_size: Scalar, steps: int, coef: Scalar, lam: Optional[Scalar] = None,
            loss: Loss = "ce", kappa: float = 50.0, random_start: bool = True, restarts: int = 1,
            valid: Optional[jax.Array] = None, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """DAA-DGF (Zheng et al., AAAI 2019, Eq. 21; from Eqs. 18-19), linf, untargeted. BATCH-LEVEL:
    the batch is the particle set; each example's result depends on the others (do not vmap).

    x_i <- Pi_clip{ x_i + step_size * sign( grad L(x_i)
                    - coef * sum_j (d_ij/lam - 1) exp(-d_ij/lam) (x_i - x_j) ) },
    d_ij = ||x_i - x_j||^2,
    coef = 2 gamma c / (1 + c) (Table 2: 0.001-0.01 with CE, 0.01-0.1 with CW on [0, 1] inputs; the
    released FMNIST code uses 0.001), lam = lambda (default: the released code's median heuristic
    med^2 / log(M + 1), recomputed every step). No 1/M factor (Eq. 21). coef = 0 or M = 1 gives
    `pgd` exactly. Other arguments as `daa_blob`.
    """
    return _daa(logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, loss=loss,
                kappa=kappa, random_start=random_start, restarts=restarts, valid=valid,
                method="dgf", coef=coef, lam=lam, bounds=bounds)


daa_blob.batch_level = True
daa_dgf.batch_level = True


# ----------------------------------------------------------------------------------------------
# Algorithm 1: rounds of shuffled minibatches over a whole evaluation set
# ----------------------------------------------------------------------------------------------

def round_steps(steps: int, rounds: int) -> list:
    """Steps per round: L / R each, the remainder of L mod R given to the first rounds (sum = L)."""
    base, rem = divmod(steps, rounds)
    return [base + (1 if r < rem else 0) for r in range(rounds)]


def daa_algorithm1(logits_fn: LogitsFn, x_all: jax.Array, y_all: jax.Array, *, key: jax.Array,
                   method: str = "blob", rounds: int, batch_size: int, steps: int, eps: Scalar,
                   step_size: Scalar, c: Optional[Scalar] = None, coef: Optional[Scalar] = None,
                   lam: Optional[Scalar] = None, bandwidth: Optional[Scalar] = None,
                   repulsive: bool = False, loss: Loss = "ce", kappa: float = 50.0,
                   random_start: bool = True, restarts: int = 1, verbose: bool = False,
                   bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Algorithm 1 of Zheng et al. (AAAI 2019): DAA over a whole evaluation set; x_adv for all.

    For each restart: x_0 = x + U(-eps, eps) (or x); then for r = 0..R-1: permute the N samples
    (`jax.random.permutation(jax.random.fold_in(k, r), N)`), split them into ceil(N / M) minibatches
    of M = `batch_size` particles and update each minibatch for `round_steps(steps, rounds)[r]`
    steps (L / R; the paper's code: L = 100, R = 10) of Eq. (20) (method="blob", `c`) or Eq. (21)
    (method="dgf", `coef`, `lam`), carrying every particle's state across rounds. Each particle
    makes exactly `steps` steps. The last minibatch is padded to M with masked rows that take no
    part in the kernel sums, the median or M, and whose results are dropped. Restarts (keys split as
    in `pgd`; one restart uses `key` itself) keep each example's strongest result (misclassified
    first, then higher loss), as the released code does.

    Algorithm 1 loops steps outside minibatches within a round; minibatches are disjoint and
    interact only internally, so updating each minibatch for its L / R steps in turn (as the
    released code does) gives the same result. A host loop over minibatches; each minibatch update
    (gather, L / R DAA steps, scatter back) is one jitted program, compiled once (the step count is
    a traced loop bound). With R = 1 and N = M this is `daa_blob`/`daa_dgf` on the (permuted) set.
    Hyperparameters as `daa_blob` / `daa_dgf`.
    """
    bounds = threat.check_bounds(bounds)
    rounds = v.check_positive_int(rounds, "rounds")
    steps = v.check_positive_int(steps, "steps")
    batch_size = v.check_positive_int(batch_size, "batch_size")
    restarts = v.check_positive_int(restarts, "restarts")
    if rounds > steps:
        raise ValueError(f"rounds must be <= steps (each round makes >= 1 step), got "
                         f"rounds={rounds}, steps={steps}")
    v.check_key(key, True, "Algorithm 1 permutes the set every round")
    v.check_nonnegative(step_size, "step_size")
    _check_loss(loss)
    x_all = jnp.asarray(x_all)
    y_all = jnp.asarray(y_all).astype(jnp.int32)
    n = x_all.shape[0]
    m = batch_size
    gradient._check_common(logits_fn, x_all, y_all, eps, "linf", bounds)
    # Validate the interaction hyperparameters once, eagerly.
    _direction_fn(method, c=c, coef=coef, lam=lam, bandwidth=bandwidth, repulsive=repulsive,
                  valid=None)
    loss_fn = gradient._resolve_loss(logits_fn, x_all, loss, kappa)

    def update(x_cur, xs, ys, idx, valid, nsteps):
        xb, yb, start = xs[idx], ys[idx], x_cur[idx]
        _, value_and_grad = gradient._objective(logits_fn, loss_fn, yb, False)
        direction = _direction_fn(method, c=c, coef=coef, lam=lam, bandwidth=bandwidth,
                                  repulsive=repulsive, valid=valid)
        new = _run_particles(value_and_grad, direction, xb, start, eps=eps, step_size=step_size,
                             steps=nsteps, bounds=bounds)
        # Padded rows point past the end and are dropped.
        return x_cur.at[jnp.where(valid, idx, n)].set(new, mode="drop")

    # nsteps is traced (the step loop becomes a while loop): one compilation for all rounds.
    donate = (0,) if jax.default_backend() != "cpu" else ()
    update = jax.jit(update, donate_argnums=donate)

    def score(xa, ys):
        per_example, _ = gradient._objective(logits_fn, loss_fn, ys, False)
        return gradient._score(per_example, xa, ys, False)

    score = jax.jit(score)

    def score_all(xa):
        objs, succ = [], []
        for s in range(0, n, m):
            o, sc = score(xa[s:s + m], y_all[s:s + m])
            objs.append(o)
            succ.append(sc)
        return jnp.concatenate(objs), jnp.concatenate(succ)

    per_round = round_steps(steps, rounds)
    num_batches = -(-n // m)
    keys = [key] if restarts == 1 else list(jax.random.split(key, restarts))
    best = None
    for ri, k in enumerate(keys):
        if random_start:
            x_cur = jax.jit(_random_start, static_argnums=(3, 4))(k, x_all, eps, True, bounds)
        else:
            x_cur = jnp.array(x_all, copy=True)  # a fresh buffer: update() may donate it
        for r, nsteps in enumerate(per_round):
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(k, r), n))
            for j in range(num_batches):
                idx = perm[j * m:(j + 1) * m]
                nv = len(idx)
                valid = np.arange(m) < nv
                idx = np.concatenate([idx, np.zeros(m - nv, idx.dtype)]).astype(np.int32)
                x_cur = update(x_cur, x_all, y_all, jnp.asarray(idx), jnp.asarray(valid),
                               jnp.int32(nsteps))
            if verbose:
                print(f"  DAA restart {ri + 1}/{len(keys)} round {r + 1}/{rounds} done", flush=True)
        if len(keys) == 1:
            return x_cur
        cand = (x_cur,) + score_all(x_cur)
        best = cand if best is None else gradient._keep_better(best, cand)
    return best[0]


daa_algorithm1.batch_level = True
daa_algorithm1.set_level = True  # `evaluate.robust_accuracy` calls it once on the whole set
