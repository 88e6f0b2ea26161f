"""ASCL, Adversarial Supervised Contrastive Learning (thesis Ch. 3, Sec. 3.4, Eqs 1-6, Table 1).

A batch of N clean images and their PGD examples gives 2N latents, stacked as
Z = [z_1 .. z_N, z_1^a .. z_N^a] (row r < N natural, row r >= N adversarial; `pair(r) = r +- N`).
z is the layer the model returns as `features` (the penultimate layer for ResNets, the last conv
block for the CNNs of `advjax.models.cnn`; no projection head, as in the main results).

    L = L_AT + l_SCL L_SCL + l_VAT L_VAT                               (Eq. 6)
    L_AT  = mean_i CE(h(x_i), y_i) + CE(h(x_i^a), y_i)                  (Eq. 4)
    L_VAT = mean_i KL(h(x_i) || h(x_i^a))                               (Eq. 5)
    L_SCL = mean_i (L_i + L_i^a)                                        (Eq. 3)

with, for an anchor row r, positives P_r, negatives N_r (boolean rows of 2N x 2N masks, Table 1) and
its counterpart pair(r) always kept (Eqs. 1-2, 9):

    L_r = -1/(|P_r| + 1) sum_{b in P_r u {pair(r)}} log( e^{s_rb/tau} / sum_{k in P_r u N_r u {pair(r)}} e^{s_rk/tau} )

s = cosine similarity. Selections (Table 1), with labels y, predictions p (of the natural image for
natural rows, of the adversarial image for adversarial rows) and same(r, b) = rows of the same image:
  * global:    P = y_b == y_r, not same;  N = y_b != y_r
  * hard_ls:   P as global;               N = y_b != y_r and p_b == y_r
  * soft_ls:   P as global;               N = y_b != y_r and p_b == p_r
  * leaked_ls: P = y_b == y_r, p_b == p_r, not same;  N as soft_ls
For an adversarial anchor p_r is its own prediction p_i^a (Table 1 writes the natural anchor; Eq. 2
swaps the roles of x_i and x_i^a). L_SCL = mean_i (L_i + L_i^a) = (1/N) sum_r L_r over the 2N anchors.

R-DIV (Ch. 3, Sec. 2): d_a^+ / d_a^- with d_a^{+/-} = mean over natural anchors i of the mean cosine
distance 1 - cos(z_i, z_b) over the Global positives (resp. negatives) b of i among the 2N latents;
anchors without positives are left out of d_a^+. Logged as the metric "r_div" on the training batch.
On a test set the thesis computes d_a^+ and d_a^- "on a mini-batch (128) and take[s] the average over
all mini-batches" (App. B): `batched_relative_divergence`.
Defaults: l_SCL = 1, l_VAT = 2, tau = 0.07 (Sec. 4.1).

Text vs released code (`variant`; the authors' `ASCL` repository, `ascl.py` and
`contrastive_losses_v2.py`, read for this):
  * "thesis" (default; the study cites the thesis): everything above.
  * "release": the code's defaults, which change four things:
    - L_SCL is the mean of L_r over the 2N anchors (`torch.mean` over 2N rows), half of Eq. 3's
      (1/N) sum_r L_r;
    - L_VAT is `KLDivLoss(reduction="mean")`, which averages over batch AND classes: KL / C per
      example (a tenth of the true KL on 10 classes);
    - the similarity is s_rb = -||z^_r - z^_b||_inf with z^ = z / ||z||_2 (`dist="linf"`,
      `hidden_norm=True`), not the cosine;
    - Leaked-LS keeps the counterpart pair(r) only when it has the anchor's prediction (the code's
      positives are "same label and same prediction", the counterpart included), and an anchor
      with no positive at all contributes 0 (the code divides by max(|P|, 1)).
    So with the same l_SCL = 1, l_VAT = 2 the release weights Eq. 3's L_SCL by 1/2 and the true KL by
    2/C (0.2 on 10 classes) where the thesis weights them by 1 and 2. `similarity` ("cosine" |
    "neg_linf") overrides the variant's similarity alone.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from advjax import attacks, losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c

SELECTIONS = ("global", "hard_ls", "soft_ls", "leaked_ls")
VARIANTS = ("thesis", "release")
SIMILARITIES = ("cosine", "neg_linf")


def _normalized(z):
    return z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-12)


def cosine_similarity_matrix(z: jax.Array) -> jax.Array:
    """s_rb = z_r . z_b / (||z_r|| ||z_b||), shape (2N, 2N)."""
    zn = _normalized(z)
    return zn @ zn.T


def neg_linf_similarity_matrix(z: jax.Array) -> jax.Array:
    """s_rb = -max_k |z^_rk - z^_bk| with z^ = z / ||z||_2 (the released code's default similarity)."""
    zn = _normalized(z)
    return -jnp.max(jnp.abs(zn[:, None, :] - zn[None, :, :]), axis=-1)


def similarity_matrix(z: jax.Array, similarity: str = "cosine") -> jax.Array:
    if similarity == "cosine":
        return cosine_similarity_matrix(z)
    if similarity == "neg_linf":
        return neg_linf_similarity_matrix(z)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def selection_masks(y2: jax.Array, p2: jax.Array, selection: str = "global", *,
                    counterpart_same_prediction: bool = False) -> Tuple[jax.Array, jax.Array]:
    """(positives, negatives, counterpart), boolean (2N, 2N) masks of Table 1 (Ch. 3) over the stacked
    natural + adversarial rows. `y2` = [y, y], `p2` = [argmax h(x), argmax h(x^a)], both (2N,).

    counterpart_same_prediction (the released code's Leaked-LS): with selection "leaked_ls" the
    counterpart is kept only where its prediction equals the anchor's."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    two_n = y2.shape[0]
    n = two_n // 2
    rows = jnp.arange(two_n)
    image = rows % n
    same_image = image[:, None] == image[None, :]
    counterpart = same_image & (rows[:, None] != rows[None, :])
    same_label = y2[:, None] == y2[None, :]
    same_pred = p2[:, None] == p2[None, :]
    positives = same_label & ~same_image
    if selection == "leaked_ls":
        positives = positives & same_pred
    negatives = ~same_label
    if selection == "hard_ls":
        negatives = negatives & (p2[None, :] == y2[:, None])
    elif selection in ("soft_ls", "leaked_ls"):
        negatives = negatives & same_pred
    if counterpart_same_prediction and selection == "leaked_ls":
        counterpart = counterpart & same_pred
    return positives, negatives, counterpart


def supervised_contrastive(sim: jax.Array, positives: jax.Array, negatives: jax.Array,
                           counterpart: jax.Array, tau: float = 0.07) -> jax.Array:
    """Per-anchor L_r of Ch. 3, Eqs. 1-2 (2N,), from the similarity matrix and the selection masks.

    Rows not selected are dropped from numerator and denominator (masked log-sum-exp). An anchor with
    nothing to pull (possible only with the release's Leaked-LS counterpart rule) gives 0, as the
    released code's division by max(|P|, 1)."""
    logits = sim / tau
    pulled = positives | counterpart
    kept = pulled | negatives
    any_kept = jnp.any(kept, axis=1, keepdims=True)
    # Rows with nothing kept get a finite dummy log-sum-exp (and no gradient) instead of -inf.
    masked = jnp.where(kept, logits, jnp.where(any_kept, -jnp.inf, 0.0))
    log_denominator = jax.nn.logsumexp(masked, axis=1)
    log_prob = logits - log_denominator[:, None]
    count = jnp.sum(pulled, axis=1)
    return -jnp.sum(jnp.where(pulled, log_prob, 0.0), axis=1) / jnp.maximum(count, 1)


def _check_variant(variant, similarity):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if similarity and similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES} or '', got {similarity!r}")
    return similarity or ("cosine" if variant == "thesis" else "neg_linf")


def scl_loss(z_nat: jax.Array, z_adv: jax.Array, y: jax.Array, pred_nat: jax.Array,
             pred_adv: jax.Array, *, selection: str = "global", tau: float = 0.07,
             variant: str = "thesis", similarity: str = "") -> jax.Array:
    """L_SCL; also the mean counts |P|, |N| per anchor.

    variant "thesis": mean_i (L_i + L_i^a) = (1/N) sum_r L_r (Ch. 3, Eq. 3), cosine similarity.
    variant "release": (1/2N) sum_r L_r, -linf similarity of normalized latents, and the release's
    Leaked-LS counterpart rule (module docstring). similarity: overrides the variant's."""
    similarity = _check_variant(variant, similarity)
    z = jnp.concatenate([z_nat, z_adv], axis=0)
    y2 = jnp.concatenate([y, y])
    p2 = jnp.concatenate([pred_nat, pred_adv])
    pos, neg, cp = selection_masks(y2, p2, selection,
                                   counterpart_same_prediction=variant == "release")
    per_anchor = supervised_contrastive(similarity_matrix(z, similarity), pos, neg, cp, tau)
    stats = {"n_pos": jnp.mean(jnp.sum(pos, axis=1).astype(jnp.float32)),
             "n_neg": jnp.mean(jnp.sum(neg, axis=1).astype(jnp.float32))}
    if variant == "release":
        return jnp.mean(per_anchor), stats
    return jnp.sum(per_anchor) / z_nat.shape[0], stats


def vat_loss(logits_nat: jax.Array, logits_adv: jax.Array, variant: str = "thesis") -> jax.Array:
    """L_VAT (Ch. 3, Eq. 5): mean_i KL(h(x_i) || h(x_i^a)); variant "release": divided by the number
    of classes C, as the code's KLDivLoss(reduction="mean") (mean over batch and classes)."""
    kl = jnp.mean(losses.kl_divergence(logits_nat, logits_adv))
    if variant == "release":
        return kl / logits_nat.shape[-1]
    if variant != "thesis":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return kl


def absolute_divergences(z_nat: jax.Array, z_adv: jax.Array,
                         y: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(d_a^+, d_a^-) of Ch. 3, Sec. 2: mean over natural anchors of the mean cosine distance to the
    Global positives / negatives among the 2N latents (anchors without positives are left out)."""
    n = z_nat.shape[0]
    z = jnp.concatenate([z_nat, z_adv], axis=0)
    y2 = jnp.concatenate([y, y])
    pos, neg, _ = selection_masks(y2, y2, "global")
    pos, neg = pos[:n], neg[:n]
    dist = 1.0 - cosine_similarity_matrix(z)[:n]

    def mean_over_set(mask):
        count = jnp.sum(mask, axis=1)
        per_anchor = jnp.sum(jnp.where(mask, dist, 0.0), axis=1) / jnp.maximum(count, 1)
        has = count > 0
        return jnp.sum(jnp.where(has, per_anchor, 0.0)) / jnp.maximum(jnp.sum(has), 1)

    return mean_over_set(pos), mean_over_set(neg)


def relative_divergence(z_nat: jax.Array, z_adv: jax.Array, y: jax.Array) -> jax.Array:
    """R-DIV d_a^+ / d_a^- (Ch. 3, Sec. 2) with Global positives / negatives of the natural anchors."""
    d_pos, d_neg = absolute_divergences(z_nat, z_adv, y)
    return d_pos / d_neg


def batched_relative_divergence(z_nat: jax.Array, z_adv: jax.Array, y: jax.Array,
                                batch_size: int = 128) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """R-DIV of a test set as the thesis computes it (Ch. 3, App. B): d_a^+ and d_a^- on consecutive
    mini-batches of `batch_size`, each averaged over the mini-batches (a last partial batch counts
    as one), then their ratio. Returns (r_div, d_a^+, d_a^-)."""
    n = z_nat.shape[0]
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    d_pos, d_neg = [], []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        dp, dn = absolute_divergences(z_nat[sl], z_adv[sl], y[sl])
        d_pos.append(dp)
        d_neg.append(dn)
    d_pos, d_neg = jnp.mean(jnp.stack(d_pos)), jnp.mean(jnp.stack(d_neg))
    return d_pos / d_neg, d_pos, d_neg


def ascl(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
         random_start: bool = True, selection: str = "global", tau: float = 0.07,
         lambda_scl: float = 1.0, lambda_vat: float = 2.0, variant: str = "thesis",
         similarity: str = "", attack_bn: str = "eval") -> c.Objective:
    """ASCL (Ch. 3, Sec. 3.4, Eq. 6): L_AT + l_SCL L_SCL + l_VAT L_VAT, x^a by PGD on CE.

    `selection` in SELECTIONS; "leaked_ls" is Leaked-ASCL. variant "thesis" | "release" (module
    docstring); similarity "" (the variant's) | "cosine" | "neg_linf". With l_SCL = l_VAT = 0 this is
    ADR-None (L_AT = Eq. 4 of ADR). Logs r_div, n_pos, n_neg."""
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    v.check_nonnegative(lambda_scl, "lambda_scl")
    v.check_nonnegative(lambda_vat, "lambda_vat")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    _check_variant(variant, similarity)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
        x_adv = jax.lax.stop_gradient(
            attacks.pgd(f, x, y, key=k_attack, eps=eps, step_size=step_size, steps=steps,
                        norm=norm, random_start=random_start))
        (logits_nat, z_nat), ms = c.train_forward(apply_fn, params, state["model"], x, k_nat,
                                                  return_features=True)
        (logits_adv, z_adv), ms = c.train_forward(apply_fn, params, ms, x_adv, k_adv,
                                                  return_features=True)
        l_at = c.mean_ce(logits_nat, y) + c.mean_ce(logits_adv, y)
        pred_nat = jnp.argmax(logits_nat, axis=-1)
        pred_adv = jnp.argmax(logits_adv, axis=-1)
        l_scl, counts = scl_loss(z_nat, z_adv, y, pred_nat, pred_adv, selection=selection, tau=tau,
                                 variant=variant, similarity=similarity)
        l_vat = vat_loss(logits_nat, logits_adv, variant)
        loss = l_at + lambda_scl * l_scl + lambda_vat * l_vat
        metrics = {"l_at": l_at, "l_scl": l_scl, "l_vat": l_vat, **counts,
                   "r_div": jax.lax.stop_gradient(relative_divergence(z_nat, z_adv, y)),
                   "acc": c.accuracy(logits_nat, y), "adv_acc": c.accuracy(logits_adv, y)}
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)
