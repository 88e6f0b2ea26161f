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
Variants: CCE-RM l_pm = l_dm = 1; CCE-DM l_pm = 0, l_dm = 5; CCE-Base l_pm = l_dm = 0 (= independent
PGD-AT of every member with the loss CE(x) + CE(x_a), i.e. 2 x `pgd_at` with mix = 0.5).
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

VARIANTS = {"rm": (1.0, 1.0), "dm": (0.0, 5.0), "base": (0.0, 0.0)}


def num_members(params: Any) -> int:
    """N, the leading (member) axis of the ensemble's stacked parameters."""
    return jax.tree_util.tree_leaves(params)[0].shape[0]


def _entropy(logits):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def cce_member_losses(logits_nat: jax.Array, logits_cross: jax.Array, y: jax.Array, *,
                      lambda_pm: Scalar = 1.0, lambda_dm: Scalar = 1.0) -> jax.Array:
    """Per-member losses L^n (Ch. 4, Sec. 4.3, Eq. 5), shape (N,).

    logits_nat: (N, B, C), member n on x. logits_cross: (N, N, B, C), [n, i] = member n on x_a^i."""
    n_members = logits_nat.shape[0]
    ce_nat = jax.vmap(losses.cross_entropy, in_axes=(0, None))(logits_nat, y).mean(-1)
    ce_cross = jax.vmap(jax.vmap(losses.cross_entropy, in_axes=(0, None)),
                        in_axes=(0, None))(logits_cross, y)                 # (N, N, B)
    own = jnp.eye(n_members, dtype=bool)
    ce_own = jnp.sum(jnp.where(own[:, :, None], ce_cross, 0.0), axis=1).mean(-1)
    loss = ce_nat + ce_own
    if n_members > 1 and (lambda_pm or lambda_dm):
        p_true = jnp.exp(-jax.lax.stop_gradient(ce_cross))                  # f^n_y(x_a^i)
        cross = lambda_pm * p_true * ce_cross - lambda_dm * (1.0 - p_true) * _entropy(logits_cross)
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
        random_start: bool = True, variant: str = "", lambda_pm: float = 1.0,
        lambda_dm: float = 1.0, attack_bn: str = "eval") -> c.Objective:
    """CCE (Ch. 4, Sec. 4.3, Eq. 5) for an `Ensemble` apply_fn. `variant` ("rm" | "dm" | "base")
    overrides lambda_pm / lambda_dm with the thesis' settings; "" keeps the given values."""
    v.check_nonnegative(eps, "eps")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    if variant:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)} or '', got {variant!r}")
        lambda_pm, lambda_dm = VARIANTS[variant]
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
                                       lambda_dm=lambda_dm)
        ens_nat = jax.nn.logsumexp(jax.nn.log_softmax(logits_nat, -1), axis=0)
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
                    mix: float = 1.0, attack_bn: str = "eval") -> c.Objective:
    """TA-MOO-AT / MOO-AT / MinMax-AT / PGD-AT of an ensemble (Ch. 4, Table 4; weighting "tamoo",
    "moo", "minmax", "uniform"): x_a = `tamoo_ens` against all members at once (ENS setting), and
    L = sum_n (1 - mix) CE(f^n(x), y) + mix CE(f^n(x_a), y).

    The thesis does not spell the training loss out; we train every member on the shared ensemble
    adversarial examples (mix = 1: adversarial examples only, as PGD-AT). "uniform" is PGD on the sum
    of the member losses."""
    from advjax.attacks import tamoo  # local: keeps the module import list short
    v.check_nonnegative(eps, "eps")
    v.check_positive_int(steps, "steps")
    threat.check_norm(norm)
    c.check_attack_bn(attack_bn)
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    members_fn = functools.partial(apply_fn, return_members=True)

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
        per_member = 0.0
        metrics = {}
        if mix < 1:
            logits_nat, ms = c.train_forward(members_fn, params, ms, x, k_nat)
            ce = jax.vmap(losses.cross_entropy, in_axes=(0, None))(logits_nat, y).mean(-1)
            per_member = per_member + (1.0 - mix) * ce
            metrics["acc"] = c.accuracy(jax.nn.logsumexp(jax.nn.log_softmax(logits_nat), 0), y)
        logits_adv, ms = c.train_forward(members_fn, params, ms, x_adv, k_adv)
        ce_adv = jax.vmap(losses.cross_entropy, in_axes=(0, None))(logits_adv, y).mean(-1)
        per_member = per_member + mix * ce_adv
        metrics["adv_acc"] = c.accuracy(jax.nn.logsumexp(jax.nn.log_softmax(logits_adv), 0), y)
        metrics["a_all"] = tamoo.a_all(jnp.argmax(logits_adv, -1).T != y[:, None])
        return c.result(jnp.sum(per_member), metrics, ms, state["method"])

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
