"""Adversarial distributional training (Dong, Deng, Pang, Zhu, Su, NeurIPS 2020).

    min_theta 1/n sum_i max_{p(delta_i)} E_p[ L(f_theta(x_i + delta_i), y_i) ] + lam H(p(delta_i))   (Eq. 5)

solved as in Alg. 1: find (an approximation of) the inner maximizer, then a gradient step for theta on
the expected loss under it (Theorem 1, Eq. 7). Four objectives (factories `make(apply_fn, **hp)`):

  * `adt_exp` (Sec. 3.1): per-example tanh-Gaussians optimized by `attacks.adt.adt_exp_inner` (Adam,
    lr 0.3, T = 7 steps, k = 5 samples, lam = 0.01) on constant model variables; the classifier then
    takes a step on CE at one sample of each learned distribution (as the released code does).
  * `adt_exp_trades` (Sec. 5.4, Table 5): ADT_EXP with the TRADES loss in Eq. (5) ("We implement
    ADT by using the TRADES loss in Eq. (5)"): L(x + delta) = CE(f(x), y) + beta KL(f(x) ||
    f(x + delta)), so the inner problem is max_p beta E_p[KL] + lam H (CE(f(x)) does not depend on
    delta) and the classifier minimizes CE(f(x), y) + beta KL at a sample. No ADT-TRADES code is
    released.
  * `adt_exp_am` (Sec. 3.2): a conditional generator g_phi outputs (mu, sigma) per pixel; k = 1.
  * `adt_imp_am` (Sec. 3.3): an implicit generator delta = eps tanh(G(x, z)), z ~ U(-1, 1); the
    entropy by the variational lower bound of `attacks.adt.entropy_lower_bound` with an encoder
    q_psi(z | delta[, x]).

Paper and released code (dongyp13/Adversarial-Distributional-Training) differ for the amortized
methods; `variant` picks a consistent set, and every item also has its own argument that overrides
it. Default "code": the released scripts are what produced the paper's tables, and the text leaves
the details to an appendix that is not in the seed.

  | item | variant="code" (adt_expam.py / adt_impam.py) | variant="paper" (Secs. 3.2-3.3, 5) |
  |---|---|---|
  | generator input (`generator_input`) | [x, g0, g1]: raw gradients of the batch-mean CE at x and at the FGSM point ("image_and_raw_gradients") | g_phi(x): x only ("image") |
  | generator (`generator_arch`) | the released ResnetGenerator: blocks (2w, 2w, w), 1x1 shortcuts, N(0, 0.02) init, random head ("released") | uniform residual blocks of width w, zero head: the initial distribution is ADT_EXP's mu = 0, sigma = log 2 ("uniform") |
  | IMP-AM noise (`noise`, `z_dim`) | z ~ U(-1, 1)^64 through an MLP into one extra channel ("vector") | z ~ U(-1, 1) per pixel, `z_channels` channels ("pixels") |
  | IMP-AM entropy (`lam`, `entropy_hinge`) | lam = 1 on -relu(-E log q - 0.9) | lam = 0.01 on the bound (Sec. 5 (C): "lambda = 0.01") |
  | IMP-AM encoder (`encoder_input`) | q(z | delta): conv net + pooling on delta / eps ("delta") | q(z | delta, x) on [delta / eps, x] ("delta_and_image") |

"image_and_gradients" (the gradients rescaled to unit linf per example) is a third generator input,
our own: the raw batch-mean gradients are ~1e-4 of the pixels' scale, so through the shared first
convolution the released generator sees little more than x. The generator width is a capacity knob
(`generator_width`, default 64): the released 256 (blocks of 512 channels at full resolution) costs
~1000x the small study CNN's forward pass per example, more than this CPU can train.

The amortized methods train the generator jointly with the classifier, one step each per batch (the
released code's simultaneous update): with the classifier's variables held constant the generator
takes an Adam ascent step on the batch mean of L + lam * H / d (its gradients averaged over devices
with `cross_device_mean` before the update); the classifier takes its descent step on CE at the same
samples. The generator (and IMP-AM's encoder) variables and Adam states are the objective's method
state: {"generator": {"params", "batch_stats"}, "generator_opt": ..., ["encoder", "encoder_opt"]}.
The loop carries, averages and checkpoints it. Its shape needs the per-example input shape, so the AM
factories take `input_shape` (H, W, C) as a hyperparameter (`init_method_state(key)` has no batch).
The generators' batch norm normalizes over each device's batch (no cross-device statistics).

Logged metrics: "entropy" (mean per-dimension entropy estimate: Eq. 11 for EXP / EXP-AM, the
lower bound for IMP-AM), "sigma" (mean sigma; EXP and EXP-AM), "adv_acc" (accuracy on the samples).

Importing this module also registers the amortized attacks "adt_exp_am" and "adt_imp_am" (a fresh
`ResidualGenerator` trained against the evaluated model on each batch) in `advjax.attacks.ATTACKS`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from advjax import attacks, losses
from advjax.attacks import _validation as v
from advjax.attacks import adt as adt_attacks
from advjax.models.generator import (ResidualGenerator, VectorEncoder,
                                     released_generator_fields)
from advjax.objectives import _common as c
from advjax.objectives.trades import trades_loss
from advjax.threat import DEFAULT_BOUNDS, Bounds, Scalar


def _check_input_shape(input_shape) -> Tuple[int, int, int]:
    if input_shape is None:
        raise ValueError("input_shape (H, W, C) of one example is required, e.g. (28, 28, 1)")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape!r}")
    return shape


def trades_inner_loss(logits_nat: jax.Array,
                      beta: Scalar) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The delta-dependent part of the TRADES loss in ADT's Eq. (5), per example:
    (logits_adv, y) -> beta KL(f(x) || f(x + delta)), the natural logits held constant. ADT's inner
    problem with it is max_p beta E_p[KL] + lam H (the beta-free E_p[KL] + lam H would weigh the
    entropy beta times too much)."""
    nat = jax.lax.stop_gradient(logits_nat)
    return lambda logits, y: beta * losses.kl_divergence(nat, logits)


def _exp_objective(apply_fn: c.ApplyFn, *, eps, steps, samples, lr, lam, adam_b1, adam_b2,
                   init_sigma,
                   attack_bn, beta: Optional[float]) -> c.Objective:
    """ADT_EXP with CE (beta None) or the TRADES loss (beta set)."""
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(steps, "steps")
    v.check_positive_int(samples, "samples")
    v.check_nonnegative(lam, "lam")
    c.check_attack_bn(attack_bn)
    use_trades = beta is not None
    if use_trades:
        v.check_nonnegative(beta, "beta")

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_inner, k_draw, k_drop, k_nat, k_adv = jax.random.split(key, 5)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop)
        inner_loss = trades_inner_loss(f(x), beta) if use_trades else "ce"
        dist = jax.lax.stop_gradient(adt_attacks.adt_exp_inner(
            f, x, y, key=k_inner, eps=eps, steps=steps, samples=samples, lr=lr, lam=lam,
            adam_b1=adam_b1, adam_b2=adam_b2, init_sigma=init_sigma, loss=inner_loss))
        delta, entropy = adt_attacks.sample_tanh_gaussian(k_draw, dist, eps)
        x_adv = jax.lax.stop_gradient(adt_attacks.perturb(x, delta))
        metrics = {"entropy": jnp.mean(entropy), "sigma": jnp.mean(dist.sigma)}
        model_state = state["model"]
        if use_trades:
            logits_nat, model_state = c.train_forward(apply_fn, params, model_state, x, k_nat)
            logits_adv, model_state = c.train_forward(apply_fn, params, model_state, x_adv, k_adv)
            loss, ce, kl = trades_loss(logits_nat, logits_adv, y, beta)
            metrics.update(ce=ce, kl=kl, acc=c.accuracy(logits_nat, y))
        else:
            logits_adv, model_state = c.train_forward(apply_fn, params, model_state, x_adv, k_adv)
            loss = c.mean_ce(logits_adv, y)
        metrics["adv_acc"] = c.accuracy(logits_adv, y)
        return c.result(loss, metrics, model_state, state["method"])

    return c.Objective(objective)


def adt_exp(apply_fn: c.ApplyFn, *, eps: float, steps: int = 7, samples: int = 5, lr: float = 0.3,
            lam: float = 0.01, adam_b1: float = 0.0, adam_b2: float = 0.0,
            init_sigma: float = adt_attacks.DEFAULT_INIT_SIGMA,
            attack_bn: str = "eval") -> c.Objective:
    """ADT_EXP (Sec. 3.1): L = CE(f(clip(x + delta)), y), delta ~ the learned tanh-Gaussian of Eq. (9).

    See `advjax.attacks.adt.adt_exp_inner` for the inner optimization and its hyperparameters.
    """
    return _exp_objective(apply_fn, eps=eps, steps=steps, samples=samples, lr=lr, lam=lam,
                          adam_b1=adam_b1, adam_b2=adam_b2, init_sigma=init_sigma,
                          attack_bn=attack_bn, beta=None)


def adt_exp_trades(apply_fn: c.ApplyFn, *, eps: float, beta: float = 6.0, steps: int = 7, samples: int = 5,
                   lr: float = 0.3, lam: float = 0.01, adam_b1: float = 0.0, adam_b2: float = 0.0,
                   init_sigma: float = adt_attacks.DEFAULT_INIT_SIGMA,
                   attack_bn: str = "eval") -> c.Objective:
    """ADT_EXP with the TRADES loss in Eq. (5) (Sec. 5.4, Table 5; beta = 1 or 6 there):

    inner: max_p beta E_p[KL(f(x) || f(x + delta))] + lam H(p) / d   (`trades_inner_loss`);
    outer: L = CE(f(x), y) + beta * mean_i KL(f(x_i) || f(clip(x_i + delta_i))), delta_i ~ p_i.
    beta = 1 is ADT_EXP's inner problem with KL in place of CE.
    """
    return _exp_objective(apply_fn, eps=eps, steps=steps, samples=samples, lr=lr, lam=lam,
                          adam_b1=adam_b1, adam_b2=adam_b2, init_sigma=init_sigma,
                          attack_bn=attack_bn, beta=beta)


VARIANTS = ("code", "paper")
GENERATOR_ARCHS = ("released", "uniform")
NOISES = ("vector", "pixels")
_VARIANT_DEFAULTS = {
    "code": dict(generator_input="image_and_raw_gradients", generator_arch="released",
                 noise="vector", lam_imp=1.0, entropy_hinge=0.9, encoder_input="delta"),
    "paper": dict(generator_input="image", generator_arch="uniform", noise="pixels",
                  lam_imp=0.01, entropy_hinge=None, encoder_input="delta_and_image"),
}


def _variant_default(variant: str, name: str, value):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return _VARIANT_DEFAULTS[variant][name] if value is None else value


def _generator_optimizer(lr, b1, b2) -> optax.GradientTransformation:
    v.check_nonnegative(lr, "generator_lr")
    return optax.adam(lr, b1=b1, b2=b2)


def _init_module(module, key, shape: Sequence[int], channels: int, *extra):
    """Variables of a module for inputs of spatial shape shape[:-1] and `channels` channels."""
    x = jnp.zeros((1, *shape[:-1], channels), jnp.float32)
    return dict(module.init(key, x, *extra, train=False))


def _global_batch_size(n_local: int):
    """The batch the released code's gradient mean runs over: the global batch (the local one times
    the number of devices under the training loop's pmap; the local one outside it)."""
    try:
        return n_local * jax.lax.psum(1, "batch")
    except NameError:
        return n_local


def make_generator(out_channels: int, *, arch: str, width: int, blocks: int,
                   z_dim: int = 0) -> ResidualGenerator:
    """The AM generator: arch "released" (`released_generator_fields(width)`, three blocks as the
    release's resnet_3blocks; `blocks` must be 3) or "uniform" (`blocks` blocks of `width`, zero
    head)."""
    v.check_positive_int(width, "generator_width")
    v.check_positive_int(blocks, "generator_blocks")
    if arch == "released":
        if blocks != 3:
            raise ValueError(f'generator_arch="released" has 3 blocks (2w, 2w, w), got '
                             f'generator_blocks={blocks}; use generator_arch="uniform"')
        return ResidualGenerator(out_channels=out_channels, z_dim=z_dim,
                                 **released_generator_fields(width))
    if arch == "uniform":
        return ResidualGenerator(out_channels=out_channels, width=width, num_blocks=blocks,
                                 z_dim=z_dim)
    raise ValueError(f"generator_arch must be one of {GENERATOR_ARCHS}, got {arch!r}")


def adt_exp_am(apply_fn: c.ApplyFn, *, eps: float, input_shape: Sequence[int], lam: float = 0.01,
               variant: str = "code", generator_input: Optional[str] = None,
               generator_arch: Optional[str] = None, generator_lr: float = 2e-4,
               generator_b1: float = 0.5, generator_b2: float = 0.999, generator_width: int = 64,
               generator_blocks: int = 3, attack_bn: str = "eval") -> c.Objective:
    """ADT_EXP-AM (Sec. 3.2): (mu, sigma) = g_phi(features), delta = eps tanh(mu + sigma r), k = 1.

    Each step: the generator's Adam ascent step on mean CE + lam * H / d (Eq. 10 with k = 1, the
    classifier constant, in `attack_bn` mode), then the classifier's loss CE(f(x_adv), y) at the same
    samples. Generator optimizer as the released code (Adam lr 2e-4, b1 0.5, b2 0.999), lam = 0.01
    (paper and code). `variant` ("code" default, "paper") sets `generator_input` and
    `generator_arch` when they are None (module docstring's table); `generator_width` is the base
    width w (released code: 256; default 64).
    """
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(lam, "lam")
    c.check_attack_bn(attack_bn)
    generator_input = _variant_default(variant, "generator_input", generator_input)
    generator_arch = _variant_default(variant, "generator_arch", generator_arch)
    shape = _check_input_shape(input_shape)
    channels = shape[-1]
    in_channels = adt_attacks.generator_input_channels(channels, generator_input)
    generator = make_generator(2 * channels, arch=generator_arch, width=generator_width,
                               blocks=generator_blocks)
    opt = _generator_optimizer(generator_lr, generator_b1, generator_b2)

    @jax.jit  # one compiled program instead of op-by-op initialization
    def init_method_state(key):
        variables = _init_module(generator, key, shape, in_channels)
        return {"generator": variables, "generator_opt": opt.init(variables["params"])}

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_drop, k_gen, k_adv = jax.random.split(key, 3)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop)
        features = adt_attacks.generator_inputs(f, x, y, eps=eps, mode=generator_input,
                                                batch_size=_global_batch_size(x.shape[0]))
        method = state["method"]
        gen_params, gen_rest = adt_attacks.split_variables(method["generator"])
        grads, aux = jax.grad(adt_attacks.exp_am_objective, has_aux=True)(
            gen_params, gen_rest, generator=generator, logits_fn=f,
            loss_fn=losses.cross_entropy, x=x, y=y, features=features, key=k_gen, eps=eps,
            lam=lam)
        grads = c.cross_device_mean(grads)
        gen_params, gen_opt = adt_attacks.adam_step(opt, grads, method["generator_opt"], gen_params)
        new_method = {"generator": {"params": gen_params, **aux["state"]}, "generator_opt": gen_opt}

        x_adv = jax.lax.stop_gradient(aux["x_adv"])
        logits_adv, model_state = c.train_forward(apply_fn, params, state["model"], x_adv, k_adv)
        loss = c.mean_ce(logits_adv, y)
        metrics = {"adv_acc": c.accuracy(logits_adv, y), "entropy": jnp.mean(aux["entropy"]),
                   "sigma": aux["sigma"]}
        return c.result(loss, metrics, model_state, new_method)

    return c.Objective(objective, init_method_state=init_method_state)


def adt_imp_am(apply_fn: c.ApplyFn, *, eps: float, input_shape: Sequence[int],
               variant: str = "code", lam: Optional[float] = None, noise: Optional[str] = None,
               z_dim: int = 64, z_channels: int = 1, entropy_hinge: Optional[float] = None,
               encoder_input: Optional[str] = None, generator_input: Optional[str] = None,
               generator_arch: Optional[str] = None, generator_lr: float = 2e-4,
               generator_b1: float = 0.5, generator_b2: float = 0.999, generator_width: int = 64,
               generator_blocks: int = 3, encoder_lr: float = 2e-4, encoder_b1: float = 0.9,
               encoder_b2: float = 0.999, encoder_width: int = 32, encoder_blocks: int = 2,
               attack_bn: str = "eval") -> c.Objective:
    """ADT_IMP-AM (Sec. 3.3): delta = eps tanh(G(features, z)), z ~ U(-1, 1).

    The entropy is replaced by the variational lower bound H(z) + E log q_psi(z | delta[, x]) per
    latent dimension (`attacks.adt.entropy_lower_bound`; Barber & Agakov 2003, as in Dai et al.
    2017, the paper's ref. [12]); the encoder q_psi ascends the bound (or, with the released code's
    hinge, descends the hinged term) with its own Adam (encoder_lr 2e-4, b1 0.9, b2 0.999: the
    released code's torch defaults), the generator ascends mean CE + lam * `entropy_term`. Both
    updates use gradients averaged over devices.

    `variant` ("code" default, "paper") sets, when None (module docstring's table): `noise`
    ("vector": z of `z_dim` = 64 dims embedded by the generator, encoder `VectorEncoder` of base
    width `encoder_width`; "pixels": `z_channels` per-pixel channels, encoder a ResidualGenerator of
    `encoder_width` x `encoder_blocks`), `lam` (1 / 0.01), `entropy_hinge` (0.9 / none),
    `encoder_input` ("delta" / "delta_and_image"), `generator_input`, `generator_arch`.
    """
    v.check_nonnegative(eps, "eps")
    noise = _variant_default(variant, "noise", noise)
    lam = _variant_default(variant, "lam_imp", lam)
    entropy_hinge = entropy_hinge if entropy_hinge is not None else \
        _VARIANT_DEFAULTS[variant]["entropy_hinge"]
    encoder_input = _variant_default(variant, "encoder_input", encoder_input)
    generator_input = _variant_default(variant, "generator_input", generator_input)
    generator_arch = _variant_default(variant, "generator_arch", generator_arch)
    v.check_nonnegative(lam, "lam")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if encoder_input not in adt_attacks.ENCODER_INPUTS:
        raise ValueError(f"encoder_input must be one of {adt_attacks.ENCODER_INPUTS}, "
                         f"got {encoder_input!r}")
    c.check_attack_bn(attack_bn)
    shape = _check_input_shape(input_shape)
    channels = shape[-1]
    enc_channels = channels if encoder_input == "delta" else 2 * channels
    if noise == "vector":
        z_size = v.check_positive_int(z_dim, "z_dim")
        in_channels = adt_attacks.generator_input_channels(channels, generator_input)
        generator = make_generator(channels, arch=generator_arch, width=generator_width,
                                   blocks=generator_blocks, z_dim=z_size)
        encoder = VectorEncoder(out_features=2 * z_size, width=encoder_width)
        gen_extra = (jnp.zeros((1, z_size), jnp.float32),)
    else:
        z_size = v.check_positive_int(z_channels, "z_channels")
        in_channels = adt_attacks.generator_input_channels(channels, generator_input, z_size)
        generator = make_generator(channels, arch=generator_arch, width=generator_width,
                                   blocks=generator_blocks)
        encoder = ResidualGenerator(out_channels=2 * z_size, width=encoder_width,
                                    num_blocks=encoder_blocks)
        gen_extra = ()
    gen_opt_t = _generator_optimizer(generator_lr, generator_b1, generator_b2)
    v.check_nonnegative(encoder_lr, "encoder_lr")
    enc_opt_t = optax.adam(encoder_lr, b1=encoder_b1, b2=encoder_b2)

    @jax.jit
    def init_method_state(key):
        k_gen, k_enc = jax.random.split(key)
        gen_vars = _init_module(generator, k_gen, shape, in_channels, *gen_extra)
        enc_vars = _init_module(encoder, k_enc, shape, enc_channels)
        return {"generator": gen_vars, "generator_opt": gen_opt_t.init(gen_vars["params"]),
                "encoder": enc_vars, "encoder_opt": enc_opt_t.init(enc_vars["params"])}

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_drop, k_gen, k_adv = jax.random.split(key, 3)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop)
        features = adt_attacks.generator_inputs(f, x, y, eps=eps, mode=generator_input,
                                                batch_size=_global_batch_size(x.shape[0]))
        method = state["method"]
        gen_params, gen_rest = adt_attacks.split_variables(method["generator"])
        enc_params, enc_rest = adt_attacks.split_variables(method["encoder"])
        gen_grads, aux = jax.grad(adt_attacks.imp_am_objectives, has_aux=True)(
            gen_params, enc_params, gen_rest, enc_rest, generator=generator, encoder=encoder,
            logits_fn=f, loss_fn=losses.cross_entropy, x=x, y=y, features=features, key=k_gen,
            eps=eps, lam=lam, z_channels=z_size, noise=noise, encoder_input=encoder_input,
            entropy_hinge=entropy_hinge)
        enc_grads, enc_state = jax.grad(adt_attacks.encoder_objective, has_aux=True)(
            enc_params, enc_rest, encoder=encoder, delta=aux["delta"], x=x, z=aux["z"], eps=eps,
            encoder_input=encoder_input, entropy_hinge=entropy_hinge)
        gen_grads, enc_grads = c.cross_device_mean((gen_grads, enc_grads))
        gen_params, gen_opt = adt_attacks.adam_step(gen_opt_t, gen_grads, method["generator_opt"],
                                                    gen_params)
        enc_params, enc_opt = adt_attacks.adam_step(enc_opt_t, enc_grads, method["encoder_opt"],
                                                    enc_params)
        new_method = {"generator": {"params": gen_params, **aux["generator_state"]},
                      "generator_opt": gen_opt,
                      "encoder": {"params": enc_params, **enc_state}, "encoder_opt": enc_opt}

        x_adv = jax.lax.stop_gradient(aux["x_adv"])
        logits_adv, model_state = c.train_forward(apply_fn, params, state["model"], x_adv, k_adv)
        loss = c.mean_ce(logits_adv, y)
        metrics = {"adv_acc": c.accuracy(logits_adv, y), "entropy": jnp.mean(aux["entropy"]),
                   "delta_abs": jnp.mean(jnp.abs(aux["delta"]))}
        return c.result(loss, metrics, model_state, new_method)

    return c.Objective(objective, init_method_state=init_method_state)


# ------------------------------------------------------------------------------------------------
# The amortized attacks with the default generator (registered as "adt_exp_am", "adt_imp_am")
# ------------------------------------------------------------------------------------------------

def exp_am_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, *,
                  key: jax.Array, eps: Scalar, train_steps: int = 200, lr: float = 1e-3,
                  lam: float = 0.01, generator_width: int = 32, generator_blocks: int = 2,
                  generator_input: str = "image_and_gradients",
                  bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """The EXP-AM attack with a fresh `ResidualGenerator` (see `attacks.adt.adt_exp_am_attack`)."""
    generator = ResidualGenerator(out_channels=2 * x.shape[-1], width=generator_width,
                                  num_blocks=generator_blocks)
    return adt_attacks.adt_exp_am_attack(logits_fn, x, y, key=key, eps=eps, generator=generator,
                                         train_steps=train_steps, lr=lr, lam=lam,
                                         generator_input=generator_input, bounds=bounds)


def imp_am_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, *,
                  key: jax.Array, eps: Scalar, train_steps: int = 200, lr: float = 1e-3,
                  lam: float = 0.01, z_channels: int = 1, generator_width: int = 32,
                  generator_blocks: int = 2, encoder_width: int = 16, encoder_blocks: int = 1,
                  generator_input: str = "image_and_gradients",
                  bounds: Bounds = DEFAULT_BOUNDS) -> jax.Array:
    """The IMP-AM attack with fresh `ResidualGenerator`s (see `attacks.adt.adt_imp_am_attack`)."""
    generator = ResidualGenerator(out_channels=x.shape[-1], width=generator_width,
                                  num_blocks=generator_blocks)
    encoder = ResidualGenerator(out_channels=2 * z_channels, width=encoder_width,
                                num_blocks=encoder_blocks)
    return adt_attacks.adt_imp_am_attack(logits_fn, x, y, key=key, eps=eps, generator=generator,
                                         encoder=encoder, z_channels=z_channels,
                                         train_steps=train_steps, lr=lr, lam=lam,
                                         generator_input=generator_input, bounds=bounds)


attacks.register_attack("adt_exp_am", exp_am_attack)
attacks.register_attack("adt_imp_am", imp_am_attack)
