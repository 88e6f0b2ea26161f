"""WRM and DRA: distributionally robust adversarial training with a fixed Lagrange multiplier gamma.

Papers: Sinha, Namkoong, Duchi (ICLR 2018), WRM; "Distributionally Robust Adversarial Training" (DRA,
/work/shared/papers/dra-distributionally-robust-adversarial-training.txt). DRA Eq. (5), gamma fixed:

    min_theta E_{P0}[ phi_gamma(theta; z) ],   phi_gamma(theta; z) = sup_{x'} l(theta; (x', y)) - gamma c(x, x').

By the envelope theorem (DRA Sec. 3.3) grad_theta phi_gamma = grad_theta l(theta; (x'*, y)), so each
step finds x'* with the Lagrangian attack (`advjax.attacks.wrm.wrm`, T_adv ascent steps) and takes a
gradient step on mean_i CE(f(x'*_i), y_i) (Algorithm 1). Objectives here:

  * `wrm` (registry "wrm"): DRA_2 = Sinha et al.'s WRM, c = ||x - x'||_2^2 (`cost` also accepts
    "elastic", ||.||_2^2 + beta ||.||_2, Sec. 3.2, and "linf"). `variant="sinha_code"` is Sinha et
    al.'s released training instead (`attacks.wrm`'s variant: their ascent schedule, no box, and the
    0.1-smoothed labels in both the attack and the training loss).
  * `dra_inf` ("dra_inf"): DRA_inf, c = ||x - x'||_inf.
  * `dra_multi` ("dra_multi"): Algorithm 2, the multi-cost ensemble. Each step draws nu ~ U[0, 1];
    nu < p: the l2 Lagrangian attack with gamma_2, else the linf one with gamma_inf.
  * `dra_mahalanobis` ("dra_mahalanobis"): Algorithm 3, DRA_A, c_A = (x - x')^T A (x - x') with A
    learned: A = I at the start; during an epoch the method state accumulates the scatter
    sum_i zeta_i zeta_i^T of the perturbations zeta_i = x'_i - x_i; at the end of the epoch
    (`Objective.end_of_epoch`) A is recomputed by Theorem 2 (`theorem2_matrix`) and the scatter reset.

Device-independence (advjax.train runs the step on the global batch, so the points below hold there
by construction; they matter when the objective runs per device, under pmap, with the method state
pmean-ed after every step and a key per device):
  * DRA_A stores the scatter as the running sum over steps of the per-step mean of zeta zeta^T over the
    batch, plus a step count. Each device adds its shard's mean; the loop's pmean turns that into the
    global-batch mean (shards have equal sizes), so the state is the same on 1 or N devices. Theorem 2
    is invariant to scaling the scatter, so a mean is as good as the paper's sum.
  * Algorithm 2 draws one nu per minibatch. The step key differs per device, so drawing nu from it
    would attack the shards of one global batch with different costs (and make N devices differ from
    one). `dra_multi` keeps its own PRNG key in the method state (uint32, so the loop does not average
    it), identical on all devices, split once per step; checkpointed with the state, so resumption
    repeats the same draws.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from advjax import threat
from advjax.attacks import _validation as v
from advjax.attacks.wrm import (ASCENTS, COSTS, SINHA_LABEL_SMOOTHING, VARIANTS,
                                smoothed_cross_entropy, transport_cost)
from advjax.attacks.wrm import wrm as wrm_attack
from advjax.objectives import _common as c
from advjax.threat import Scalar


# ------------------------------------------------------------------------------------------------
# Theorem 2: the adversary's Mahalanobis matrix
# ------------------------------------------------------------------------------------------------

def theorem2_eigenvalues(psi: jax.Array, r: Scalar) -> jax.Array:
    """DRA Theorem 2: Lambda_jj = (sum_k psi_k^(r/(r+1)))^(1/r) / (psi_j^(1/(r+1)) d^(1/r)).

    psi > 0: the eigenvalues of the perturbations' scatter sum_i zeta_i zeta_i^T. The result is the
    spectrum of argmin_{A in A_r} sum_i zeta_i^T A zeta_i over A_r = {A > 0 : sum_j sigma_j(A)^-r = d}
    (the adversary's choice: phi_gamma decreases in c_A, so max_A E phi_gamma = min_A E c_A at the
    inner maximizers); A_r contains I, and an isotropic scatter gives Lambda = I exactly.
    Invariant to scaling psi.
    """
    d = psi.shape[-1]
    num = jnp.sum(psi ** (r / (r + 1.0))) ** (1.0 / r)
    return num / (psi ** (1.0 / (r + 1.0)) * d ** (1.0 / r))


def theorem2_matrix(scatter: jax.Array, r: Scalar, *, psi_floor: Scalar = 1e-6) -> jax.Array:
    """(A, Lambda): DRA Theorem 2, A = Q^T Lambda Q for the eigendecomposition scatter = Q^T Psi Q.

    `jnp.linalg.eigh` gives scatter = V diag(psi) V^T, i.e. Q = V^T and A = V diag(Lambda) V^T.
    psi_floor: eigenvalues below psi_floor * max(psi) are raised to it. A rank-deficient scatter
    (fewer perturbations than dimensions, pixels the box never lets move) has psi_j = 0 and Theorem 2
    would give Lambda_jj = inf; the floor caps the condition number of A at psi_floor^(-1/(r+1))
    (100 for r = 2 and the default 1e-6). A has exactly the constraint sum_j Lambda_jj^-r = d for the
    floored psi. psi_floor = 0 is Theorem 2 as the paper states it (no floor; only the dtype's
    smallest normal number keeps psi > 0, so a null direction gets a huge but finite Lambda_jj).
    """
    scatter = 0.5 * (scatter + scatter.T)
    psi, vecs = jnp.linalg.eigh(scatter)
    top = jnp.max(psi)
    floor = jnp.maximum(psi_floor * top, jnp.finfo(scatter.dtype).tiny)
    psi = jnp.maximum(psi, floor)
    lam = theorem2_eigenvalues(psi, r)
    A = (vecs * lam[None, :]) @ vecs.T
    return 0.5 * (A + A.T), lam


def _spectrum(lam: jax.Array):
    lo, hi = jnp.min(lam), jnp.max(lam)
    return {"A_eig_min": lo, "A_eig_max": hi, "A_cond": hi / lo}


# ------------------------------------------------------------------------------------------------
# The shared training step
# ------------------------------------------------------------------------------------------------

def _check_common(gamma, step_size, steps, ascent, attack_bn):
    v.check_nonnegative(gamma, "gamma")
    v.check_nonnegative(step_size, "step_size")
    v.check_positive_int(steps, "steps")
    if ascent not in ASCENTS:
        raise ValueError(f"ascent must be one of {ASCENTS}, got {ascent!r}")
    c.check_attack_bn(attack_bn)


def _adversarial_step(apply_fn, params, state, batch, key, craft, attack_bn, label_smoothing=0.0):
    """Crafts x' = craft(f, x, y, key) and returns (mean CE(f(x')), logits_adv, x', new model state);
    the CE against labels smoothed by `label_smoothing` (`attacks.wrm.smoothed_cross_entropy`)."""
    x, y = batch["image"], batch["label"]
    k_attack, k_drop_attack, k_adv = jax.random.split(key, 3)
    f = c.attack_logits_fn(apply_fn, params, state["model"], mode=attack_bn, key=k_drop_attack)
    x_adv = jax.lax.stop_gradient(craft(f, x, y, k_attack))
    logits_adv, model_state = c.train_forward(apply_fn, params, state["model"], x_adv, k_adv)
    loss = jnp.mean(smoothed_cross_entropy(logits_adv, y, label_smoothing))
    return loss, logits_adv, x_adv, model_state


def _perturbation_metrics(x_adv, x, y, logits_adv, cost_value, gamma, loss):
    delta = x_adv - x
    return {"gamma": jnp.asarray(gamma, jnp.float32),
            "cost": jnp.mean(cost_value),
            "surrogate": loss - gamma * jnp.mean(cost_value),   # mean l - gamma c = E phi_gamma
            "linf": jnp.mean(threat.norm_of(delta, "linf")),
            "l2": jnp.mean(threat.norm_of(delta, "l2")),
            "adv_acc": c.accuracy(logits_adv, y)}


def _fixed_cost_objective(apply_fn: c.ApplyFn, *, gamma, step_size, steps, cost, beta, ascent,
                          attack_bn, variant="dra", label_smoothing=0.0):
    def craft(f, x, y, k):
        return wrm_attack(f, x, y, gamma=gamma, step_size=step_size, steps=steps, cost=cost,
                          beta=beta, ascent=ascent, variant=variant,
                          label_smoothing=label_smoothing)

    def objective(params, state, batch, key):
        loss, logits_adv, x_adv, ms = _adversarial_step(apply_fn, params, state, batch, key, craft,
                                                        attack_bn, label_smoothing)
        cost_value = transport_cost(x_adv - batch["image"], cost, beta=beta)
        metrics = _perturbation_metrics(x_adv, batch["image"], batch["label"], logits_adv,
                                        cost_value, gamma, loss)
        return c.result(loss, metrics, ms, state["method"])

    return c.Objective(objective)


# ------------------------------------------------------------------------------------------------
# Factories
# ------------------------------------------------------------------------------------------------

def wrm(apply_fn: c.ApplyFn, *, gamma: float, step_size: Optional[float] = None, steps: int,
        cost: str = "l2", beta: float = 0.0, ascent: str = "gradient", variant: str = "dra",
        label_smoothing: Optional[float] = None, attack_bn: str = "eval") -> c.Objective:
    """WRM (Sinha et al. 2018) = DRA_2 (DRA Eq. 5 with c = ||x - x'||_2^2, Algorithm 1).

    variant="dra" (default; DRA's Algorithm 1, whose Table-3 pattern the dro_fmnist study tests):
    L = mean_i CE(f(x'_i), y_i), x'_i from `steps` ascent steps of size `step_size` on
    CE(f(x'), y) - gamma c(x, x') in the box. cost: "l2" (default), "elastic" (+ beta ||.||_2) or
    "linf". DRA's CIFAR-10 runs: gamma = 0.002 (DRA_2), inner learning rate 0.001 with Adam.
    variant="sinha_code": Sinha et al.'s released training (`attacks.wrm`: first step 1 / (2 gamma),
    then `steps` steps of 1 / (2 gamma sqrt(t + 2)), no box; their MNIST run: gamma = 0.5 / 1.3,
    steps = 15), L = the CE against labels smoothed by `label_smoothing` (default 0.1) at x'.
    label_smoothing also applies to variant="dra" when given (default 0 there).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "sinha_code":
        label_smoothing = SINHA_LABEL_SMOOTHING if label_smoothing is None else label_smoothing
        v.check_nonnegative(gamma, "gamma")
        v.check_positive_int(steps, "steps")
        c.check_attack_bn(attack_bn)
        if not gamma > 0:
            raise ValueError(f'variant="sinha_code" needs gamma > 0, got {gamma}')
        if cost != "l2":
            raise ValueError(f'variant="sinha_code" is the l2 cost, got cost={cost!r}')
    else:
        if step_size is None:
            raise ValueError('wrm(variant="dra") needs step_size')
        _check_common(gamma, step_size, steps, ascent, attack_bn)
    label_smoothing = 0.0 if label_smoothing is None else label_smoothing
    v.check_nonnegative(label_smoothing, "label_smoothing")
    if cost not in COSTS or cost == "mahalanobis":
        raise ValueError(f'cost must be "l2", "elastic" or "linf" (use dra_mahalanobis for a '
                         f'learned A), got {cost!r}')
    return _fixed_cost_objective(apply_fn, gamma=gamma, step_size=step_size, steps=steps, cost=cost,
                                 beta=beta, ascent=ascent, attack_bn=attack_bn, variant=variant,
                                 label_smoothing=label_smoothing)


def dra_inf(apply_fn: c.ApplyFn, *, gamma: float, step_size: float, steps: int, ascent: str = "gradient",
            attack_bn: str = "eval") -> c.Objective:
    """DRA_inf (DRA Sec. 3.2 / 4): the Lagrangian attack with c = ||x - x'||_inf (gamma = 0.02 in
    DRA's CIFAR-10 runs); see `advjax.attacks.wrm` for the subgradient."""
    _check_common(gamma, step_size, steps, ascent, attack_bn)
    return _fixed_cost_objective(apply_fn, gamma=gamma, step_size=step_size, steps=steps,
                                 cost="linf", beta=0.0, ascent=ascent, attack_bn=attack_bn)


def _raw_key(key):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def dra_multi(apply_fn: c.ApplyFn, *, gamma_2: float, gamma_inf: float, step_size: float, steps: int,
              p: float = 0.5, ascent: str = "gradient", attack_bn: str = "eval") -> c.Objective:
    """DRA_{2-inf}, the multi-cost ensemble (DRA Algorithm 2).

    Every step draws nu ~ U[0, 1] once for the whole (global) batch: nu < p crafts x' with the l2
    Lagrangian attack (gamma_2), otherwise with the linf one (gamma_inf); then a step on mean CE(f(x')).
    Only the chosen attack runs (`lax.cond`). nu comes from a key in the method state (module
    docstring), so all devices draw the same nu. DRA's CIFAR-10 runs: gamma_2 = 0.002,
    gamma_inf = 0.02, p = 0.5. Metrics: "cost_is_l2" (1 if the l2 cost was drawn), "gamma" (the
    gamma used), "cost" (the drawn cost's mean value).
    """
    _check_common(gamma_2, step_size, steps, ascent, attack_bn)
    v.check_nonnegative(gamma_inf, "gamma_inf")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")

    def attack(cost, gamma, f, x, y):
        return lambda: wrm_attack(f, x, y, gamma=gamma, step_size=step_size, steps=steps,
                                  cost=cost, ascent=ascent)

    def init_method_state(key):
        return {"key": _raw_key(key)}

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        next_key, draw_key = jax.random.split(state["method"]["key"])
        use_l2 = jax.random.uniform(draw_key) < p

        def craft(f, x, y, k):
            return jax.lax.cond(use_l2, attack("l2", gamma_2, f, x, y),
                                attack("linf", gamma_inf, f, x, y))

        loss, logits_adv, x_adv, ms = _adversarial_step(apply_fn, params, state, batch, key, craft,
                                                        attack_bn)
        delta = x_adv - x
        gamma = jnp.where(use_l2, gamma_2, gamma_inf)
        cost_value = jnp.where(use_l2, transport_cost(delta, "l2"), transport_cost(delta, "linf"))
        metrics = _perturbation_metrics(x_adv, x, y, logits_adv, cost_value, gamma, loss)
        metrics["cost_is_l2"] = use_l2.astype(jnp.float32)
        return c.result(loss, metrics, ms, {**state["method"], "key": next_key})

    return c.Objective(objective, init_method_state=init_method_state)


def dra_mahalanobis(apply_fn: c.ApplyFn, *, gamma: float, step_size: float, steps: int, input_dim: int,
                    r: float = 2.0, psi_floor: float = 1e-6, ascent: str = "gradient",
                    attack_bn: str = "eval") -> c.Objective:
    """DRA_A, adaptive Mahalanobis cost (DRA Algorithm 3, Theorem 2).

    c_A(x, x') = (x - x')^T A (x - x'), A (d x d), d = `input_dim` = H*W*C (784 for Fashion-MNIST,
    3072 for CIFAR-10, 64 for digits; the factory cannot see the data, so the config states it and
    the step checks it). Method state:
      "A": the current matrix (identity at the start, Alg. 3 line 2);
      "scatter": running sum over this epoch's steps of mean_i zeta_i zeta_i^T, zeta_i = x'_i - x_i;
      "count": the number of steps summed;
      "A_eig_min", "A_eig_max", "A_cond": A's spectrum, logged every step.
    `end_of_epoch` (Alg. 3 line 8) sets A = `theorem2_matrix(scatter / count, r, psi_floor)` and
    resets the scatter (A is kept if no step ran). psi_floor (not in the paper; default 1e-6, cond(A)
    <= 100 for r = 2) keeps the explicit ascent stable (step_size gamma 2 lambda_max(A) < 2) when the
    scatter is (nearly) rank-deficient; psi_floor = 0 is the paper's unfloored Theorem 2. r = 2 (Frobenius norm of A^-1) in DRA's runs,
    gamma = 0.001. The d x d scatter update costs B d^2 per step and the eigendecomposition O(d^3)
    once per epoch. Stability of "gradient" ascent needs step_size * gamma * 2 lambda_max(A) < 2.
    """
    _check_common(gamma, step_size, steps, ascent, attack_bn)
    d = v.check_positive_int(input_dim, "input_dim")
    if not r > 0:
        raise ValueError(f"r must be > 0, got {r}")
    if not 0.0 <= psi_floor <= 1.0:
        raise ValueError(f"psi_floor must be in [0, 1], got {psi_floor}")

    def init_method_state(key):
        del key
        return {"A": jnp.eye(d, dtype=jnp.float32), "scatter": jnp.zeros((d, d), jnp.float32),
                "count": jnp.zeros((), jnp.float32), **_spectrum(jnp.ones((d,), jnp.float32))}

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        if int(np.prod(x.shape[1:])) != d:
            raise ValueError(f"dra_mahalanobis: input_dim={d} but the inputs have "
                             f"{int(np.prod(x.shape[1:]))} features per example "
                             f"(shape {x.shape[1:]}); set objective.input_dim")
        method = state["method"]
        A = method["A"]

        def craft(f, x, y, k):
            return wrm_attack(f, x, y, gamma=gamma, step_size=step_size, steps=steps,
                              cost="mahalanobis", A=A, ascent=ascent)

        loss, logits_adv, x_adv, ms = _adversarial_step(apply_fn, params, state, batch, key, craft,
                                                        attack_bn)
        zeta = (x_adv - x).reshape(x.shape[0], d)
        batch_scatter = zeta.T @ zeta / x.shape[0]
        new_method = {**method, "scatter": method["scatter"] + batch_scatter,
                      "count": method["count"] + 1.0}
        cost_value = transport_cost(x_adv - x, "mahalanobis", A=A)
        metrics = _perturbation_metrics(x_adv, x, y, logits_adv, cost_value, gamma, loss)
        metrics.update({k: method[k] for k in ("A_eig_min", "A_eig_max", "A_cond")})
        return c.result(loss, metrics, ms, new_method)

    @jax.jit
    def _update(method):
        A, lam = theorem2_matrix(method["scatter"] / jnp.maximum(method["count"], 1.0), r,
                                 psi_floor=psi_floor)
        ran = method["count"] > 0
        spectrum = _spectrum(lam)
        return {**method,
                "A": jnp.where(ran, A, method["A"]),
                "scatter": jnp.zeros_like(method["scatter"]),
                "count": jnp.zeros_like(method["count"]),
                **{k: jnp.where(ran, s, method[k]) for k, s in spectrum.items()}}

    def end_of_epoch(method):
        return _update(method)

    return c.Objective(objective, init_method_state=init_method_state, end_of_epoch=end_of_epoch)
