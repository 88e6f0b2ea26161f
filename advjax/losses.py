"""Per-example losses on logits, shape (batch, classes) -> (batch,).

Attacks maximize these. Any callable `(logits, y) -> per-example loss` can be passed to an attack in
place of a name; `get_loss` resolves names.

  * `cross_entropy`: CE(z, y) = -log softmax(z)_y.
  * `cw_margin`: the Carlini-Wagner margin max_{j != y} z_j - z_y, capped at kappa (Carlini & Wagner,
    S&P 2017, Eq. f_6 with confidence kappa; optimized by PGD as in Madry et al. 2018 and ADT's C&W).
  * `dlr`: the difference-of-logits ratio of Croce & Hein (ICML 2020, Eq. 6),
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).
  * `kl_divergence`: KL(p_nat || p_adv), the TRADES inner objective (Zhang et al., ICML 2019, Eq. 5).

All of them use `log_softmax` below rather than `jax.nn.log_softmax`: under `jit`, XLA fuses the
last elementwise operation of a model (a scale, a bias) into each consumer of the logits and may
contract a multiply and the max-subtraction into one fused multiply-add, so that z - max(z) comes out
*positive* for the arg-max logit (measured: +2582 for logits ~1e11, whose float32 spacing is ~8e3).
exp of that overflows and softmax / its gradient become inf / inf = NaN: with logits of order 1e9 and
above, every CE attack returned NaN images, which argmax scored as class 0 (0% robust accuracy where
the truth was 100%).
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# Excludes the true class from a max over logits. -inf rather than a large finite number, so that the
# max is right whatever the logits' scale (a finite sentinel such as -1e9 wins the max when every
# other logit is below it, and the margin comes out wrong).
_NEG = -jnp.inf


@jax.custom_jvp
def log_softmax(logits: jax.Array) -> jax.Array:
    """log softmax(z)_k = s_k - log sum_j exp(s_j), s = min(z, max z) - max z, over the last axis.

    Mathematically s = z - max z; min(z, m) - m rounds z before the subtraction (a minimum cannot be
    contracted into a fused multiply-add), so s <= 0 exactly, s = 0 at the arg-max, the sum is >= 1
    and the result stays finite for any finite logits (see the module docstring). The derivative is
    the usual one, d log p_k = dz_k - sum_j p_j dz_j (a custom JVP: the derivative of min at the
    arg-max would otherwise be split in half).
    """
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = jnp.minimum(logits, m) - m
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


@log_softmax.defjvp
def _log_softmax_jvp(primals, tangents):
    (logits,), (dlogits,) = primals, tangents
    out = log_softmax(logits)
    return out, dlogits - jnp.sum(jnp.exp(out) * dlogits, axis=-1, keepdims=True)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example cross-entropy -log softmax(logits)_y."""
    logp = log_softmax(logits)
    return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1)[:, 0]


def _true_and_best_other(logits: jax.Array, y: jax.Array):
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(onehot, _NEG, logits), axis=-1)
    return z_y, z_other


def cw_margin(logits: jax.Array, y: jax.Array, kappa: float = float("inf")) -> jax.Array:
    """C&W margin min(max_{j != y} z_j - z_y, kappa): positive iff the example is misclassified.

    Maximizing it is minimizing C&W's f_6 = max(z_y - max_{j != y} z_j, -kappa); kappa = inf (default)
    leaves the margin uncapped, which is what PGD-with-CW-loss evaluations use (Madry et al. cap at 50,
    which only shifts the loss once the margin exceeds 50).
    """
    z_y, z_other = _true_and_best_other(logits, y)
    return jnp.minimum(z_other - z_y, kappa)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Untargeted DLR loss of AutoAttack (Croce & Hein 2020, Eq. 6).

    DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), with pi the logits sorted in
    decreasing order. Shift- and scale-invariant in the logits. Needs at least 3 classes.
    """
    if logits.shape[-1] < 3:
        raise ValueError(f"dlr needs at least 3 classes, logits have {logits.shape[-1]}")
    z_sorted = jnp.sort(logits, axis=-1)[:, ::-1]
    z_y, z_other = _true_and_best_other(logits, y)
    return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def dlr_targeted(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR loss of AutoAttack (Croce & Hein 2020, Eq. 7), maximized by APGD-T.

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Needs at least 4 classes.
    """
    if logits.shape[-1] < 4:
        raise ValueError(f"targeted dlr needs at least 4 classes, logits have {logits.shape[-1]}")
    z_sorted = jnp.sort(logits, axis=-1)[:, ::-1]
    z_y = jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """Per-example KL(softmax(logits_p) || softmax(logits_q)) = sum_k p_k (log p_k - log q_k)."""
    logp = log_softmax(logits_p)
    logq = log_softmax(logits_q)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
    """Per-example entropy H(softmax(logits)) = -sum_k p_k log p_k."""
    logp = log_softmax(logits)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


LOSSES = ("ce", "cw", "dlr", "kl")


def get_loss(loss: Union[str, LossFn], *, kappa: float = float("inf"),
             logits_nat: jax.Array | None = None) -> LossFn:
    """Resolves a loss name or callable into a per-example `(logits, y) -> loss` to maximize.

    "kl" is KL(p_nat || p_adv) and needs the natural logits (`logits_nat`, treated as constants): the
    TRADES attack. Callables pass through unchanged.
    """
    if callable(loss):
        return loss
    if loss == "ce":
        return cross_entropy
    if loss == "cw":
        return lambda logits, y: cw_margin(logits, y, kappa)
    if loss == "dlr":
        return dlr
    if loss == "kl":
        if logits_nat is None:
            raise ValueError('loss="kl" needs the natural logits (logits_nat)')
        nat = jax.lax.stop_gradient(logits_nat)
        return lambda logits, y: kl_divergence(nat, logits)
    raise ValueError(f"loss must be one of {LOSSES} or a callable (logits, y) -> loss, got {loss!r}")
