"""CCE, Crossing Collaborative Ensemble (thesis Ch. 4, Sec. 4.3, Eq. 5), and the transferability metric
T of Table 6.

The model is an `advjax.models.ensemble.Ensemble` (N members with stacked parameters). For each member
n, PGD on member n alone gives x_a^n (all N attacks run as one vectorized PGD over an (N x B) batch:
member n only sees its own copy, so this is exactly N independent PGD runs). Member n's loss is

    L^n = CE(f^n(x), y) + CE(f^n(x_a^n), y)
          + 1/(N-1) sum_{i != n} [ l_pm sg(f^n_y(x_a^i)) CE(f^n(x_a^i), y)
                                   - l_dm (1 - sg(f^n_y(x_a^i))) H(f^n(x_a^i)) ]

with sg = stop-gradient, f^n_y the probability member n gives the true class, H the prediction
entropy; batch means throughout. The objective is sum_n L^n: member n's parameters only enter L^n (the
x_a^i are constants), so each member receives exactly the gradient of its own L^n.
Modes (`mode`): CCE-RM ("robustness mode") l_pm = l_dm = 1; CCE-DM ("detection mode") l_pm = 0,
l_dm = 5; CCE-Base l_pm = l_dm = 0 (= independent PGD-AT of every member with the loss CE(x) + CE(x_a),
i.e. 2 x `pgd_at` with mix = 0.5). CCE-Base is NOT the thesis' ensemble baseline ADV-EN, which attacks
the whole ensemble (`advjax.objectives.ensemble_at.adv_en`).

Text vs released code (`variant`; the authors' `Crossing-Collaborative-Ensemble`, `lib_method.py`
`adv_CCE`, read for this):
  * "thesis" (default; the study cites the thesis): Eq. 5 as above.
  * "release": the crossing terms are computed on member PROBABILITIES p = f^n(x_a^i) fed where
    the code's softmax cross-entropy expects logits (its Keras members output softmax), and the
    soft indicator is not stop-gradiented:
        cPO term: p_y CE(softmax(p), y)          DO term: -(1 - p_y) H_x(p, softmax(p))
    with H_x(p, q) = -sum_k p_k log q_k (gradient through both arguments, as TF's
    softmax_cross_entropy_with_logits_v2). softmax of a probability vector is close to uniform, so
    both terms are much gentler than the text's. The direct terms CE(f^n(x)) + CE(f^n(x_a^n)) are
    the same in both. (The thesis says its implementation stop-gradients the soft indicator; the
    released code does not.)
Batch norm: the clean batch and the N adversarial batches go through the members in two training-mode
passes (x, then all x_a^i stacked), so a member's statistics in the second pass cover all N batches.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from advjax import attacks, losses, threat
from advjax.attacks import _validation as v
from advjax.objectives import _common as c
from advjax.threat import Scalar

MODES = {"rm": (1.0, 1.0), "dm": (0.0, 5.0), "base": (0.0, 0.0)}
VARIANTS = ("thesis", "release")


def ensemble_log_probs(member_logits: jax.Array) -> jax.Array:
    """log((1/N) sum_n softmax(z_n)) from member logits (N, B, C): the ensemble output of Ch. 4 (the
    same function as `advjax.models.ensemble.ensemble_log_probs`; objectives do not import models)."""
    n = member_logits.shape[0]
    return jax.nn.logsumexp(jax.nn.log_softmax(member_logits, axis=-1), axis=0) - jnp.log(n)


def num_members(params: Any) -> int:
    """N, the leading (member) axis of the ensemble's stacked parameters."""
    return jax.tree_util.tree_leaves(params)[0].shape[0]


def _entropy(logits):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _release_crossing_terms(logits_cross, y):
    """(p_y, CE(softmax(p), y), H_x(p, softmax(p))) with p = softmax(logits), the released code's
    crossing quantities (module docstring), all differentiable; shapes (N, N, B)."""
    p = jax.nn.softmax(logits_cross, axis=-1)
    log_q = jax.nn.log_softmax(p, axis=-1)
    p_true = jnp.take_along_axis(p, y[None, None, :, None], axis=-1)[..., 0]
    ce = -jnp.take_along_axis(log_q, y[None, None, :, None], axis=-1)[..., 0]
    cross_entropy_pq = -jnp.sum(p * log_q, axis=-1)
    return p_true, ce, cross_entropy_pq


def cce_member_losses(logits_nat: jax.Array, logits_cross: jax.Array, y: jax.Array, *,
                      lambda_pm: Scalar = 1.0, lambda_dm: Scalar = 1.0,
                      variant: str = "thesis") -> jax.Array:
    """Per-member losses L^n (Ch. 4, Sec. 4.3, Eq. 5), shape (N,); variant "release": the released
    code's crossing terms (module docstring).

    logits_nat: (N, B, C), member n on x. logits_cross: (N, N, B, C), [n, i] = member n on x_a^i."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n_members = logits_nat.shape[0]
    ce_nat = jax.vmap(losses.cross_entropy, in_axes=(0, None))(logits_nat, y).mean(-1)
    ce_cross = jax.vmap(jax.vmap(losses.cross_entropy, in_axes=(0, None)),
                        in_axes=(0, None))(logits_cross, y)                 # (N, N, B)
    own = jnp.eye(n_members, dtype=bool)
    ce_own = jnp.sum(jnp.where(own[:, :, None], ce_cross, 0.0), axis=1).mean(-1)
    loss = ce_nat + ce_own
    if n_members > 1 and (lambda_pm or lambda_dm):
        if variant == "thesis":
            p_true = jnp.exp(-jax.lax.stop_gradient(ce_cross))              # sg(f^n_y(x_a^i))
            promote, demote = ce_cross, _entropy(logits_cross)
        else:
            p_true, promote, demote = _release_crossing_terms(logits_cross, y)
        cross = lambda_pm * p_true * promote - lambda_dm * (1.0 - p_true) * demote
        loss = loss + jnp.sum(jnp.where(own[:, :, None], 0.0, cross), axis=1).mean(-1) / (
            n_members - 1)
    return loss


def member_attack_fn(apply_fn: c.ApplyFn, params: Any, model_state: Dict[str, Any], n_members: int,
                     *, mode: str = "eval",
                     key: Optional[jax.Array] = None) -> Callable[[jax.Array], jax.Array]:
    """x_flat (N B, ...) -> logits (N B, C) where member n sees rows n B .. (n + 1) B - 1 only."""
    stacked = c.attack_logits_fn(functools.partial(apply_fn, per_member_inputs=True), params,
                                 model_state, mode=mode, key=key)

    def logits(x_flat):
        x_stack = x_flat.reshape((n_members, -1) + x_flat.shape[1:])
        out = stacked(x_stack)
        return out.reshape((-1,) + out.shape[2:])

    return logits


def cce(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
        random_start: bool = True, mode: str = "", lambda_pm: Optional[float] = None,
        lambda_dm: Optional[float] = None, variant: str = "thesis",
        attack_bn: str = "eval") -> c.Objective:
    """CCE (Ch. 4, Sec. 4.3, Eq. 5) for an `Ensemble` apply_fn. `mode` ("rm" | "dm" | "base")
    sets lambda_pm / lambda_dm to the thesis' values (giving a lambda as well is an error); with
    mode "" the lambdas default to 1 (CCE-RM). `variant` "thesis" | "release": the crossing terms
    (module docstring)."""
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if mode:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)} or '', got {mode!r}")
        if lambda_pm is not None or lambda_dm is not None:
            raise ValueError(f"lambda_pm / lambda_dm: mode {mode!r} sets them; give one or the other")
        lambda_pm, lambda_dm = MODES[mode]
    lambda_pm = 1.0 if lambda_pm is None else lambda_pm
    lambda_dm = 1.0 if lambda_dm is None else lambda_dm
    v.check_nonnegative(lambda_pm, "lambda_pm")
    v.check_nonnegative(lambda_dm, "lambda_dm")
    members_fn = functools.partial(apply_fn, return_members=True)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        n = num_members(params)
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = member_attack_fn(apply_fn, params, state["model"], n, mode=attack_bn, key=k_drop_attack)
        x_rep = jnp.concatenate([x] * n, axis=0)
        y_rep = jnp.concatenate([y] * n, axis=0)
        x_adv = jax.lax.stop_gradient(
            attacks.pgd(f, x_rep, y_rep, key=k_attack, eps=eps, step_size=step_size, steps=steps,
                        norm=norm, random_start=random_start))        # rows n B.. : x_a^n
        logits_nat, ms = c.train_forward(members_fn, params, state["model"], x, k_nat)
        logits_adv, ms = c.train_forward(members_fn, params, ms, x_adv, k_adv)
        logits_cross = logits_adv.reshape((n, n) + logits_nat.shape[1:])   # [member, source]
        per_member = cce_member_losses(logits_nat, logits_cross, y, lambda_pm=lambda_pm,
                                       lambda_dm=lambda_dm, variant=variant)
        ens_nat = ensemble_log_probs(logits_nat)
        metrics = {f"loss_member{i}": per_member[i] for i in range(n)}
        metrics.update({"acc": c.accuracy(ens_nat, y),
                        "member_adv_acc": jnp.mean(jnp.argmax(
                            jnp.diagonal(logits_cross, axis1=0, axis2=1), -1) == y[:, None])})
        return c.result(jnp.sum(per_member), metrics, ms, state["method"])

    return c.Objective(objective)


# ----------------------------------------------------------------------------------------------
# Ensemble adversarial training on multi-objective ensemble attacks (Ch. 4, Sec. 4, Table 4)
# ----------------------------------------------------------------------------------------------

def ensemble_moo_at(apply_fn: c.ApplyFn, *, eps: float, step_size: float, steps: int, norm: str = "linf",
                    weighting: str = "tamoo", lam: float = 100.0, lr_w: float = 0.005,
                    inner_steps: int = 10, gamma: float = 3.0, minmax_lr: float = 0.01,
                    mix: float | None = None, variant: str = "thesis",
                    attack_bn: str = "eval") -> c.Objective:
    """TA-MOO-AT / MOO-AT / MinMax-AT / PGD-AT of an ensemble (Ch. 4, Table 4; weighting "tamoo",
    "moo", "minmax", "uniform"): x_a = `tamoo_ens` against all members at once (ENS setting).

    variant "thesis" (default): the thesis does not spell the training loss out; we train every
    member on the shared adversarial examples, L = sum_n (1 - mix) CE(f^n(x), y) + mix CE(f^n(x_a), y)
    (mix = 1 unless given: adversarial examples only, as PGD-AT).
    variant "release": the authors' `trainer.ADV_Trainer_General`: L = CE(f^en(x), y) +
    CE(f^en(x_a), y) (at_alpha = at_beta = 1) with f^en = log of the mean member probability (their
    `Ensemble`, as `ensemble_log_probs`); `mix` is an error here.
    "uniform" is PGD on the sum of the member losses."""
    from advjax.attacks import tamoo  # local: keeps the module import list short
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "release" and mix is not None:
        raise ValueError("mix: the release's loss weights clean and adversarial 1:1; mix applies "
                         "to variant='thesis' only")
    mix = 1.0 if mix is None else mix
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    members_fn = functools.partial(apply_fn, return_members=True)

    def member_ce(logits, y):
        return jax.vmap(losses.cross_entropy, in_axes=(0, None))(logits, y).mean(-1)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_attack, k_drop_attack, k_nat, k_adv = jax.random.split(key, 4)
        f = c.attack_logits_fn(members_fn, params, state["model"], mode=attack_bn,
                               key=k_drop_attack)
        x_adv = jax.lax.stop_gradient(tamoo.tamoo_ens(
            f, x, y, key=k_attack, eps=eps, step_size=step_size, steps=steps, norm=norm,
            weighting=weighting, lam=lam, lr_w=lr_w, inner_steps=inner_steps, gamma=gamma,
            minmax_lr=minmax_lr))
        ms = state["model"]
        metrics = {}
        if variant == "release":
            logits_nat, ms = c.train_forward(members_fn, params, ms, x, k_nat)
            logits_adv, ms = c.train_forward(members_fn, params, ms, x_adv, k_adv)
            ens_nat, ens_adv = ensemble_log_probs(logits_nat), ensemble_log_probs(logits_adv)
            loss = c.mean_ce(ens_nat, y) + c.mean_ce(ens_adv, y)
            metrics["acc"] = c.accuracy(ens_nat, y)
        else:
            per_member = 0.0
            if mix < 1:
                logits_nat, ms = c.train_forward(members_fn, params, ms, x, k_nat)
                per_member = per_member + (1.0 - mix) * member_ce(logits_nat, y)
                metrics["acc"] = c.accuracy(ensemble_log_probs(logits_nat), y)
            logits_adv, ms = c.train_forward(members_fn, params, ms, x_adv, k_adv)
            per_member = per_member + mix * member_ce(logits_adv, y)
            ens_adv = ensemble_log_probs(logits_adv)
            loss = jnp.sum(per_member)
        metrics["adv_acc"] = c.accuracy(ens_adv, y)
        metrics["a_all"] = tamoo.a_all(jnp.argmax(logits_adv, -1).T != y[:, None])
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)


# ----------------------------------------------------------------------------------------------
# Transferability (Ch. 4, Sec. 4.3, Table 6)
# ----------------------------------------------------------------------------------------------

def transfer_accuracy_matrix(member_fns: Sequence[Callable[[jax.Array], jax.Array]],
                             attack: Callable[..., jax.Array], x: jax.Array, y: jax.Array, *,
                             key: jax.Array) -> jax.Array:
    """a[i, j] = accuracy of member j on adversarial examples made by `attack` against member i
    (`attack(logits_fn, x, y, key=...) -> x_adv`)."""
    keys = jax.random.split(key, len(member_fns))
    rows = []
    for i, f_i in enumerate(member_fns):
        x_adv = attack(f_i, x, y, key=keys[i])
        rows.append(jnp.stack([jnp.mean(jnp.argmax(f_j(x_adv), -1) == y) for f_j in member_fns]))
    return jnp.stack(rows)


def transferability(a: jax.Array) -> jax.Array:
    """T = a(1,2) - a(1,1) + a(2,1) - a(2,2) (Table 6) for members 1, 2 (indices 0, 1) of matrix a:
    how much more accurate the other member is than the attacked one; small T = high transfer."""
    return a[0, 1] - a[0, 0] + a[1, 0] - a[1, 1]


def ensemble_member_fns(apply_fn: c.ApplyFn, variables: Any,
                        n_members: int) -> List[Callable[[jax.Array], jax.Array]]:
    """[x -> logits of member n] for an Ensemble (inference mode), for transfer_accuracy_matrix."""
    def member(n):
        return lambda x: apply_fn(variables, x, train=False, return_members=True)[n]
    return [member(n) for n in range(n_members)]
