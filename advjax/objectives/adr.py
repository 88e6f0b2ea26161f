"""ADR, Adversarial Divergence Reduction (thesis Ch. 3, Sec. 3.1-3.5, Eqs 1-7).

The network h = g o f is split at the intermediate layer the model returns as `features`
(`return_features=True`: the flattened output of the last convolutional block for the CNNs, the pooled
penultimate representation for the ResNets). With x_a the adversarial example of x (Eq. 7):

    L = L_c + l_lc L_lc + l_gb L_gb + l_conf L_conf + l_smt L_smt

  * L_c (Eq. 4): CE(h(x_a), y) + CE(h(x), y), for both adversaries: Sec. 4.2 (MNIST) defines "two
    variants ADR-ADV and ADR-TRADES wherein the adversary A is set to be ADV and TRADES
    respectively", and Sec. 3.4 trains the adversary's examples "with the label supervision loss in
    Eq. (4)". ADR-ADV: x_a by PGD on CE; ADR-TRADES: x_a by the TRADES KL attack.
  * L_lc, local compactness (Eq. 1): E ||f(x) - f(x_a)||_p.
  * L_gb, global compactness (Eqs. 2-3): E_{i,j} w_ij ||f(x_i) - f(x_j)||_p with
    w_ij = (alpha - 1[y_i != y_j]) / alpha (1 for a same-class pair, (alpha - 1) / alpha < 0 otherwise).
  * L_conf (Eq. 5): H(h(x_a)) + H(h(x)), the prediction entropies (clustering assumption).
  * L_smt (Eq. 6): KL(h(x) || h(x_a)).

Choices where the thesis leaves room (all configurable):
  * distance: `distance="mean_abs"` (default) is the authors' code, mean_k |u_k - v_k| = ||u - v||_1 / d;
    "l1" and "l2" are the plain norms of Eq. 1 (p is not fixed in the text).
  * detaching: the code detaches the natural latents, sg(f(x)) - f(x_a), in both compactness terms
    (`detach_natural=True`, default): the adversarial latents are pulled towards the clean ones.
  * global pairs: `global_pairs="nat_adv"` (default, the code) uses pairs (sg f(x_i), f(x_j^a));
    "nat_nat" is Eq. 3 read literally (pairs of natural latents, none detached). The mean runs over all
    B^2 ordered pairs, i = j included (a minibatch estimate of the expectation over pairs, Sec. 3.2).
  * ADR-TRADES adversary: the TRADES attack (PGD on KL(h(x) || h(x')) from x + 0.001 N(0, I)); the
    chapter writes KL(h(x') || h(x)) when citing TRADES (Sec. 3.4) but describes Zhang et al.'s attack.
  * L_smt's natural distribution: Eq. 6 is a plain KL, differentiated through both h(x) and h(x_a)
    (`smt_stop_gradient=False`, default); both released codes (TF `compact_loss.smooth_loss`,
    PyTorch `compact_loss_pt.smooth_loss`) stop the gradient through p_nat: `smt_stop_gradient=True`.

Text vs released code (`variant` of `adr_trades`):
  * "thesis" (default): L_c of Eq. 4 with the TRADES adversary, as the thesis defines ADR-TRADES;
    the study cites the thesis, so its definition is the default.
  * "release": the PyTorch release (`ADR_pt/adr.py`, `adr_trades`): L_c = CE(h(x), y) +
    beta KL(h(x) || h(x_a)), no CE(h(x_a), y), with the release's default beta = 1 (`trades_beta`).
    (The TF release, the reference implementation, has no ADR-TRADES training loss: its TRADES
    attack feeds the same 0.5 CE(x) + 0.5 CE(x_a) loss as ADR-ADV.)
ADR-None (Sec. 4.2, Table 1: "our base model without any additional components") is `adr_adv` with
l_lc = l_gb = l_conf = l_smt = 0, i.e. L_c of Eq. 4 alone, CE(h(x_a), y) + CE(h(x), y)
(configs/adr_none_fmnist.py): the matched baseline of ADR-ADV and of ASCL.
Other released-code details not exposed: the TF code weights L_c 0.5 / 0.5, its L_conf is H(h(x_a))
only, and both releases add a "global smoothness" term the thesis does not have.
Defaults: the MNIST weights of the supplement (Table 1): l_lc = l_gb = l_smt = 1, l_conf = 0; alpha = 0.99.
Forward passes follow `at.pgd_at`: x first, then x_a, each in training mode with its own dropout key, so
that with all weights 0 the ADR-ADV loss is exactly 2 x the PGD-AT loss with mix = 0.5.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from advjax import attacks, losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.objectives import trades
from advjax.threat import Scalar

DISTANCES = ("mean_abs", "l1", "l2")
GLOBAL_PAIRS = ("nat_adv", "nat_nat")
TRADES_VARIANTS = ("thesis", "release")
RELEASE_BETA = 1.0  # ADR_pt: trades_beta's default


def latent_distance(u: jax.Array, v: jax.Array, distance: str = "mean_abs") -> jax.Array:
    """||u - v|| over the last axis (Ch. 3, Eqs. 1 and 3): mean |.| (code), l1 or l2; broadcasts."""
    diff = u - v
    if distance == "mean_abs":
        return jnp.mean(jnp.abs(diff), axis=-1)
    if distance == "l1":
        return jnp.sum(jnp.abs(diff), axis=-1)
    if distance == "l2":
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def global_weights(y: jax.Array, alpha: float = 0.99) -> jax.Array:
    """w_ij = (alpha - 1[y_i != y_j]) / alpha (Ch. 3, Eq. 2), shape (B, B)."""
    differ = (y[:, None] != y[None, :]).astype(jnp.float32)
    return (alpha - differ) / alpha


def local_compactness(feat_nat: jax.Array, feat_adv: jax.Array, distance: str = "mean_abs",
                      detach_natural: bool = True) -> jax.Array:
    """L_lc (Ch. 3, Eq. 1): mean_i ||f(x_i) - f(x_i^a)||."""
    nat = jax.lax.stop_gradient(feat_nat) if detach_natural else feat_nat
    return jnp.mean(latent_distance(nat, feat_adv, distance))


def global_compactness(feat_a: jax.Array, feat_b: jax.Array, y: jax.Array, *, alpha: Scalar = 0.99,
                       distance: str = "mean_abs") -> jax.Array:
    """L_gb (Ch. 3, Eqs. 2-3): mean_{i,j} w_ij ||a_i - b_j||, all B^2 pairs as one (B, B) matrix."""
    pair = latent_distance(feat_a[:, None, :], feat_b[None, :, :], distance)
    return jnp.mean(global_weights(y, alpha) * pair)


def prediction_entropy(logits: jax.Array) -> jax.Array:
    """Per-example entropy -h(x)^T log h(x) of softmax(logits) (Ch. 3, Eq. 5)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def adr_regularizers(feat_nat: jax.Array, feat_adv: jax.Array, logits_nat: jax.Array,
                     logits_adv: jax.Array, y: jax.Array, *, alpha: Scalar = 0.99,
                     distance: str = "mean_abs", detach_natural: bool = True,
                     global_pairs: str = "nat_adv",
                     smt_stop_gradient: bool = False) -> Dict[str, jax.Array]:
    """The four ADR terms of Ch. 3, Eq. 7, as a dict {lc, gb, conf, smt} of scalars.

    smt_stop_gradient: L_smt = KL(sg(h(x)) || h(x_a)) as the released code (no gradient through
    h(x))."""
    if global_pairs not in GLOBAL_PAIRS:
        raise ValueError(f"global_pairs must be one of {GLOBAL_PAIRS}, got {global_pairs!r}")
    if global_pairs == "nat_adv":
        nat = jax.lax.stop_gradient(feat_nat) if detach_natural else feat_nat
        gb = global_compactness(nat, feat_adv, y, alpha=alpha, distance=distance)
    else:
        gb = global_compactness(feat_nat, feat_nat, y, alpha=alpha, distance=distance)
    return {
        "lc": local_compactness(feat_nat, feat_adv, distance, detach_natural),
        "gb": gb,
        "conf": jnp.mean(prediction_entropy(logits_adv) + prediction_entropy(logits_nat)),
        "smt": jnp.mean(losses.kl_divergence(
            jax.lax.stop_gradient(logits_nat) if smt_stop_gradient else logits_nat, logits_adv)),
    }


def eq4_loss(logits_nat: jax.Array, logits_adv: jax.Array,
             y: jax.Array) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """L_c of Ch. 3, Eq. 4: mean CE(h(x_a), y) + mean CE(h(x), y); returns (L_c, metrics)."""
    ce_nat, ce_adv = c.mean_ce(logits_nat, y), c.mean_ce(logits_adv, y)
    return ce_nat + ce_adv, {"ce_nat": ce_nat, "ce_adv": ce_adv}


def adr_trades_supervised_loss(logits_nat: jax.Array, logits_adv: jax.Array, y: jax.Array, *,
                               variant: str = "thesis", beta: Optional[float] = None
                               ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """L_c of ADR-TRADES: "thesis" = Eq. 4 (`eq4_loss`); "release" = CE(h(x), y) +
    beta KL(h(x) || h(x_a)) (the PyTorch release, beta = 1 unless given). Returns (L_c, metrics)."""
    if variant == "thesis":
        if beta is not None:
            raise ValueError("beta: ADR-TRADES' thesis variant has no beta (L_c is Eq. 4); "
                             "it applies to variant='release' only")
        return eq4_loss(logits_nat, logits_adv, y)
    if variant != "release":
        raise ValueError(f"variant must be one of {TRADES_VARIANTS}, got {variant!r}")
    total, ce, kl = trades.trades_loss(logits_nat, logits_adv, y,
                                       RELEASE_BETA if beta is None else beta)
    return total, {"ce": ce, "kl": kl}


def _check(eps, step_size, steps, norm, alpha, distance, attack_bn, weights):
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    for name, w in weights.items():
        v.check_nonnegative(w, name)


def _make(apply_fn, craft, supervised_loss, *, weights, alpha, distance, detach_natural,
          global_pairs, smt_stop_gradient, attack_bn):
    """The Eq. 7 objective around an adversary `craft(f, x, y, key)` and an L_c `supervised_loss`."""

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
        x_adv = jax.lax.stop_gradient(craft(f, x, y, k_attack))
        (logits_nat, feat_nat), ms = c.train_forward(apply_fn, params, state["model"], x, k_nat,
                                                     return_features=True)
        (logits_adv, feat_adv), ms = c.train_forward(apply_fn, params, ms, x_adv, k_adv,
                                                     return_features=True)
        l_c, sup_metrics = supervised_loss(logits_nat, logits_adv, y)
        reg = adr_regularizers(feat_nat, feat_adv, logits_nat, logits_adv, y, alpha=alpha,
                               distance=distance, detach_natural=detach_natural,
                               global_pairs=global_pairs, smt_stop_gradient=smt_stop_gradient)
        loss = l_c
        for name, w in weights.items():
            if w:
                loss = loss + w * reg[name]
        metrics = {"l_c": l_c, **sup_metrics, **{f"l_{k}": val for k, val in reg.items()},
                   "acc": c.accuracy(logits_nat, y), "adv_acc": c.accuracy(logits_adv, y)}
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)


def adr_adv(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
            random_start: bool = True, lambda_lc: float = 1.0, lambda_gb: float = 1.0,
            lambda_conf: float = 0.0, lambda_smt: float = 1.0, alpha: float = 0.99,
            distance: str = "mean_abs", detach_natural: bool = True,
            global_pairs: str = "nat_adv", smt_stop_gradient: bool = False,
            attack_bn: str = "eval") -> c.Objective:
    """ADR-ADV (Ch. 3, Eq. 7 with L_c of Eq. 4): x_a by PGD on CE (Sec. 3.4, Madry et al.).

    L = CE(h(x_a), y) + CE(h(x), y) + l_lc L_lc + l_gb L_gb + l_conf L_conf + l_smt L_smt.
    All four weights 0 is ADR-None (Sec. 4.2, Table 1), the thesis' base model.
    """
    weights = {"lc": lambda_lc, "gb": lambda_gb, "conf": lambda_conf, "smt": lambda_smt}
    _check(eps, step_size, steps, norm, alpha, distance, attack_bn, weights)

    def craft(f, x, y, k):
        return attacks.pgd(f, x, y, key=k, eps=eps, step_size=step_size, steps=steps, norm=norm,
                           random_start=random_start)

    return _make(apply_fn, craft, eq4_loss, weights=weights, alpha=alpha, distance=distance,
                 detach_natural=detach_natural, global_pairs=global_pairs,
                 smt_stop_gradient=smt_stop_gradient, attack_bn=attack_bn)


def adr_trades(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int,
               variant: str = "thesis", beta: Optional[float] = None, norm: str = "linf",
               lambda_lc: float = 1.0, lambda_gb: float = 1.0, lambda_conf: float = 0.0,
               lambda_smt: float = 1.0, alpha: float = 0.99, distance: str = "mean_abs",
               detach_natural: bool = True, global_pairs: str = "nat_adv",
               smt_stop_gradient: bool = False, attack_bn: str = "eval") -> c.Objective:
    """ADR-TRADES (Ch. 3, Secs. 3.4, 4.2 and Eq. 7): x_a by the TRADES adversary
    (`trades.trades_attack`).

    variant "thesis" (default): L = CE(h(x_a), y) + CE(h(x), y) (Eq. 4) + the ADR terms; the TRADES
    baseline it improves on is `trades` (beta = 1 for MNIST-type data, Zhang et al.).
    variant "release" (the PyTorch release): L = CE(h(x), y) + beta KL(h(x) || h(x_a)) + the ADR
    terms, beta = 1 unless given; with all ADR weights 0 this is TRADES. `beta` is an error with
    the thesis variant (it would be silently unused)."""
    weights = {"lc": lambda_lc, "gb": lambda_gb, "conf": lambda_conf, "smt": lambda_smt}
    _check(eps, step_size, steps, norm, alpha, distance, attack_bn, weights)
    if variant not in TRADES_VARIANTS:
        raise ValueError(f"variant must be one of {TRADES_VARIANTS}, got {variant!r}")
    if beta is not None:
        if variant == "thesis":
            raise ValueError("beta: ADR-TRADES' thesis variant has no beta (L_c is Eq. 4); "
                             "it applies to variant='release' only")
        v.check_nonnegative(beta, "beta")

    def craft(f, x, y, k):
        return trades.trades_attack(f, x, y, k, eps=eps, step_size=step_size, steps=steps,
                                    norm=norm)

    def supervised(logits_nat, logits_adv, y):
        return adr_trades_supervised_loss(logits_nat, logits_adv, y, variant=variant, beta=beta)

    return _make(apply_fn, craft, supervised, weights=weights, alpha=alpha, distance=distance,
                 detach_natural=detach_natural, global_pairs=global_pairs,
                 smt_stop_gradient=smt_stop_gradient, attack_bn=attack_bn)
