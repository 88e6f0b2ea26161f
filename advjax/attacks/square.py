"""Square Attack: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (Algorithm 1; linf: Algorithm 2; l2: Algorithm 3).

A score-based random search. It only *calls* `logits_fn` (no gradient is ever taken: tested with a
`logits_fn` whose derivative raises). Per example, with the margin loss

    L(x) = z_y(x) - max_{j != y} z_j(x)          (<= 0: misclassified; "margin", the default)

or the negative cross-entropy ("ce"), it keeps the best point x_best and, at iteration i, proposes
x_new = x_best changed on one random square window of side s_i (all channels), evaluates L(x_new)
(one query) and keeps x_new if L decreased or x_new is misclassified; an example stops (and stops
spending queries) once it is misclassified. The side comes from the published schedule of p, the
fraction of pixels changed:

    p_i = p_init / 2^k,   k = #{t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000) : it > t},
    it = i (rescale_schedule=False, AutoAttack's setting) or floor(10000 i / n_queries) (True, the
    Square paper's code, whose schedule is given for 10,000 queries),

    linf: s_i = min(max(round(sqrt(p_i h w)), 1), min(h, w)),
    l2:   s_i = the same with a minimum of 3, made odd, capped at min(h, w).

linf (Alg. 2): initialization with vertical stripes, x + eps * (one random sign per column and
channel); the proposal sets the window to x + eps * (one random sign per channel), clipped to the box.
l2 (Alg. 3): initialization by a grid of (h // 5)-sized windows, each holding the "pseudo-Gaussian"
pattern of the paper (two halves of opposite sign, each the sum over k of 1/(k+1)^2 on the centred
squares of half-side k, `pseudo_gaussian_square`) with a random sign per channel, rescaled to norm
eps; a proposal moves the perturbation mass of a second window (set to 0) into the first, adding a
new pattern to it, and rescales the whole perturbation to norm eps.

Variants (`variant`):
  * "paper" (default): every example draws its own window position, colours and pattern
    orientation, as Algorithm 1 states per image, and a linf proposal that would not change the
    window is redrawn (as the Square authors' released code does: a window already at the drawn
    colours would waste a query; here up to 10 redraws, then the colours are negated, which always
    changes the window).
  * "autoattack": the AutoAttack release's PyTorch implementation (the `square` stage of AutoAttack,
    what `pyautoattack` runs): one window position -- and, for linf, one colour vector and, for l2,
    one pattern orientation -- per iteration, shared by the whole batch; no redraws; window positions
    in [0, h - s) as its `random_int`. `advjax.evaluate.autoattack` uses this variant, so that its
    numbers are those of the reference implementation.
Both count up to `n_queries` iterations after the initial query, as the AutoAttack code (the Square
code runs `n_queries - 1`).

Restarts (`restarts`): independent runs from new random initializations on the examples that are
still not misclassified; each example keeps its first success, else its lowest loss. `square_run`
also returns the per-example query count (model evaluations of perturbed points, initialization
included, summed over restarts; 0 for examples misclassified at x, which are returned unchanged) and
the best margin.

Inputs are NHWC images (x.ndim == 4); the square windows move over the two spatial axes.
One XLA program: iterations run in `lax.while_loop`, which also stops once every example of the batch
is misclassified. Deterministic given `key`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]

VARIANTS = ("paper", "autoattack")
LOSSES = ("margin", "ce")
# The iterations (in units of a 10,000-query budget) after which p halves (Square paper, Sec. 4).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
MAX_REDRAWS = 10


class SquareResult(NamedTuple):
    x_adv: jax.Array    # the best point per example (x itself where x is misclassified)
    queries: jax.Array  # (batch,) int32: model queries spent on the example, over all restarts
    margin: jax.Array   # (batch,) z_y - max_{j != y} z_j at x_adv (<= 0: misclassified)


# ------------------------------------------------------------------------------------------------
# The schedule and the l2 pattern
# ------------------------------------------------------------------------------------------------

def p_schedule(n_queries: int, p_init: float, rescale_schedule: bool) -> np.ndarray:
    """p_i for i = 0 .. n_queries - 1 (float64): p_init halved after each threshold in P_HALVINGS."""
    i = np.arange(n_queries, dtype=np.int64)
    it = (i * 10000) // n_queries if rescale_schedule else i
    halvings = np.sum(it[:, None] > np.asarray(P_HALVINGS)[None, :], axis=1)
    return p_init / 2.0 ** halvings


def window_sides(n_queries: int, p_init: float, rescale_schedule: bool, height: int, width: int,
                 norm: str) -> np.ndarray:
    """The square side s_i of each iteration (int32), computed once on the host, exactly.

    round() is round-half-to-even, as Python's and NumPy's in the reference code.
    """
    p = p_schedule(n_queries, p_init, rescale_schedule)
    s = np.round(np.sqrt(p * height * width)).astype(np.int64)
    if norm == "linf":
        s = np.maximum(s, 1)
    else:
        s = np.maximum(s, 3)
        s = s + (s % 2 == 0)
    return np.minimum(s, min(height, width)).astype(np.int32)


def _harmonic2(n: int) -> np.ndarray:
    """H[k] = sum_{j < k} 1/(j+1)^2 for k = 0 .. n."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)])


def pseudo_gaussian_square(s: Union[int, jax.Array], size: int,
                           xp: Any = jnp) -> Union[jax.Array, np.ndarray]:
    """The l2 Square Attack's s x s update pattern (Alg. 3) at the top-left of a (size, size) array.

    The top s // 2 rows hold M(s // 2, s) and the other rows -M(s - s // 2, s), where M(a, b) is the
    a x b "pseudo-Gaussian" rectangle: its value at (i, j) is sum_{k >= d}^{K-1} 1/(k+1)^2 with d the
    Chebyshev distance of (i, j) from the rectangle's centre (a // 2, b // 2) and K = max(a, b) // 2 + 1
    (the sum of 1/(k+1)^2 over the centred squares of half-side k that contain (i, j)). Each rectangle
    is scaled to unit l2 norm, then the whole pattern. Zero outside the s x s square. With xp = jnp,
    `s` may be traced (s <= size); xp = np computes a static pattern on the host.
    """
    harm = xp.asarray(_harmonic2(size + 1), xp.float32)
    r = xp.arange(size)[:, None]
    c = xp.arange(size)[None, :]

    def rectangle(row0, a):
        k = xp.maximum(a // 2, s // 2) + 1
        d = xp.maximum(xp.abs(r - row0 - a // 2), xp.abs(c - s // 2))
        inside = (r >= row0) & (r < row0 + a) & (c < s)
        vals = xp.where(inside, harm[k] - harm[xp.clip(d, 0, size + 1)], 0.0)
        n = xp.sqrt(xp.sum(vals * vals))
        return vals / xp.where(n > 0, n, 1.0)

    top = s // 2
    pattern = rectangle(0, top) - rectangle(top, s - top)
    n = xp.sqrt(xp.sum(pattern * pattern))
    return (pattern / xp.where(n > 0, n, 1.0)).astype(xp.float32)


# ------------------------------------------------------------------------------------------------
# Windows
# ------------------------------------------------------------------------------------------------

def _positions(key, s, height, width, rows, inclusive):
    """Top-left corners (rows,) of s x s windows: uniform on [0, h - s] (inclusive) or [0, h - s)."""
    kh, kw = jax.random.split(key)
    extra = 1 if inclusive else 0
    vh = jax.random.randint(kh, (rows,), 0, jnp.maximum(height - s + extra, 1))
    vw = jax.random.randint(kw, (rows,), 0, jnp.maximum(width - s + extra, 1))
    return vh, vw


def _window_mask(vh, vw, s, height, width):
    """(rows, h, w, 1) boolean mask of the windows [vh, vh + s) x [vw, vw + s)."""
    r = jnp.arange(height)[None, :, None]
    c = jnp.arange(width)[None, None, :]
    m = ((r >= vh[:, None, None]) & (r < vh[:, None, None] + s)
         & (c >= vw[:, None, None]) & (c < vw[:, None, None] + s))
    return m[..., None]


def _place(pattern, vh, vw, transpose, height, width):
    """(rows, h, w, 1): the (size, size) `pattern` (or its transpose) with its corner at (vh, vw)."""
    size = pattern.shape[0]
    r = jnp.arange(height)[None, :, None] - vh[:, None, None]
    c = jnp.arange(width)[None, None, :] - vw[:, None, None]
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    rr, cc = jnp.clip(r, 0, size - 1), jnp.clip(c, 0, size - 1)
    t = transpose[:, None, None]
    vals = jnp.where(t, pattern[cc, rr], pattern[rr, cc])
    return jnp.where(inside, vals, 0.0)[..., None]


def _l2_init_direction(key, b, rows, height, width, channels, dtype):
    """The l2 initialization (Alg. 3): a grid of (h // 5)-sized windows, each holding the pattern (or
    its transpose, at random) times a random sign per channel, scaled to unit l2 norm per example.

    The grid starts at (h - 5 s) // 2 in both directions and has h // s rows and w // s columns of
    windows (the reference code's layout; both use s = h // 5)."""
    s = max(height // 5, 1)
    start = (height - 5 * s) // 2
    nh, nw = height // s, width // s
    pattern = pseudo_gaussian_square(s, s, xp=np)
    k_flip, k_sign = jax.random.split(key)
    flip = jax.random.bernoulli(k_flip, 0.5, (rows, nh, nw))
    tiles = jnp.where(flip[..., None, None], jnp.asarray(pattern.T), jnp.asarray(pattern))
    tiles = tiles.transpose(0, 1, 3, 2, 4).reshape(rows, nh * s, nw * s, 1)
    signs = jax.random.rademacher(k_sign, (b, nh, 1, nw, 1, channels), dtype)
    signs = jnp.broadcast_to(signs, (b, nh, s, nw, s, channels)).reshape(b, nh * s, nw * s,
                                                                         channels)
    grid = tiles.astype(dtype) * signs
    delta = jnp.zeros((b, height, width, channels), dtype)
    delta = jax.lax.dynamic_update_slice(delta, grid[:, :height - start, :width - start],
                                         (0, start, start, 0))
    return delta / (_per_example_l2(delta) + 1e-12)


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------

def _margin_and_loss(logits, y, loss: str):
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    margin = z_y - z_other
    if loss == "margin":
        return margin, margin
    return margin, -losses_lib.cross_entropy(logits, y)


def _per_example_l2(a):
    return jnp.sqrt(jnp.sum(a * a, axis=tuple(range(1, a.ndim)), keepdims=True))


def _run(logits_fn, x, y, key, active0, *, eps, norm, n_queries, p_init, loss, rescale_schedule,
         variant, lo, hi):
    """One Square Attack run from a fresh initialization; rows with active0 = False do not move and
    spend no query. Returns (x_best, margin, queries)."""
    b, height, width, channels = x.shape
    dtype = x.dtype
    shared = variant == "autoattack"
    rows = 1 if shared else b
    sides = jnp.asarray(window_sides(n_queries, p_init, rescale_schedule, height, width, norm))
    side_max = min(height, width)
    k_init, k_loop = jax.random.split(key)
    bshape = (-1, 1, 1, 1)

    if norm == "linf":
        stripes = jax.random.rademacher(k_init, (b, 1, width, channels), dtype)
        x_best = jnp.clip(x + eps * stripes, lo, hi)
    else:
        x_best = jnp.clip(x + eps * _l2_init_direction(k_init, b, rows, height, width, channels,
                                                        dtype), lo, hi)

    margin_min, loss_min = _margin_and_loss(logits_fn(x_best), y, loss)
    margin_min = jnp.where(active0, margin_min, -jnp.inf)
    queries = active0.astype(jnp.int32)

    def linf_proposal(i, k, x_best, active):
        s = sides[i]
        k_pos, k_col, k_redraw = jax.random.split(k, 3)
        vh, vw = _positions(k_pos, s, height, width, rows, inclusive=not shared)
        mask = _window_mask(vh, vw, s, height, width)
        colours = jax.random.rademacher(k_col, (rows, 1, 1, channels), dtype)

        def propose(col):
            return jnp.where(mask, jnp.clip(x + eps * col, lo, hi), x_best)

        if shared:
            return propose(colours)

        def unchanged(col):
            diff = jnp.abs(propose(col) - x_best)
            return jnp.all(diff < 1e-7, axis=(1, 2, 3)) & active

        def redraw_cond(c):
            return (c[1] < MAX_REDRAWS) & jnp.any(unchanged(c[0]))

        def redraw(c):
            col, t = c
            new = jax.random.rademacher(jax.random.fold_in(k_redraw, t), col.shape, dtype)
            return jnp.where(unchanged(col).reshape(bshape), new, col), t + 1

        colours, _ = jax.lax.while_loop(redraw_cond, redraw, (colours, 0))
        colours = jnp.where(unchanged(colours).reshape(bshape), -colours, colours)
        return propose(colours)

    def l2_proposal(i, k, x_best, active):
        del active
        s = sides[i]
        k_pos, k_pos2, k_flip, k_sign = jax.random.split(k, 4)
        vh, vw = _positions(k_pos, s, height, width, rows, inclusive=not shared)
        vh2, vw2 = _positions(k_pos2, s, height, width, rows, inclusive=not shared)
        m1 = _window_mask(vh, vw, s, height, width)
        m2 = _window_mask(vh2, vw2, s, height, width)
        delta = x_best - x
        per_channel = lambda a: jnp.sqrt(jnp.sum(a * a, axis=(1, 2), keepdims=True))
        norm_w1 = per_channel(jnp.where(m1, delta, 0.0))
        norm_image = _per_example_l2(delta)
        norm_windows = per_channel(jnp.where(m1 | m2, delta, 0.0))
        flip = jax.random.bernoulli(k_flip, 0.5, (rows,))
        bump = _place(pseudo_gaussian_square(s, side_max), vh, vw, flip, height, width)
        signs = jax.random.rademacher(k_sign, (b, 1, 1, channels), dtype)
        new = bump.astype(dtype) * signs + jnp.where(m1, delta, 0.0) / (1e-12 + norm_w1)
        budget = jnp.sqrt(jnp.maximum(eps ** 2 - norm_image ** 2, 0.0) / channels + norm_windows ** 2)
        new = new / (1e-12 + per_channel(new)) * budget
        delta = jnp.where(m1, new, jnp.where(m2, 0.0, delta))
        return jnp.clip(x + delta / (_per_example_l2(delta) + 1e-12) * eps, lo, hi)

    proposal = linf_proposal if norm == "linf" else l2_proposal

    def cond(state):
        i, x_best, margin_min, loss_min, queries = state
        return (i < n_queries) & jnp.any(margin_min > 0)

    def body(state):
        i, x_best, margin_min, loss_min, queries = state
        active = margin_min > 0
        x_new = proposal(i, jax.random.fold_in(k_loop, i), x_best, active).astype(dtype)
        margin, loss_new = _margin_and_loss(logits_fn(x_new), y, loss)
        loss_better = active & (loss_new < loss_min)
        accept = loss_better | (active & (margin <= 0))
        loss_min = jnp.where(loss_better, loss_new, loss_min)
        margin_min = jnp.where(accept, margin, margin_min)
        x_best = jnp.where(accept.reshape(bshape), x_new, x_best)
        return i + 1, x_best, margin_min, loss_min, queries + active.astype(jnp.int32)

    state = (jnp.int32(0), x_best.astype(dtype), margin_min, loss_min, queries)
    _, x_best, margin_min, _, queries = jax.lax.while_loop(cond, body, state)
    return x_best, margin_min, queries


# ------------------------------------------------------------------------------------------------
# The attack
# ------------------------------------------------------------------------------------------------

def _check(logits_fn, x, y, key, eps, norm, n_queries, p_init, restarts, loss, variant, bounds):
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2' for the Square Attack, got {norm!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(n_queries, "n_queries")
    v.check_positive_int(restarts, "restarts")
    if not isinstance(p_init, (int, float)) or isinstance(p_init, bool) or not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a number in (0, 1] (static), got {p_init!r}")
    v.check_key(key, True, "the Square Attack is a random search")
    lo, hi = threat.check_bounds(bounds)
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must be a batch of NHWC images (4-D) for the Square Attack's windows, "
                         f"got shape {jnp.shape(x)}")
    v.check_batch(logits_fn, x, y, bounds=(lo, hi))
    return lo, hi


def square_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
               norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
               loss: str = "margin", rescale_schedule: bool = True, variant: str = "paper",
               bounds: Bounds = DEFAULT_BOUNDS) -> SquareResult:
    """The Square Attack with its per-example query count and margin (see the module docstring).

    Args:
      logits_fn: NHWC batch in the box -> logits; only called, never differentiated.
      eps: radius of the linf or l2 ball.
      n_queries: iterations per restart (AutoAttack's standard version: 5000).
      p_init: initial fraction of pixels in a window (0.8 in AutoAttack for linf and l2).
      rescale_schedule: spread the schedule's halvings over n_queries (the Square code, default)
        rather than at the fixed iteration counts (AutoAttack's setting, False).
      variant: "paper" (per-example windows) or "autoattack" (the reference implementation's
        batch-shared windows).
      bounds: the valid-input box (lo, hi).
    """
    lo, hi = _check(logits_fn, x, y, key, eps, norm, n_queries, p_init, restarts, loss, variant,
                    bounds)
    run = lambda k, active: _run(logits_fn, x, y, k, active, eps=eps, norm=norm,
                                 n_queries=n_queries, p_init=p_init, loss=loss,
                                 rescale_schedule=rescale_schedule, variant=variant, lo=lo, hi=hi)
    margin0, _ = _margin_and_loss(logits_fn(x), y, "margin")
    correct = margin0 > 0
    keys = jax.random.split(key, restarts)
    x_best, margin, queries = run(keys[0], correct)
    bshape = (-1,) + (1,) * (x.ndim - 1)

    def restart(r, best):
        bx, bm, bq = best
        todo = correct & (bm > 0)
        nx, nm, nq = run(keys[r], todo)
        take = todo & (nm < bm)
        return jnp.where(take.reshape(bshape), nx, bx), jnp.where(take, nm, bm), bq + nq

    if restarts > 1:
        x_best, margin, queries = jax.lax.fori_loop(1, restarts, restart, (x_best, margin, queries))
    x_adv = jnp.where(correct.reshape(bshape), x_best, x).astype(x.dtype)
    margin = jnp.where(correct, margin, margin0)
    return SquareResult(x_adv=x_adv, queries=queries, margin=margin)


def square(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
           norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
           loss: str = "margin", rescale_schedule: bool = True, variant: str = "paper",
           bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """The Square Attack (Andriushchenko et al., ECCV 2020): x_adv of `square_run`."""
    return square_run(logits_fn, x, y, key=key, eps=eps, norm=norm, n_queries=n_queries,
                      p_init=p_init, restarts=restarts, loss=loss,
                      rescale_schedule=rescale_schedule, variant=variant, bounds=bounds).x_adv
