"""The Lagrangian (WRM / DRA) attack: gradient ascent on loss(x') - gamma * c(x, x'), no ball.

Sinha, Namkoong, Duchi, "Certifying some distributional robustness with principled adversarial
training" (ICLR 2018, WRM), and its generalization to other transport costs in "Distributionally
Robust Adversarial Training" (DRA; /work/shared/papers/dra-distributionally-robust-adversarial-
training.txt). DRA Eq. (5) with gamma fixed (the Lagrangian relaxation of Sec. 3.1):

    phi_gamma(theta; z) = sup_{x'} l(theta; (x', y)) - gamma c(x, x'),

whose maximizer is found by T_adv steps of gradient ascent with step size alpha' (Sec. 3.3, "In
practice, we iterate T_adv steps with learning rate alpha'"). There is no projection onto a norm ball:
gamma alone keeps x' near x. The only constraint is the valid-input box `bounds` (default [0, 1]).

Transport costs (DRA Sec. 3.2 and 3.3.2), on delta = x' - x flattened per example (d = H*W*C):

    "l2"           ||delta||_2^2                        (p = 2 of ||.||_p^p: Sinha et al.'s WRM)
    "linf"         ||delta||_inf                        (see below for the power)
    "elastic"      ||delta||_2^2 + beta ||delta||_2     (elastic net, Sec. 3.2)
    "mahalanobis"  delta^T A delta, A (d, d) PSD         (Sec. 3.3.2, DRA_A)

Choices where the paper is silent:
  * linf. Sec. 3.2 writes the l_p cost as ||.||_p^p, which has no meaning for p = inf; DRA_inf uses
    the norm itself, ||delta||_inf = max_i |delta_i| (the form the UDR chapter's Table 11 also uses).
    It is not differentiable; the ascent uses the subgradient sign(delta_i) on the coordinates where
    |delta_i| attains the max, split equally among ties (what JAX's autodiff of max(|.|) gives away from
    0), and 0 at delta = 0 (a valid subgradient there, at the cost's minimum, where autodiff would give
    sign(0) = 1 / d on every coordinate). So each step pulls back only the largest coordinate(s); DRA
    remarks that DRA_inf "is hard to optimize" (Sec. 5.2).
  * The ascent rule. DRA (Sec. 4, "Defense models") says the inner maximum uses learning rate 0.001
    "and we used Adam optimizer"; Sinha et al. use plain gradient ascent. `ascent` picks one:
    "gradient" (default) x' <- x' + step_size * grad, "sign" x' <- x' + step_size * sign(grad), or
    "adam" (Adam's per-coordinate moments, which are per example; bias-corrected, optax defaults).
    grad = grad_x' loss - gamma grad_x' c always.
  * Stability. Explicit gradient steps on -gamma c are stable only if step_size * gamma * L_c < 2,
    L_c the cost gradient's Lipschitz constant (2 for "l2", 2 lambda_max(A) for "mahalanobis"). A
    larger gamma needs a smaller step (gamma -> inf with step_size = 1 / (2 gamma) returns x).

Sinha et al.'s released code (duchi-lab/certifiable-distributional-robustness, `attacks_tf.py` `wrm`,
`train_mnist_models.py`) differs from the generic ascent above; `variant="sinha_code"` gives it:
  * c = ||x' - x||_2^2 only, with a fixed step schedule set by gamma alone: a first step
    x'_1 = x + (1 / (2 gamma)) grad loss(x) (no cost gradient at x' = x), then `steps` steps
    x'_{t+2} = x'_{t+1} + (1 / (2 gamma)) / sqrt(t + 2) * grad_x' [loss(x') - gamma ||x' - x||^2]
    (t = 0 .. steps - 1; the code's `eps` = 1 / (2 gamma) = 1.3 for MNIST, i.e. gamma ~ 0.385, and
    15 steps), so `step_size` and `ascent` are not used;
  * the loss is the cross-entropy with labels smoothed by 0.1 (true class 0.9, the others 0.1 / 9:
    the code clips the one-hot training labels to [0.1 / 9, 0.9]; `label_smoothing`);
  * no clip to the [0, 1] box: x' may leave it (the only advjax attack that does, on purpose).
variant="dra" (default): the ascent of DRA Sec. 3.3 described above, inside the box. DRA is the
paper whose costs (l2, linf, elastic, Mahalanobis) this module implements, and the box keeps every
training input a valid image.

Per-example (given a per-example `logits_fn`); jittable; steps run in a `lax.fori_loop`. `gamma`,
`step_size`, `beta` and `A` may be traced (DRA_A passes its learned A), `steps`, `cost`, `ascent`,
`loss` and `random_start` are static.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.attacks.gradient import _objective, _resolve_loss
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]
Loss = Union[str, losses_lib.LossFn]

COSTS = ("l2", "linf", "elastic", "mahalanobis")
ASCENTS = ("gradient", "sign", "adam")
VARIANTS = ("dra", "sinha_code")
SINHA_LABEL_SMOOTHING = 0.1


def smoothed_cross_entropy(logits: jax.Array, y: jax.Array, smoothing: Scalar) -> jax.Array:
    """Per-example cross-entropy against labels smoothed as Sinha et al.'s code: target 1 - s on the
    true class and s / (K - 1) on each other class (K classes). smoothing = 0 is the plain CE."""
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(y, k, dtype=logits.dtype)
    target = onehot * (1.0 - smoothing) + (1.0 - onehot) * (smoothing / (k - 1))
    return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def check_cost(cost: str) -> str:
    """Returns `cost` if it is one of `COSTS`, else raises a ValueError naming the argument."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    return cost


def _flat(delta: jax.Array) -> jax.Array:
    return delta.reshape(delta.shape[0], -1)


def _check_matrix(A, d: int):
    if A is None:
        raise ValueError('cost="mahalanobis" needs the matrix A, shape (d, d) with d = H*W*C')
    if jnp.shape(A) != (d, d):
        raise ValueError(f"A must have shape ({d}, {d}) for inputs of {d} features, "
                         f"got {jnp.shape(A)}")
    return A


def transport_cost(delta: jax.Array, cost: str = "l2", *, beta: Scalar = 0.0,
                   A: Optional[jax.Array] = None) -> jax.Array:
    """Per-example transport cost c(x, x + delta), shape (batch,) (DRA Sec. 3.2 / 3.3.2).

    l2: ||delta||_2^2.  linf: ||delta||_inf.  elastic: ||delta||_2^2 + beta ||delta||_2.
    mahalanobis: delta^T A delta (delta flattened).
    """
    check_cost(cost)
    flat = _flat(delta)
    sq = jnp.sum(flat * flat, axis=1)
    if cost == "l2":
        return sq
    if cost == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    if cost == "elastic":
        return sq + beta * jnp.sqrt(sq)
    A = _check_matrix(A, flat.shape[1])
    return jnp.einsum("bi,ij,bj->b", flat, A.astype(flat.dtype), flat)


def transport_cost_grad(delta: jax.Array, cost: str = "l2", *, beta: Scalar = 0.0,
                        A: Optional[jax.Array] = None) -> jax.Array:
    """Closed-form (sub)gradient of `transport_cost` with respect to delta (= w.r.t. x'), delta's shape.

    l2: 2 delta.  linf: sign(delta_i) / m on the m coordinates attaining max |delta_i|, 0 elsewhere and
    0 at delta = 0.  elastic: 2 delta + beta delta / ||delta||_2 (0 at delta = 0, a subgradient).
    mahalanobis: (A + A^T) delta (= 2 A delta for symmetric A).
    """
    check_cost(cost)
    flat = _flat(delta)
    if cost == "l2":
        g = 2.0 * flat
    elif cost == "linf":
        mag = jnp.abs(flat)
        top = (mag == jnp.max(mag, axis=1, keepdims=True)) & (mag > 0)
        count = jnp.maximum(jnp.sum(top, axis=1, keepdims=True), 1).astype(flat.dtype)
        g = jnp.where(top, jnp.sign(flat), 0.0) / count
    elif cost == "elastic":
        n = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
        unit = jnp.where(n > 0, flat / jnp.where(n > 0, n, 1.0), 0.0)
        g = 2.0 * flat + beta * unit
    else:
        A = _check_matrix(A, flat.shape[1]).astype(flat.dtype)
        g = flat @ (A + A.T).T
    return g.reshape(delta.shape).astype(delta.dtype)


def _ascent_direction(ascent: str):
    """(init(x), direction(grad, state) -> (step, state)): the step is multiplied by step_size."""
    if ascent == "gradient":
        return (lambda x: ()), (lambda g, s: (g, s))
    if ascent == "sign":
        return (lambda x: ()), (lambda g, s: (jnp.sign(g), s))
    adam = optax.scale_by_adam()

    def direction(g, s):
        # optax transforms descend on what they are given; ascend by passing -g and negating back.
        upd, s = adam.update(-g, s)
        return -upd, s

    return adam.init, direction


def wrm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        gamma: Scalar, step_size: Optional[Scalar] = None, steps: int, cost: str = "l2",
        beta: Scalar = 0.0, A: Optional[jax.Array] = None, loss: Loss = "ce",
        kappa: float = float("inf"), ascent: str = "gradient", random_start: bool = False,
        init_eps: Scalar = 0.0, targeted: bool = False, variant: str = "dra",
        label_smoothing: Optional[float] = None,
        bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """Lagrangian attack of WRM (Sinha et al. 2018) / DRA (Eq. 5, Sec. 3.3): maximize
    loss(logits_fn(x'), y) - gamma c(x, x') over x' by `steps` ascent steps.

    variant="dra" (default): x' stays in the box `bounds` = [lo, hi] (default [0, 1]);
    x'_{t+1} = clip_[lo,hi]( x'_t + step_size * D(grad_x' loss(x'_t) - gamma grad_x' c(x, x'_t)) ),
    D = identity ("gradient"), sign ("sign") or Adam's normalization ("adam").
    x'_0 = x, or clip(x + U(-init_eps, init_eps)) with `random_start=True` (needs `key`).
    gamma = 0 is unconstrained ascent in the box; gamma -> inf (with step_size * gamma bounded) keeps
    x' at x. `cost` / `beta` / `A`: see `transport_cost`. Returns the last iterate (no ball).
    variant="sinha_code": Sinha et al.'s released recursion (module docstring): l2 cost, the
    1 / (2 gamma sqrt(t + 2)) schedule after a first step of 1 / (2 gamma), CE with labels smoothed
    by `label_smoothing` (default 0.1), no box; gamma > 0, `loss` "ce", step_size / ascent /
    random_start unused.
    """
    bounds = threat.check_bounds(bounds)
    v.check_batch(logits_fn, x, y, bounds=bounds)
    check_cost(cost)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    v.check_nonnegative(gamma, "gamma")
    steps = v.check_positive_int(steps, "steps")
    if variant == "sinha_code":
        return _sinha_code(logits_fn, x, y, gamma=gamma, steps=steps, cost=cost, loss=loss,
                           label_smoothing=SINHA_LABEL_SMOOTHING if label_smoothing is None
                           else label_smoothing, random_start=random_start)
    if ascent not in ASCENTS:
        raise ValueError(f"ascent must be one of {ASCENTS}, got {ascent!r}")
    if step_size is None:
        raise ValueError('wrm(variant="dra") needs step_size')
    v.check_nonnegative(step_size, "step_size")
    v.check_nonnegative(beta, "beta")
    v.check_key(key, random_start, "random_start=True")
    if cost == "mahalanobis":
        _check_matrix(A, int(x[0].size))
    if label_smoothing:
        if loss != "ce":
            raise ValueError(f"label_smoothing applies to the CE loss, got loss={loss!r}")
        loss = lambda logits, yy: smoothed_cross_entropy(logits, yy, label_smoothing)
    loss_fn = _resolve_loss(logits_fn, x, loss, kappa)
    _, value_and_grad = _objective(logits_fn, loss_fn, y, targeted)
    dtype = x.dtype
    start = x
    if random_start:
        v.check_nonnegative(init_eps, "init_eps")
        start = threat.clip_to_box(x + threat.random_init(key, x, init_eps, "linf"), *bounds)
    init, direction = _ascent_direction(ascent)

    def body(_, carry):
        x_adv, s = carry
        _, _, g = value_and_grad(x_adv)
        g = g - gamma * transport_cost_grad(x_adv - x, cost, beta=beta, A=A)
        d, s = direction(g, s)
        x_adv = threat.clip_to_box(x_adv + (step_size * d).astype(dtype), *bounds).astype(dtype)
        return x_adv, s

    x_adv, _ = jax.lax.fori_loop(0, steps, body, (start, init(start)))
    return x_adv


def _sinha_code(logits_fn, x, y, *, gamma, steps, cost, loss, label_smoothing, random_start):
    if cost != "l2":
        raise ValueError(f'variant="sinha_code" is Sinha et al.\'s l2 cost, got cost={cost!r}')
    if loss != "ce":
        raise ValueError(f'variant="sinha_code" uses the (label-smoothed) CE, got loss={loss!r}')
    if random_start:
        raise ValueError('variant="sinha_code" starts at x (random_start=False)')
    v.check_nonnegative(label_smoothing, "label_smoothing")
    if v.is_concrete(gamma) and not float(gamma) > 0:
        raise ValueError(f'variant="sinha_code" needs gamma > 0 (its steps are 1 / (2 gamma)), '
                         f"got {gamma}")
    dtype = x.dtype
    scale = 0.5 / gamma
    grad_loss = jax.grad(lambda xa: jnp.sum(smoothed_cross_entropy(logits_fn(xa), y,
                                                                   label_smoothing)))
    first = x + (scale * grad_loss(x)).astype(dtype)

    def body(t, x_adv):
        g = grad_loss(x_adv) - gamma * transport_cost_grad(x_adv - x, "l2")
        return (x_adv + (scale / jnp.sqrt(t + 2.0) * g).astype(dtype)).astype(dtype)

    return jax.lax.fori_loop(0, steps, body, first)
