"""Auto-PGD (APGD-CE, APGD-DLR, APGD-T) of AutoAttack: Croce & Hein, ICML 2020, Algorithm 1.

Per example, with eta^(0) = 2 eps and momentum alpha = 0.75:

    z^(k+1) = P_S( x^(k) + eta^(k) v*(grad f(x^(k))) )
    x^(k+1) = P_S( x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha) (x^(k) - x^(k-1)) )   (alpha = 1 at k = 0)

where S is the eps-ball intersected with the box `bounds` (default [0, 1]) and v* the steepest-ascent
direction (sign for linf, g/||g||_2 for l2). The best point x_max (highest f) is tracked. At the checkpoints
w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), the step
size halves and the iterate restarts from x_max if
  Condition 1: the loss increased in at most rho = 0.75 of the steps since the last checkpoint, or
  Condition 2: the step size was not reduced at the last checkpoint and f_max has not improved since.
The checkpoints are computed from this formula, in exact integer arithmetic (p_j in hundredths; in
floating point 0.22 + 0.19 = 0.41000000000000003, and ceil(0.41... * 100) would give 42, not 41). A
checkpoint is evaluated as soon as x^(w_j) is available, i.e. right after the w_j-th step, as in the
reference code: Conditions 1 and 2 only involve iterates up to x^(w_j), and the halved step size
applies from the next step on. (Algorithm 1 of the paper tests "k in W" one step later, after
computing x^(w_j + 1), which it then overwrites with x_max when the step size is halved; the
reference code, and this implementation, skip that step.) Condition 1 counts increases with
"<= rho (w_j - w_{j-1})" as the reference code does (the paper writes "<"; they differ only when
rho times the window is an integer). The reference code keeps the schedule as window lengths
int(0.22 N), shrinking by int(0.03 N) down to int(0.06 N): for N a multiple of 100 that is the paper's
schedule -- for N = 100, w = 22, 41, 57, 70, 80, 87, 93, 99 -- but not for other N (for N = 50 the paper
gives w = 11, 21, 29, 35, 40, 44, 47, 50, while fixed-size window decrements drift away from it), so
the paper's formula is what is implemented here.

Random start: x + eps t / ||t||_p with t ~ U(-1, 1)^d (linf) or N(0, I) (l2), as in the reference code.
Returned point, per example: the first misclassified iterate if one was found (what AutoAttack
reports), otherwise x_max. The other departure from the reference code: its first oscillation window
compares the first loss against an uninitialized 0; here it is compared with f(x^(0)), which is what
Condition 1 of the paper says.

APGD-T (`apgd_t`) runs APGD with the targeted DLR loss (Eq. 7) towards each of the `num_target_classes`
classes with the highest clean logits after the true one, keeping the first success. Success always
means misclassification (AutoAttack's convention). This is the published target choice: the reference
code (fra31/auto-attack, `APGDAttack_targeted.perturb`) targets, for k = 2, ..., n_target_classes + 1,
the k-th most likely class under the clean logits, with n_target_classes = 9 in the standard
AutoAttack, and attacks only correctly classified points, for which the k-th most likely class is the
(k-1)-th most likely class other than y, what `targets.ranked_targets` returns (for a misclassified
point it never includes y, unlike the k-th overall). With explicit `targets` (one class per example,
e.g. from `advjax.attacks.targets`), `apgd_t` is a targeted attack: one targeted-DLR run per restart
towards that class, success meaning the target is predicted. Across restarts and targets each
example keeps its first success (else its highest loss), so, as in the reference code, a run only
attacks the examples no earlier run has fooled; on CPU those are gathered into chunks (`_runs`), with
the same result as whole-batch runs. l1 is not supported (APGD-l1 is a different algorithm, Croce &
Hein 2021).

Randomized models: Expectation over Transformation (EoT; Athalye et al., ICML 2018), AutoAttack's
version "rand" (Croce & Hein 2020, Sec. 5: APGD-CE and APGD-DLR with 20 EoT iterations). With
`randomized=True`, `logits_fn` is called as logits_fn(x, key), each call one draw of the model's
randomness, and every iteration j replaces the gradient of Algorithm 1 by its EoT estimate

    g^(j) = 1/E sum_{d < E} grad_x L(f(x^(j); key_{j,d}), y),   key_{j,d} = fold_in(fold_in(k_run, j), d)

with E = `eot_iter` (k_run: the run's model key, independent of its start key); the reference code
(`APGDAttack.attack_single_run`) sums E backward passes and divides by E the same way. The loss
that Algorithm 1's bookkeeping uses (best point, increase count, Conditions 1 and 2) is the mean of
the E per-draw losses at x^(j); the reference code uses the last draw's loss there, a noisier
estimate of the same expectation (a documented departure). Success (the first-success point) is
judged, as in the reference code, by the last draw's prediction. The draws run one after another
(a `fori_loop`: memory of one forward/backward pass, like the reference). A randomized model is
attacked on the whole batch (no active-set chunks): its noise is drawn per call, for the batch it
is given, so a chunk would see other draws than the whole batch; the results would be valid but
not the whole-batch run's.

`eps` may be traced; `steps`, `restarts`, `norm`, `loss`, `num_target_classes`, `bounds`,
`eot_iter` and `randomized` are static.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.attacks import targets as targets_lib
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]
# A randomized model: logits_fn(x, key), one draw of its randomness per key.
RandomizedLogitsFn = Callable[[jax.Array, jax.Array], jax.Array]

RHO = 0.75
MOMENTUM = 0.75


def checkpoints(steps: int) -> list:
    """The paper's checkpoints w_0 = 0 < w_1 < ... <= N (Croce & Hein 2020, Sec. 3.2).

    w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    computed with p_j in integer hundredths so that no rounding error moves a ceiling. For small N some
    ceil(p_j N) coincide; the set W keeps one of each.
    """
    p_prev, p = 0, 22  # hundredths
    w = [0]
    while True:
        wj = -(-p * steps // 100)  # ceil(p * steps / 100), exactly
        if wj > steps:
            return w
        if wj > w[-1]:
            w.append(wj)
        p_prev, p = p, p + max(p - p_prev - 3, 6)


def checkpoint_schedule(steps: int) -> tuple:
    """Boolean checkpoint mask and window lengths, both of length `steps` (iteration index i).

    A checkpoint is evaluated after iteration i (0-based; it produces x^(i+1)) iff i + 1 = w_j for some
    j >= 1 (`checkpoints`); `window[i]` is then w_j - w_{j-1}, the number of steps Condition 1 counts.
    """
    is_check = np.zeros(steps, bool)
    window = np.zeros(steps, np.int32)
    w = checkpoints(steps)
    for prev, cur in zip(w[:-1], w[1:]):
        is_check[cur - 1] = True
        window[cur - 1] = cur - prev
    return is_check, window


def _start_direction(key, x, norm):
    """The random start's direction for the whole batch: t ~ U(-1, 1)^d (linf) or N(0, I) (l2)."""
    if norm == "linf":
        return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    return jax.random.normal(key, x.shape, x.dtype)


def _start(t, x, eps, norm, bounds=DEFAULT_BOUNDS):
    """x + eps t / ||t||_p, clipped to the box `bounds`."""
    scale = eps / (threat.norm_of(t, norm) + 1e-12)
    return threat.clip_to_box(x + t * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype),
                              *bounds)


def eot_value_and_grad(logits_fn: RandomizedLogitsFn, loss_fn: Callable, x: jax.Array,
                       y: jax.Array, key: jax.Array, eot_iter: int) -> tuple:
    """EoT estimate at x of a randomized model: (mean per-example loss, last draw's logits, mean
    input gradient of the summed loss) over draws d = 0..eot_iter-1 with keys fold_in(key, d).

        L_bar = 1/E sum_d L(f(x; k_d), y),   g = 1/E sum_d grad_x sum_i L(f(x_i; k_d), y_i)

    (Athalye et al. 2018, Eq. 3's gradient of the expectation, estimated with E samples; AutoAttack's
    `eot_iter`). The draws run sequentially in a `fori_loop`; the gradient is summed in at least
    float32 and returned in x's dtype.
    """
    def total(xa, k):
        logits = logits_fn(xa, k)
        val = loss_fn(logits, y)
        return jnp.sum(val), (val, logits)

    vg = jax.value_and_grad(total, has_aux=True)
    out = jax.eval_shape(lambda xa: total(xa, key)[1], x)

    def draw(d, acc):
        g_sum, f_sum, _ = acc
        (_, (val, logits)), g = vg(x, jax.random.fold_in(key, d))
        return g_sum + g.astype(acc_dtype), f_sum + val, logits

    # Sums in at least float32: 20 bfloat16 gradients would lose most of their mantissa.
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    init = (jnp.zeros(x.shape, acc_dtype), jnp.zeros(out[0].shape, out[0].dtype),
            jnp.zeros(out[1].shape, out[1].dtype))
    g_sum, f_sum, logits = jax.lax.fori_loop(0, eot_iter, draw, init)
    return f_sum / eot_iter, logits, (g_sum / eot_iter).astype(x.dtype)


def _apgd_run(logits_fn, x, y, loss_fn, t, *, eps, steps: int, norm: str,
              bounds=DEFAULT_BOUNDS, target=None, model_key=None, eot_iter: int = 1):
    """One APGD run from the start direction t; returns (x_out, best loss, success) per example.
    Success is misclassification, or predicting `target` when it is given (a targeted run).

    Iteration j = 0..steps first evaluates the loss, prediction and gradient at the candidate x^(j)
    (x^(0) the random start), then does the bookkeeping of Algorithm 1 for it (best point, first
    success, increase count, and the checkpoint after step j when j is one), and last computes the
    next candidate x^(j+1) (unused after j = steps). The candidate is a loop-carried array, so XLA
    evaluates the model on a materialized input rather than fusing the projection and momentum
    arithmetic into the model's first layer (which it would recompute for every use).

    With `model_key` (a randomized logits_fn(x, key)), the loss, prediction and gradient at x^(j)
    are `eot_value_and_grad` over `eot_iter` draws keyed fold_in(fold_in(model_key, j), d).
    """
    dtype = x.dtype
    b = x.shape[0]
    bshape = (-1,) + (1,) * (x.ndim - 1)

    def total(xa):
        logits = logits_fn(xa)
        val = loss_fn(logits, y)
        return jnp.sum(val), (val, logits)

    vg = jax.value_and_grad(total, has_aux=True)

    def loss_and_grad(x_j, j):
        if model_key is None:
            (_, (f_new, logits)), g_new = vg(x_j)
            return f_new, logits, g_new
        return eot_value_and_grad(logits_fn, loss_fn, x_j, y, jax.random.fold_in(model_key, j),
                                  eot_iter)

    def proj(xa):
        return threat.project_to_threat(xa, x, eps, norm, bounds)

    x0 = _start(t, x, eps, norm, bounds)
    fdt = _loss_dtype(logits_fn, loss_fn, x, y, model_key)
    is_check, window = checkpoint_schedule(steps)
    # Indexed by j: the checkpoint evaluated once x^(j) is known (after step j - 1 of the schedule).
    check_at = jnp.asarray(np.concatenate([[False], is_check]))
    window_at = jnp.asarray(np.concatenate([[0], window]))

    state = dict(
        x=x0, x_prev=x0, f=jnp.zeros((b,), fdt),
        x_max=x0, f_max=jnp.zeros((b,), fdt), g_max=jnp.zeros_like(x0),
        eta=jnp.full((b,), 2.0, dtype) * eps,
        n_incr=jnp.zeros((b,), jnp.int32),
        f_max_last_check=jnp.zeros((b,), fdt), reduced_last_check=jnp.ones((b,), bool),
        x_succ=x0, found=jnp.zeros((b,), bool),
    )

    def body(j, s):
        first = j == 0
        x_j = s["x"]
        f_new, logits, g_new = loss_and_grad(x_j, j)
        pred = jnp.argmax(logits, -1)
        succ = (pred != y) if target is None else (pred == target)

        new_succ = succ & ~s["found"]
        x_succ = jnp.where(new_succ.reshape(bshape), x_j, s["x_succ"])
        found = s["found"] | succ
        n_incr = s["n_incr"] + (~first & (f_new > s["f"])).astype(jnp.int32)
        better = first | (f_new > s["f_max"])
        x_max = jnp.where(better.reshape(bshape), x_j, s["x_max"])
        g_max = jnp.where(better.reshape(bshape), g_new, s["g_max"])
        f_max = jnp.where(better, f_new, s["f_max"])
        f_max_last_check = jnp.where(first, f_new, s["f_max_last_check"])

        # The checkpoint (Conditions 1 and 2), as a per-example select: cheap next to the model.
        at_check = check_at[j]
        cond1 = n_incr.astype(dtype) <= RHO * window_at[j].astype(dtype)
        cond2 = ~s["reduced_last_check"] & (f_max_last_check >= f_max)
        reduce = at_check & (cond1 | cond2)
        rb = reduce.reshape(bshape)
        x_cur = jnp.where(rb, x_max, x_j)
        g_cur = jnp.where(rb, g_max, g_new)
        eta = jnp.where(reduce, s["eta"] / 2, s["eta"])

        # The step to the next candidate (momentum from the second step on).
        alpha = jnp.where(first, 1.0, MOMENTUM).astype(dtype)
        step = (eta.reshape(bshape) * threat.steepest_ascent(g_cur, norm)).astype(dtype)
        z = proj(x_cur + step)
        x_next = proj(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - s["x_prev"]))
        return dict(
            x=x_next, x_prev=x_cur, f=f_new, x_max=x_max, f_max=f_max, g_max=g_max, eta=eta,
            n_incr=jnp.where(at_check, 0, n_incr),
            f_max_last_check=jnp.where(at_check, f_max, f_max_last_check),
            reduced_last_check=jnp.where(at_check, reduce, s["reduced_last_check"]),
            x_succ=x_succ, found=found)

    s = jax.lax.fori_loop(0, steps + 1, body, state)
    x_out = jnp.where(s["found"].reshape(bshape), s["x_succ"], s["x_max"])
    return x_out, s["f_max"], s["found"]


def _loss_dtype(logits_fn, loss_fn, x, y, model_key=None):
    """The dtype of the per-example loss (e.g. float32 logits of a bfloat16 input); a randomized
    logits_fn (model_key given) is traced with that key."""
    if model_key is not None:
        return jax.eval_shape(lambda xa: loss_fn(logits_fn(xa, model_key), y), x).dtype
    return jax.eval_shape(lambda xa: loss_fn(logits_fn(xa), y), x).dtype


def _keep(best, new):
    """Per example: the earlier success if there is one, else a new success, else the higher loss
    (AutoAttack keeps the first successful run's point and never revisits a fooled example)."""
    bx, bf, bs = best
    nx, nf, ns = new
    take = (ns & ~bs) | (~bs & ~ns & ((nf > bf) | jnp.isneginf(bf)))
    tb = take.reshape((-1,) + (1,) * (bx.ndim - 1))
    return jnp.where(tb, nx, bx), jnp.where(take, nf, bf), bs | ns


# On CPU, runs after the first attack only the examples not fooled yet, in chunks of about
# 1 / ACTIVE_SET_CHUNKS of the batch (at least MIN_CHUNK examples), as AutoAttack does.
ACTIVE_SET_CHUNKS = 8
MIN_CHUNK = 32


def _chunk_size(n: int, norm: str) -> int:
    """Examples per chunk of the active-set runs (n: whole-batch runs). Chunks are used on the CPU
    backend only (on an accelerator a smaller batch saves little time) and for linf only: the l2
    steps' per-example norms are reductions that XLA:CPU fuses differently for another batch size,
    which moves their float rounding; linf iterates are bitwise the same in any chunk."""
    if jax.default_backend() != "cpu" or norm != "linf":
        return n
    return min(n, max(MIN_CHUNK, -(-n // ACTIVE_SET_CHUNKS)))


def _runs(logits_fn, x, y, keys, run_spec, *, eps, steps: int, norm: str,
          bounds=DEFAULT_BOUNDS, model_keys=None, eot_iter: int = 1):
    """len(keys) APGD runs (run r from the start drawn with keys[r]; on the examples idx its loss and
    target are `run_spec(r, idx)` = (loss_fn, target or None)); per example, the first success, else
    the highest loss.

    A run after an example's first success cannot change its result, so each run attacks only the
    examples not fooled yet: they are ordered first, and taken `_chunk_size` at a time (the last
    chunk overlaps the previous one rather than reaching past the batch; recomputing an example
    gives the same result). Start directions are drawn for the whole batch and gathered, so every
    example follows exactly the iterates of a whole-batch run (the attack is per example: the
    logits of an example must not depend on the rest of the batch).

    model_keys: for a randomized logits_fn(x, key), run r's model key (see `_apgd_run`); such a
    model is always attacked on the whole batch (a chunk would see other draws of its noise).
    """
    n = x.shape[0]
    chunk = n if model_keys is not None else _chunk_size(n, norm)
    fdt = _loss_dtype(logits_fn, run_spec(0, jnp.arange(n))[0], x, y,
                      None if model_keys is None else model_keys[0])
    best = (x, jnp.full((n,), -jnp.inf, fdt), jnp.zeros((n,), bool))

    def attack(r, idx, t, best_idx):
        loss_fn, target = run_spec(r, idx)
        new = _apgd_run(logits_fn, x[idx], y[idx], loss_fn, t[idx], eps=eps, steps=steps,
                        norm=norm, bounds=bounds, target=target)
        return _keep(best_idx, new)

    def one_run(r, best):
        t = _start_direction(keys[r], x, norm)
        if chunk == n:
            loss_fn, target = run_spec(r, jnp.arange(n))
            eot = {} if model_keys is None else dict(model_key=model_keys[r], eot_iter=eot_iter)
            return _keep(best, _apgd_run(logits_fn, x, y, loss_fn, t, eps=eps, steps=steps,
                                         norm=norm, bounds=bounds, target=target, **eot))
        order = jnp.argsort(best[2], stable=True)  # not fooled yet (False) first
        n_chunks = (n - jnp.sum(best[2]) + chunk - 1) // chunk

        def chunk_body(c, best):
            idx = jax.lax.dynamic_slice(order, (jnp.minimum(c * chunk, n - chunk),), (chunk,))
            kept = attack(r, idx, t, tuple(a[idx] for a in best))
            return tuple(a.at[idx].set(k) for a, k in zip(best, kept))

        return jax.lax.fori_loop(0, n_chunks, chunk_body, best)

    if len(keys) == 1:
        return one_run(0, best)
    return jax.lax.fori_loop(0, len(keys), one_run, best)


def _check(logits_fn, x, y, key, eps, steps, restarts, norm, bounds=DEFAULT_BOUNDS):
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2' for APGD, got {norm!r}")
    v.check_nonnegative(eps, "eps")
    v.check_key(key, True, "APGD starts at a random point")
    num_classes = v.check_batch(logits_fn, x, y, bounds=bounds)
    v.check_positive_int(steps, "steps")
    v.check_positive_int(restarts, "restarts")
    return num_classes


def _check_eot(eot_iter, randomized) -> None:
    """eot_iter: an int >= 1; randomized: a bool; eot_iter > 1 only for a randomized model (the
    draws of a deterministic logits_fn(x) would all be the same)."""
    v.check_positive_int(eot_iter, "eot_iter")
    if not isinstance(randomized, (bool, np.bool_)):
        raise ValueError(f"randomized must be a bool, got {randomized!r}")
    if eot_iter > 1 and not randomized:
        raise ValueError(f"eot_iter={eot_iter} needs randomized=True (a logits_fn(x, key) with "
                         f"randomness to average over); a deterministic logits_fn(x) gives the "
                         f"same gradient at every draw")


def apgd(logits_fn: Union[LogitsFn, RandomizedLogitsFn], x: jax.Array, y: jax.Array, *,
         key: jax.Array, eps: Scalar, steps: int = 100, norm: str = "linf",
         loss: Union[str, Callable] = "ce", restarts: int = 1, bounds: Bounds = DEFAULT_BOUNDS,
         eot_iter: int = 1, randomized: bool = False) -> jax.Array:
    """Untargeted APGD (Croce & Hein 2020, Alg. 1) with `loss` "ce" (APGD-CE) or "dlr" (APGD-DLR).

    `restarts` runs from independent random starts keep each example's first success, else its
    highest loss. steps = 100 is AutoAttack's. `bounds` = (lo, hi): the valid-input box. See the
    module docstring for the exact schedule.

    randomized: logits_fn is a randomized model called as logits_fn(x, key) (one draw per key);
      every iteration's gradient and loss are EoT means over `eot_iter` draws (module docstring;
      AutoAttack's version "rand" uses eot_iter = 20, restarts = 1). The key is split into the
      start key (the restarts' start directions) and the model key (the draws), so for a model
      that ignores its key the draws change nothing but the start point. eot_iter > 1 needs
      randomized=True; eot_iter=1, randomized=False is plain APGD.
    """
    bounds = threat.check_bounds(bounds)
    _check_eot(eot_iter, randomized)
    if randomized:
        v.check_key(key, True, "APGD starts at a random point")
        start_key, model_key = jax.random.split(key)
        _check(lambda xa: logits_fn(xa, model_key), x, y, key, eps, steps, restarts, norm, bounds)
        loss_fn = losses_lib.get_loss(loss)
        return _runs(logits_fn, x, y, jax.random.split(start_key, restarts),
                     lambda r, idx: (loss_fn, None), eps=eps, steps=steps, norm=norm,
                     bounds=bounds, model_keys=jax.random.split(model_key, restarts),
                     eot_iter=eot_iter)[0]
    _check(logits_fn, x, y, key, eps, steps, restarts, norm, bounds)
    loss_fn = losses_lib.get_loss(loss)
    keys = jax.random.split(key, restarts)
    return _runs(logits_fn, x, y, keys, lambda r, idx: (loss_fn, None), eps=eps, steps=steps,
                 norm=norm, bounds=bounds)[0]


def apgd_ce(logits_fn: Union[LogitsFn, RandomizedLogitsFn], x: jax.Array, y: jax.Array, *,
            key: jax.Array, eps: Scalar, steps: int = 100, norm: str = "linf", restarts: int = 1,
            bounds: Bounds = DEFAULT_BOUNDS, eot_iter: int = 1,
            randomized: bool = False) -> jax.Array:
    """APGD-CE of AutoAttack: `apgd` with the cross-entropy loss (EoT as in `apgd`)."""
    return apgd(logits_fn, x, y, key=key, eps=eps, steps=steps, norm=norm, loss="ce",
                restarts=restarts, bounds=bounds, eot_iter=eot_iter, randomized=randomized)


def apgd_t(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
           steps: int = 100, norm: str = "linf", num_target_classes: int = 9,
           restarts: int = 1, targets: Optional[jax.Array] = None,
           bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """APGD-T of AutoAttack: APGD on the targeted DLR loss (Croce & Hein 2020, Eq. 7).

    For the t-th highest-scoring class other than y (t = 1..num_target_classes, AutoAttack's default 9;
    `targets.ranked_targets`), run `restarts` APGD runs maximizing
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2); keep each example's first misclassified result, else
    the highest loss. y holds the true labels.

    targets: optional (batch,) int classes, one per example (e.g. from `advjax.attacks.targets`).
      Then the attack is targeted: `restarts` runs towards that class only (num_target_classes is
      ignored), keeping each example's first iterate predicted as its target, else the highest loss.
    """
    bounds = threat.check_bounds(bounds)
    num_classes = _check(logits_fn, x, y, key, eps, steps, restarts, norm, bounds)
    if targets is not None:
        targets_lib.check_targets(targets, y, num_classes)
        keys = jax.random.split(key, restarts)

        def run_to(r, idx):
            target = targets[idx]
            return (lambda logits, yy: losses_lib.dlr_targeted(logits, yy, target)), target

        return _runs(logits_fn, x, y, keys, run_to, eps=eps, steps=steps, norm=norm,
                     bounds=bounds)[0]
    v.check_positive_int(num_target_classes, "num_target_classes")
    if num_target_classes > num_classes - 1:
        raise ValueError(f"num_target_classes must be <= classes - 1 = {num_classes - 1}, "
                         f"got {num_target_classes}")
    order = targets_lib.ranked_targets(logits_fn(x), y, num_target_classes)
    keys = jax.random.split(key, num_target_classes * restarts)

    def run(r, idx):
        target = order[idx, r // restarts]
        return (lambda logits, yy: losses_lib.dlr_targeted(logits, yy, target)), None

    return _runs(logits_fn, x, y, keys, run, eps=eps, steps=steps, norm=norm, bounds=bounds)[0]
