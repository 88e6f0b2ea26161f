"""Adversarial distributions of ADT (Dong, Deng, Pang, Zhu, Su, "Adversarial distributional training
for robust deep learning", NeurIPS 2020): the explicit tanh-Gaussian distribution, its density, the
EXP attack, and the amortized (generator) attacks EXP-AM / IMP-AM.

Everything here is pure JAX on a `logits_fn` (no Flax import): generators enter the AM functions as
duck-typed Flax-style modules (`init(key, inputs, train=False)`, `apply(variables, inputs, train=True,
mutable=[...])`), e.g. `advjax.models.generator.ResidualGenerator`; `advjax.objectives.adt` binds that
default and registers the AM attacks under "adt_exp_am" / "adt_imp_am".

The explicit adversarial distribution (Sec. 3.1)
-------------------------------------------------
    delta = eps * tanh(u),  u = mu + sigma * r,  r ~ N(0, I)                        (Eq. 8, reparameterized)

so every sample lies strictly inside the open linf ball (-eps, eps)^d. By the change of variables
u -> delta (Jacobian eps * (1 - tanh(u)^2) per coordinate) the negative log density is

    -log p(delta) = sum_j [ r_j^2/2 + log(2 pi)/2 + log sigma_j + log(1 - tanh(u_j)^2) + log eps ]  (Eq. 11)

and its average over reparameterized samples estimates the entropy H(p) (Eq. 10).

Choices where the paper is silent (documented here once, used everywhere):
  * sigma = softplus(rho) with rho free; rho = mu = 0 at the start, i.e. sigma = log 2 ~ 0.69 and the
    initial distribution is centred on x (the authors' released code, adt_exp.py, does the same).
  * The entropy enters the objective per input dimension: lam * H(p) / d. Eq. (5) writes lam * H, but
    the released code averages Eq. (11) over coordinates, and lam = 0.01 is tuned for that scale (with
    a sum over d = 3072 coordinates the entropy would outweigh the loss by orders of magnitude).
    Metrics report the same per-dimension entropy (nats per coordinate, including the constants).
  * Adam for (mu, rho) uses b1 = b2 = 0 by default, as the released code does
    (`optim.Adam(..., betas=(0.0, 0.0))`): each step moves every coordinate by about lr * sign(grad),
    a sign-gradient ascent in parameter space. The paper only says "Adam, learning rate 0.3"; pass
    adam_b1 = 0.9, adam_b2 = 0.999 for textbook Adam.
  * The k Monte-Carlo samples of one step run as one batch of k * B inputs through `logits_fn`.

The box. x + delta is clipped to the valid-input box `bounds` (default [0, 1]), as in the paper's
code. The clipped perturbation has no density (coordinates pushed against the box collect as atoms
on its faces), so the entropy term is the entropy of the unclipped delta (Eq. 11), exactly as the
released code computes it; the loss gradient of a clipped coordinate is zero and only the entropy
acts on it. Clipping never leaves the ball: x is in the box, so clipping only moves x + delta
towards x.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from advjax import losses as losses_lib
from advjax import threat
from advjax.attacks import _validation as v
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar

LogitsFn = Callable[[jax.Array], jax.Array]
Loss = Union[str, losses_lib.LossFn]

LOG_2PI = math.log(2.0 * math.pi)
# softplus(0): the initial sigma of ADT_EXP (rho = 0).
DEFAULT_INIT_SIGMA = math.log(2.0)
GENERATOR_INPUTS = ("image", "image_and_gradients", "image_and_raw_gradients")
ENCODER_INPUTS = ("delta_and_image", "delta")
SELECT_MODES = ("sample", "best")
# Floor on the std of the IMP-AM encoder's Gaussian q(z | delta, x): keeps the entropy bound finite
# (per latent dimension it is at most log 2 - log(0.01) - log(2 pi)/2, about 4.4 nats).
MIN_Q_STD = 0.01
_TINY = 1e-12


# ------------------------------------------------------------------------------------------------
# The tanh-Gaussian distribution (Eqs. 8, 10, 11)
# ------------------------------------------------------------------------------------------------

class TanhGaussian(NamedTuple):
    """Per-example parameters of delta = eps * tanh(mu + sigma * r), arrays of the input's shape."""
    mu: jax.Array
    sigma: jax.Array


def softplus_inverse(sigma: Scalar) -> jax.Array:
    """rho with softplus(rho) = sigma > 0: rho = sigma + log(1 - exp(-sigma))."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return sigma + jnp.log(-jnp.expm1(-sigma))


def log1m_tanh_sq(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) = log sech(u)^2 = 2 (log 2 - u - softplus(-2u)), stable for any |u|."""
    return 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def tanh_gaussian_delta(mu: jax.Array, sigma: jax.Array, r: jax.Array, eps: Scalar) -> jax.Array:
    """Eq. (8) reparameterized: delta = eps * tanh(mu + sigma * r)."""
    return eps * jnp.tanh(mu + sigma * r)


def tanh_gaussian_nll_terms(r: jax.Array, mu: jax.Array, sigma: jax.Array,
                            eps: Scalar) -> jax.Array:
    """The summands of Eq. (11), elementwise: -log p of each coordinate of delta = eps tanh(mu + sigma r).

    r^2/2 + log(2 pi)/2 + log sigma + log(1 - tanh(mu + sigma r)^2) + log eps.
    """
    u = mu + sigma * r
    return 0.5 * r * r + 0.5 * LOG_2PI + jnp.log(sigma) + log1m_tanh_sq(u) + jnp.log(eps)


def _per_example_mean(a: jax.Array, batch_axes: int = 1) -> jax.Array:
    return jnp.mean(a.reshape(a.shape[:batch_axes] + (-1,)), axis=-1)


def neg_log_density(r: jax.Array, mu: jax.Array, sigma: jax.Array, eps: Scalar) -> jax.Array:
    """-log p(delta) per example (Eq. 11 summed over all non-batch axes), shape (batch,)."""
    t = tanh_gaussian_nll_terms(r, mu, sigma, eps)
    return jnp.sum(t.reshape(t.shape[0], -1), axis=-1)


def entropy_per_dim(r: jax.Array, mu: jax.Array, sigma: jax.Array, eps: Scalar,
                    batch_axes: int = 1) -> jax.Array:
    """One-sample estimate of H(p) / d per example: Eq. (11) averaged over coordinates.

    `batch_axes` leading axes are kept (2 for a (samples, batch, ...) stack).
    """
    return _per_example_mean(tanh_gaussian_nll_terms(r, mu, sigma, eps), batch_axes)


def sample_tanh_gaussian(key: jax.Array, dist: TanhGaussian,
                         eps: Scalar) -> Tuple[jax.Array, jax.Array]:
    """One reparameterized draw per example: (delta, entropy estimate per dimension, shape (batch,))."""
    r = jax.random.normal(key, dist.mu.shape, dist.mu.dtype)
    delta = tanh_gaussian_delta(dist.mu, dist.sigma, r, eps)
    return delta, entropy_per_dim(r, dist.mu, dist.sigma, eps)


def perturb(x: jax.Array, delta: jax.Array, bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """x + delta clipped to the box `bounds` (delta already inside the linf ball)."""
    return threat.clip_to_box(x + delta.astype(x.dtype), *bounds).astype(x.dtype)


# ------------------------------------------------------------------------------------------------
# ADT_EXP: per-example distributions optimized by Adam (Eqs. 9, 10)
# ------------------------------------------------------------------------------------------------

def _resolve_loss(logits_fn, x, loss: Loss) -> losses_lib.LossFn:
    logits_nat = logits_fn(x) if loss == "kl" else None
    return losses_lib.get_loss(loss, logits_nat=logits_nat)


def exp_mc_objective(logits_fn: LogitsFn, loss_fn: losses_lib.LossFn, x: jax.Array, y: jax.Array,
                     mu: jax.Array, rho: jax.Array, r: jax.Array, *, eps: Scalar, lam: Scalar,
                     bounds: Bounds = DEFAULT_BOUNDS) -> Tuple[jax.Array, Any]:
    """Per-example Monte-Carlo estimate of the inner objective of Eq. (9), the integrand of Eq. (10):

        J_i = 1/k sum_s [ L(f(clip(x_i + eps tanh(mu_i + softplus(rho_i) r_s))), y_i)
                          + lam * (-log p(delta_s)) / d ],

    with the noise r (shape (k,) + x.shape) held fixed, so that grad J is the reparameterized
    gradient estimator. Returns (J of shape (batch,), aux) with aux = (loss (k, B), entropy (k, B),
    logits (k, B, classes)).
    """
    k = r.shape[0]
    sigma = jax.nn.softplus(rho)
    delta = tanh_gaussian_delta(mu[None], sigma[None], r, eps)
    x_adv = threat.clip_to_box(x[None] + delta, *bounds)
    logits = logits_fn(x_adv.reshape((k * x.shape[0],) + x.shape[1:]))
    logits = logits.reshape((k, x.shape[0]) + logits.shape[1:])
    loss = jax.vmap(loss_fn, in_axes=(0, None))(logits, y)
    ent = entropy_per_dim(r, mu[None], sigma[None], eps, batch_axes=2)
    return jnp.mean(loss + lam * ent, axis=0), (loss, ent, logits)


def _check_exp(logits_fn, x, y, key, eps, steps, samples, lr, lam, adam_b1, adam_b2, init_sigma,
               bounds=DEFAULT_BOUNDS):
    v.check_batch(logits_fn, x, y, bounds=bounds)
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(steps, "steps")
    v.check_positive_int(samples, "samples")
    v.check_nonnegative(lr, "lr")
    v.check_nonnegative(lam, "lam")
    v.check_key(key, True, "the adversarial distribution is sampled")
    for name, b in (("adam_b1", adam_b1), ("adam_b2", adam_b2)):
        if v.is_concrete(b) and not 0.0 <= float(b) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    if v.is_concrete(init_sigma) and not float(init_sigma) > 0:
        raise ValueError(f"init_sigma must be > 0, got {init_sigma}")


def adt_exp_inner(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
                  steps: int = 7, samples: int = 5, lr: float = 0.3, lam: float = 0.01,
                  adam_b1: float = 0.0, adam_b2: float = 0.0,
                  init_sigma: float = DEFAULT_INIT_SIGMA, loss: Loss = "ce",
                  bounds: Bounds = DEFAULT_BOUNDS) -> TanhGaussian:
    """The inner maximization of ADT_EXP (Sec. 3.1, Eq. 9): per-example (mu, sigma) by Adam ascent.

    max_{mu, rho} E_r[ L(f(clip(x + eps tanh(mu + softplus(rho) r))), y) ] + lam * H(p) / d,

    `steps` (T) Adam steps of learning rate `lr`, each on the Eq. (10) gradient estimated with
    `samples` (k) fresh Monte-Carlo draws. Paper defaults for training: T = 7, k = 5, lr = 0.3,
    lam = 0.01. The whole batch is one program: (mu, rho) and Adam's moments are arrays of x's shape,
    Adam is elementwise, and the ascent is on the sum over examples of the per-example objectives,
    so each example's distribution depends on that example only (for a per-example `logits_fn`).
    Starts at mu = 0, sigma = init_sigma. `loss`: "ce" (the paper), "cw", "kl" (KL(f(x) || f(x'));
    ADT with the TRADES loss) or a callable (logits, y) -> per-example loss.
    Returns the learned TanhGaussian(mu, sigma) (sigma = softplus(rho)).
    """
    bounds = threat.check_bounds(bounds)
    _check_exp(logits_fn, x, y, key, eps, steps, samples, lr, lam, adam_b1, adam_b2, init_sigma,
               bounds)
    loss_fn = _resolve_loss(logits_fn, x, loss)
    dtype = x.dtype
    params = (jnp.zeros_like(x), jnp.full_like(x, softplus_inverse(init_sigma).astype(dtype)))
    opt = optax.adam(lr, b1=adam_b1, b2=adam_b2)

    def neg_total(p, r):
        j, _ = exp_mc_objective(logits_fn, loss_fn, x, y, p[0], p[1], r, eps=eps, lam=lam,
                                bounds=bounds)
        return -jnp.sum(j)

    def body(t, carry):
        p, opt_state = carry
        r = jax.random.normal(jax.random.fold_in(key, t), (samples,) + x.shape, dtype)
        g = jax.grad(neg_total)(p, r)
        updates, opt_state = opt.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    (mu, rho), _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
    return TanhGaussian(mu, jax.nn.softplus(rho))


def _keep_best(per_example_loss, success, candidates):
    """Index per example of the best of k candidates: a misclassifying one if any, then highest loss.

    per_example_loss, success: (k, B); candidates: (k, B, ...). Returns (B, ...).
    """
    score = jnp.where(success, jnp.inf, per_example_loss)
    idx = jnp.argmax(score, axis=0)
    return jnp.take_along_axis(candidates, idx.reshape((1, -1) + (1,) * (candidates.ndim - 2)),
                               axis=0)[0]


def adt_exp_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, eps: Scalar,
                   steps: int = 20, samples: int = 10, lr: float = 0.3, lam: float = 0.01,
                   adam_b1: float = 0.0, adam_b2: float = 0.0,
                   init_sigma: float = DEFAULT_INIT_SIGMA, loss: Loss = "ce",
                   select: str = "sample", final_samples: int = 10,
                   bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """The EXP attack (Sec. 5.3, Table 4): learn each example's adversarial distribution against a
    fixed model with `adt_exp_inner` (paper: T = 20 steps, k = 10 samples), then draw from it.

    select="sample" (default): one draw per example, x + eps tanh(mu + sigma r) in the box, so the
      accuracy under the attack is the accuracy on samples of the learned distribution, the quantity
      Table 4 reports for EXP. select="best": `final_samples` draws, keeping per example a
      misclassified one if any, else the one of highest loss (a stronger, best-of-n variant).
    Per-example, linf only; returns x_adv of x's shape and dtype, inside the eps-ball and the box
    `bounds` (default [0, 1]).
    """
    bounds = threat.check_bounds(bounds)
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    v.check_positive_int(final_samples, "final_samples")
    k_inner, k_draw = jax.random.split(v.check_key(key, True, "the distribution is sampled"))
    dist = adt_exp_inner(logits_fn, x, y, key=k_inner, eps=eps, steps=steps, samples=samples,
                         lr=lr, lam=lam, adam_b1=adam_b1, adam_b2=adam_b2, init_sigma=init_sigma,
                         loss=loss, bounds=bounds)
    if select == "sample":
        delta, _ = sample_tanh_gaussian(k_draw, dist, eps)
        return perturb(x, delta, bounds)
    loss_fn = _resolve_loss(logits_fn, x, loss)
    r = jax.random.normal(k_draw, (final_samples,) + x.shape, x.dtype)
    x_advs = threat.clip_to_box(x[None] + tanh_gaussian_delta(dist.mu[None], dist.sigma[None], r,
                                                              eps), *bounds).astype(x.dtype)
    logits = logits_fn(x_advs.reshape((-1,) + x.shape[1:]))
    logits = logits.reshape((final_samples, x.shape[0]) + logits.shape[1:])
    per_loss = jax.vmap(loss_fn, in_axes=(0, None))(logits, y)
    success = jnp.argmax(logits, axis=-1) != y[None]
    return _keep_best(per_loss, success, x_advs)


# ------------------------------------------------------------------------------------------------
# Amortized distributions: generator inputs, EXP-AM and IMP-AM (Secs. 3.2, 3.3)
# ------------------------------------------------------------------------------------------------

def _unit_linf(g: jax.Array) -> jax.Array:
    """g / max|g| per example (scale-free gradient features in [-1, 1])."""
    m = jnp.max(jnp.abs(g.reshape(g.shape[0], -1)), axis=1)
    return g / (m.reshape((-1,) + (1,) * (g.ndim - 1)) + _TINY)


def generator_inputs(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, eps: Scalar,
                     mode: str = "image_and_gradients", batch_size: Optional[int] = None,
                     bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """What the conditional generator g_phi sees, concatenated on the channel axis (constants).

    "image": x alone (g_phi(x) of the paper's Sec. 3.2).
    "image_and_raw_gradients": [x, g0, g1], the inputs of the authors' released code (adt_expam.py,
      "the two-step gradients as inputs to the generator"): g0 = grad_x of the batch-mean CE at x,
      g1 the same at x_fgsm = clip(x + eps sign(g0)) (clipped to `bounds`), unscaled. `batch_size`
      is the size of the batch the mean runs over (default x.shape[0]; the objectives pass the
      global batch, so that the features do not depend on the device count). Each g is the
      per-example gradient / batch size: orders of magnitude below the pixels, and shrinking as the
      model trains.
    "image_and_gradients": [x, g0 / max|g0|, g1 / max|g1|], each gradient rescaled to unit linf
      norm per example (our choice, so that the gradient channels are on the pixels' scale).
    Channels: C for "image", 3 C otherwise.
    """
    if mode not in GENERATOR_INPUTS:
        raise ValueError(f"generator_input must be one of {GENERATOR_INPUTS}, got {mode!r}")
    if mode == "image":
        return x
    n = x.shape[0] if batch_size is None else batch_size
    grad_ce = jax.grad(lambda xa: jnp.sum(losses_lib.cross_entropy(logits_fn(xa), y)) / n)
    g0 = grad_ce(x)
    x_fgsm = threat.clip_to_box(x + eps * jnp.sign(g0), *bounds).astype(x.dtype)
    g1 = grad_ce(x_fgsm)
    if mode == "image_and_gradients":
        g0, g1 = _unit_linf(g0), _unit_linf(g1)
    return jax.lax.stop_gradient(jnp.concatenate([x, g0.astype(x.dtype), g1.astype(x.dtype)],
                                                 axis=-1))


def generator_input_channels(image_channels: int, mode: str, z_channels: int = 0) -> int:
    """Input channel count of the generator for `generator_inputs(mode)` plus z channels."""
    if mode not in GENERATOR_INPUTS:
        raise ValueError(f"generator_input must be one of {GENERATOR_INPUTS}, got {mode!r}")
    return image_channels * (1 if mode == "image" else 3) + z_channels


def apply_train_mode(module: Any, variables: Any, *inputs: jax.Array) -> Tuple[jax.Array, Any]:
    """A Flax-style module in training mode (batch statistics); returns (output, new variables)."""
    mutable = [k for k in variables if k != "params"]
    out, updates = module.apply(variables, *inputs, train=True, mutable=mutable)
    return out, {**variables, **updates}


def split_mu_sigma(out: jax.Array, channels: int) -> TanhGaussian:
    """A 2C-channel generator output -> TanhGaussian(mu = out[..., :C], sigma = softplus(out[..., C:]))."""
    return TanhGaussian(out[..., :channels], jax.nn.softplus(out[..., channels:]))


def exp_am_objective(gen_params: Any, gen_rest: Any, *, generator: Any, logits_fn: LogitsFn,
                     loss_fn: losses_lib.LossFn, x: jax.Array, y: jax.Array, features: jax.Array,
                     key: jax.Array, eps: Scalar, lam: Scalar,
                     bounds: Bounds = DEFAULT_BOUNDS) -> Tuple[jax.Array, Any]:
    """ADT_EXP-AM's generator objective with k = 1 (Sec. 3.2): the batch mean of

        L(f(clip(x + eps tanh(mu + sigma r))), y) + lam * (-log p(delta)) / d,   (mu, sigma) = g_phi(x),

    returned negated (for a minimizer) with aux = dict(x_adv, loss, entropy, sigma, logits, state).
    `gen_rest`: the generator's non-parameter collections (batch_stats).
    """
    out, new_vars = apply_train_mode(generator, {"params": gen_params, **gen_rest}, features)
    dist = split_mu_sigma(out, x.shape[-1])
    delta, ent = sample_tanh_gaussian(key, dist, eps)
    x_adv = perturb(x, delta, bounds)
    logits = logits_fn(x_adv)
    loss = loss_fn(logits, y)
    j = jnp.mean(loss) + lam * jnp.mean(ent)
    state = {k: val for k, val in new_vars.items() if k != "params"}
    return -j, dict(x_adv=x_adv, loss=loss, entropy=ent, sigma=jnp.mean(dist.sigma),
                    logits=logits, state=state)


def uniform_noise_channels(key: jax.Array, x: jax.Array, z_channels: int) -> jax.Array:
    """z ~ U(-1, 1) with x's spatial shape and `z_channels` channels (per-pixel noise, the paper's
    IMP-AM prior, Sec. 3.3)."""
    return jax.random.uniform(key, x.shape[:-1] + (z_channels,), x.dtype, -1.0, 1.0)


def uniform_noise_vector(key: jax.Array, x: jax.Array, z_dim: int) -> jax.Array:
    """z ~ U(-1, 1)^{z_dim} per example, shape (batch, z_dim) (the released code's 64-d z)."""
    return jax.random.uniform(key, (x.shape[0], z_dim), x.dtype, -1.0, 1.0)


def imp_am_delta(gen_params: Any, gen_rest: Any, *, generator: Any, features: jax.Array,
                 z: jax.Array, eps: Scalar) -> Tuple[jax.Array, Any]:
    """IMP-AM's implicit sample delta = g_phi(z; x) = eps * tanh(G(...)), and the new state.

    z of x's rank (per-pixel noise channels) is concatenated to the features; z of shape
    (batch, z_dim) is passed to the generator as its second argument (it embeds it itself).
    """
    variables = {"params": gen_params, **gen_rest}
    if z.ndim == features.ndim:
        out, new_vars = apply_train_mode(generator, variables,
                                         jnp.concatenate([features, z], axis=-1))
    else:
        out, new_vars = apply_train_mode(generator, variables, features, z)
    return eps * jnp.tanh(out), {k: val for k, val in new_vars.items() if k != "params"}


def _encoder_features(delta, x, eps, encoder_input: str):
    if encoder_input not in ENCODER_INPUTS:
        raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {encoder_input!r}")
    return delta / eps if encoder_input == "delta" else jnp.concatenate([delta / eps, x], axis=-1)


def entropy_lower_bound(enc_params: Any, enc_rest: Any, *, encoder: Any, delta: jax.Array,
                        x: jax.Array, z: jax.Array, eps: Scalar,
                        encoder_input: str = "delta_and_image") -> Tuple[jax.Array, Any]:
    """Variational lower bound on the entropy of the implicit distribution, per latent dimension.

    For delta = g(z; x) with z ~ U(-1, 1)^{d_z} and any conditional density q_psi(z | delta, x),

        H(delta | x) >= I(z; delta | x) = H(z) - H(z | delta, x) >= H(z) + E[log q_psi(z | delta, x)]

    (Barber & Agakov, NeurIPS 2003; used as the generator-entropy bound of Dai et al., "Calibrating
    energy-based generative adversarial networks", ICLR 2017, the paper's ref. [12], and in the
    authors' released adt_impam.py with an encoder network). The first inequality is exact for
    discrete variables and the usual surrogate for continuous ones (it drops H(delta | z, x)).
    q_psi is a diagonal Gaussian whose mean and std (softplus, floored at MIN_Q_STD) come from the
    encoder applied to [delta / eps, x] (encoder_input "delta_and_image") or to delta / eps alone
    ("delta", the released code's encoder). z may be per-pixel channels or a (batch, d_z) vector;
    the encoder's output has z's shape with twice its last axis. Returns (per-example bound / d_z,
    shape (batch,), new state): log 2 + mean_j log q_psi(z_j | delta, x).
    """
    zc = z.shape[-1]
    out, new_vars = apply_train_mode(encoder, {"params": enc_params, **enc_rest},
                                     _encoder_features(delta, x, eps, encoder_input))
    mean, std = out[..., :zc], jax.nn.softplus(out[..., zc:]) + MIN_Q_STD
    log_q = -0.5 * jnp.square((z - mean) / std) - jnp.log(std) - 0.5 * LOG_2PI
    bound = math.log(2.0) + _per_example_mean(log_q)
    return bound, {k: val for k, val in new_vars.items() if k != "params"}


def entropy_term(bound: jax.Array, hinge: Optional[float] = None) -> jax.Array:
    """The entropy part of IMP-AM's generator objective from the per-example bound.

    hinge None (the paper's Eq. 5 with the bound for H): mean bound. hinge h (the released code,
    h = 0.9): -relu(-E log q - h) = -relu(log 2 - mean bound - h), on the batch mean: the bound is
    only pushed up while -E log q (per latent dimension) exceeds h.
    """
    m = jnp.mean(bound)
    if hinge is None:
        return m
    return -jax.nn.relu(math.log(2.0) - m - hinge)


def imp_am_objectives(gen_params: Any, enc_params: Any, gen_rest: Any, enc_rest: Any, *,
                      generator: Any, encoder: Any, logits_fn: LogitsFn,
                      loss_fn: losses_lib.LossFn, x: jax.Array, y: jax.Array,
                      features: jax.Array, key: jax.Array, eps: Scalar, lam: Scalar,
                      z_channels: int, noise: str = "pixels",
                      encoder_input: str = "delta_and_image",
                      entropy_hinge: Optional[float] = None,
                      bounds: Bounds = DEFAULT_BOUNDS) -> Tuple[jax.Array, Any]:
    """ADT_IMP-AM (Sec. 3.3), k = 1: the generator maximizes mean L(f(clip(x + g(z; x))), y) + lam *
    `entropy_term(bound, entropy_hinge)`, the encoder q_psi maximizes the bound (tightening it).
    noise "pixels": z ~ U(-1, 1) with `z_channels` per-pixel channels; "vector": z ~ U(-1, 1)^{
    z_channels} per example (the released code's 64-d z, which the generator embeds). Returns
    (generator objective negated, aux) with diagnostics; differentiate w.r.t. gen_params for the
    generator and use `encoder_objective` for the encoder.
    """
    if noise == "pixels":
        z = uniform_noise_channels(key, x, z_channels)
    elif noise == "vector":
        z = uniform_noise_vector(key, x, z_channels)
    else:
        raise ValueError(f'noise must be "pixels" or "vector", got {noise!r}')
    delta, gen_state = imp_am_delta(gen_params, gen_rest, generator=generator, features=features,
                                    z=z, eps=eps)
    x_adv = perturb(x, delta, bounds)
    logits = logits_fn(x_adv)
    loss = loss_fn(logits, y)
    bound, enc_state = entropy_lower_bound(jax.lax.stop_gradient(enc_params), enc_rest,
                                           encoder=encoder, delta=delta, x=x, z=z, eps=eps,
                                           encoder_input=encoder_input)
    j = jnp.mean(loss) + lam * entropy_term(bound, entropy_hinge)
    return -j, dict(x_adv=x_adv, delta=delta, z=z, loss=loss, entropy=bound, logits=logits,
                    generator_state=gen_state, encoder_state=enc_state)


def encoder_objective(enc_params: Any, enc_rest: Any, *, encoder: Any, delta: jax.Array,
                      x: jax.Array, z: jax.Array, eps: Scalar,
                      encoder_input: str = "delta_and_image",
                      entropy_hinge: Optional[float] = None) -> Tuple[jax.Array, Any]:
    """The encoder's loss (delta, x, z are constants): -mean bound, or with the released code's hinge
    the same hinged term as the generator's, relu(log 2 - mean bound - hinge). Returns (loss, new
    state)."""
    bound, state = entropy_lower_bound(enc_params, enc_rest, encoder=encoder,
                                       delta=jax.lax.stop_gradient(delta), x=x, z=z, eps=eps,
                                       encoder_input=encoder_input)
    return -entropy_term(bound, entropy_hinge), state


def split_variables(variables: Any) -> Tuple[Any, Any]:
    """Flax variables -> (params, the other collections)."""
    return variables["params"], {k: val for k, val in variables.items() if k != "params"}


def adam_step(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any,
              params: Any) -> Tuple[Any, Any]:
    """One optax update: (new params, new optimizer state)."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _check_am(logits_fn, x, y, key, eps, train_steps, lr, lam, generator_input,
              bounds=DEFAULT_BOUNDS):
    v.check_batch(logits_fn, x, y, bounds=bounds)
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(train_steps, "train_steps")
    v.check_nonnegative(lr, "lr")
    v.check_nonnegative(lam, "lam")
    v.check_key(key, True, "the generator is initialized and sampled")
    if generator_input not in GENERATOR_INPUTS:
        raise ValueError(f"generator_input must be one of {GENERATOR_INPUTS}, "
                         f"got {generator_input!r}")
    if x.ndim != 4:
        raise ValueError(f"the AM attacks need NHWC images, got x of shape {x.shape}")


def adt_exp_am_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array,
                      eps: Scalar, generator: Any, train_steps: int = 200, lr: float = 1e-3,
                      b1: float = 0.5, b2: float = 0.999, lam: float = 0.01,
                      generator_input: str = "image_and_gradients", loss: Loss = "ce",
                      bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """The EXP-AM attack (Sec. 5.3, Table 4): train a fresh conditional generator g_phi(x) -> (mu,
    sigma) against the fixed `logits_fn` on this batch, then return one sample per example.

    `generator`: a Flax-style module mapping the `generator_inputs` channels to 2 C channels (mu and
    rho; e.g. ResidualGenerator(out_channels=2 C)). `train_steps` Adam(lr, b1, b2) steps on
    `exp_am_objective` (k = 1), all in one program (fori_loop). Batch-level: the generator is trained
    on, and its batch norm normalizes over, the whole batch. The paper retrains the generator for
    each defended model on the training data; training on the evaluated batch is our protocol.
    """
    bounds = threat.check_bounds(bounds)
    _check_am(logits_fn, x, y, key, eps, train_steps, lr, lam, generator_input, bounds)
    loss_fn = _resolve_loss(logits_fn, x, loss)
    k_init, k_loop, k_final = jax.random.split(key, 3)
    features = generator_inputs(logits_fn, x, y, eps=eps, mode=generator_input, bounds=bounds)
    params, rest = split_variables(generator.init(k_init, features, train=False))
    opt = optax.adam(lr, b1=b1, b2=b2)

    def objective(p, r, k):
        return exp_am_objective(p, r, generator=generator, logits_fn=logits_fn, loss_fn=loss_fn,
                                x=x, y=y, features=features, key=k, eps=eps, lam=lam,
                                bounds=bounds)

    def body(t, carry):
        p, r, s = carry
        g, aux = jax.grad(objective, has_aux=True)(p, r, jax.random.fold_in(k_loop, t))
        p, s = adam_step(opt, g, s, p)
        return p, aux["state"], s

    params, rest, _ = jax.lax.fori_loop(0, train_steps, body, (params, rest, opt.init(params)))
    _, aux = objective(params, rest, k_final)
    return aux["x_adv"]


def adt_imp_am_attack(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array,
                      eps: Scalar, generator: Any, encoder: Any, z_channels: int = 1,
                      train_steps: int = 200, lr: float = 1e-3, b1: float = 0.5,
                      b2: float = 0.999, lam: float = 0.01,
                      generator_input: str = "image_and_gradients", loss: Loss = "ce",
                      bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """The IMP-AM attack (Sec. 5.3, Table 4): train a fresh implicit generator delta = g_phi(z; x)
    and its entropy encoder q_psi against the fixed `logits_fn` on this batch; return one sample.

    `generator` maps generator_inputs + z_channels channels to C channels; `encoder` maps 2 C
    channels ([delta / eps, x]) to 2 z_channels (mean, pre-softplus std of q(z | delta, x)).
    Batch-level like `adt_exp_am_attack`.
    """
    bounds = threat.check_bounds(bounds)
    _check_am(logits_fn, x, y, key, eps, train_steps, lr, lam, generator_input, bounds)
    v.check_positive_int(z_channels, "z_channels")
    loss_fn = _resolve_loss(logits_fn, x, loss)
    k_gen, k_enc, k_loop, k_final = jax.random.split(key, 4)
    features = generator_inputs(logits_fn, x, y, eps=eps, mode=generator_input, bounds=bounds)
    z0 = jnp.zeros(x.shape[:-1] + (z_channels,), x.dtype)
    gp, gr = split_variables(generator.init(k_gen, jnp.concatenate([features, z0], -1),
                                            train=False))
    ep, er = split_variables(encoder.init(k_enc, jnp.concatenate([x, x], -1), train=False))
    opt = optax.adam(lr, b1=b1, b2=b2)

    def gen_objective(p, gen_rest, enc_p, enc_rest, k):
        return imp_am_objectives(p, enc_p, gen_rest, enc_rest, generator=generator,
                                 encoder=encoder, logits_fn=logits_fn, loss_fn=loss_fn, x=x, y=y,
                                 features=features, key=k, eps=eps, lam=lam,
                                 z_channels=z_channels, bounds=bounds)

    def body(t, carry):
        (gp, gr, gs), (ep, er, es) = carry
        g, aux = jax.grad(gen_objective, has_aux=True)(gp, gr, ep, er,
                                                       jax.random.fold_in(k_loop, t))
        ge, er_new = jax.grad(encoder_objective, has_aux=True)(
            ep, er, encoder=encoder, delta=aux["delta"], x=x, z=aux["z"], eps=eps)
        gp, gs = adam_step(opt, g, gs, gp)
        ep, es = adam_step(opt, ge, es, ep)
        return (gp, aux["generator_state"], gs), (ep, er_new, es)

    carry = ((gp, gr, opt.init(gp)), (ep, er, opt.init(ep)))
    (gp, gr, _), (ep, er, _) = jax.lax.fori_loop(0, train_steps, body, carry)
    _, aux = gen_objective(gp, gr, ep, er, k_final)
    return aux["x_adv"]
