"""Distributional robustness: the WRM / DRA Lagrangian attack and objectives, UDR, AWP.

Limits that reduce a method to a simpler one (gamma -> inf / 0, the hard ball of UDR, gamma_AWP = 0),
closed forms (cost gradients, DRA Theorem 2, AWP's layer-wise norms), the lambda update's direction,
the device-independence of the method state, runs under the training loop, and the UDR toy problem.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, losses, objectives
from advjax.attacks.wrm import transport_cost, transport_cost_grad, wrm
from advjax.objectives import awp, udr
from advjax.objectives import wrm as dra
from conftest import fast_jit, init_mlp, mlp_apply, mlp_logits, random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def net():
    """A random tanh MLP 12 -> 16 -> 5 and a batch inside [0.2, 0.8] (away from the box walls)."""
    params = init_mlp(jax.random.PRNGKey(0), 12, 16, 5, scale=3.0)
    x, y = random_batch(jax.random.PRNGKey(1), (8, 12), 5, lo=0.2, hi=0.8)
    return params, mlp_logits(params), x, y


def _ce_grad(f, x, y):
    return jax.grad(lambda z: jnp.sum(losses.cross_entropy(f(z), y)))(x)


# ------------------------------------------------------------------------------------------------
# The Lagrangian attack
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cost", ["l2", "elastic", "mahalanobis"])
def test_wrm_large_gamma_stays_at_x_and_solves_the_lagrangian(net, cost):
    """gamma -> inf: x' -> x, at the rate of the maximizer x + grad l(x) / (2 gamma) (the l2 part of
    every smooth cost has curvature 2 gamma; step 1 / (2 gamma) is the exact step on it)."""
    _, f, x, y = net
    g = _ce_grad(f, x, y)
    A = jnp.eye(12) if cost == "mahalanobis" else None
    dist = []
    for gamma in (1e3, 1e4, 1e6):
        x_adv = wrm(f, x, y, gamma=gamma, step_size=1.0 / (2 * gamma), steps=5, cost=cost, A=A,
                    beta=0.0)
        delta = np.asarray(x_adv - x)
        dist.append(np.abs(delta).max())
        if gamma < 1e5:  # beyond, delta ~ 1e-6 is at float32's resolution next to x ~ 0.5
            np.testing.assert_allclose(2 * gamma * delta, g, rtol=0.05,
                                       atol=0.01 * np.abs(g).max())
    assert dist[0] > dist[1] > dist[2] and dist[2] < 1e-5, dist


def test_wrm_gamma_zero_is_gradient_ascent_in_the_box(net):
    _, f, x, y = net
    for ascent, direction in (("gradient", lambda g: g), ("sign", jnp.sign)):
        ref = x
        for _ in range(6):
            ref = jnp.clip(ref + 0.3 * direction(_ce_grad(f, ref, y)), 0.0, 1.0)
        out = wrm(f, x, y, gamma=0.0, step_size=0.3, steps=6, ascent=ascent)
        np.testing.assert_allclose(out, ref, atol=1e-5)
        assert float(jnp.max(out)) <= 1.0 and float(jnp.min(out)) >= 0.0


def test_wrm_adam_ascent_moves_and_stays_in_the_box(net):
    _, f, x, y = net
    out = wrm(f, x, y, gamma=0.1, step_size=0.05, steps=10, ascent="adam")
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # Adam's first step has magnitude step_size in every coordinate with a nonzero gradient.
    assert float(jnp.abs(out - x).max()) > 0.1
    ce = lambda z: float(losses.cross_entropy(f(z), y).mean())
    assert ce(out) > ce(x)


@pytest.mark.parametrize("cost", ["l2", "linf", "elastic", "mahalanobis"])
def test_cost_gradient_matches_autodiff(cost):
    key = jax.random.PRNGKey(3)
    delta = jax.random.normal(key, (4, 3, 2)) * 0.3   # distinct |delta_i|: no ties
    A = jax.random.normal(jax.random.PRNGKey(4), (6, 6))  # not symmetric: (A + A^T) delta
    auto = jax.grad(lambda d: jnp.sum(transport_cost(d, cost, beta=0.7, A=A)))(delta)
    closed = transport_cost_grad(delta, cost, beta=0.7, A=A)
    np.testing.assert_allclose(closed, auto, rtol=1e-5, atol=1e-6)


def test_cost_values_and_nonsmooth_points():
    d = jnp.array([[0.3, -0.4, 0.0], [0.0, 0.0, 0.0], [0.5, -0.5, 0.1]])
    np.testing.assert_allclose(transport_cost(d, "l2"), [0.25, 0.0, 0.51], rtol=1e-6)
    np.testing.assert_allclose(transport_cost(d, "linf"), [0.4, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(transport_cost(d, "elastic", beta=2.0), [0.25 + 1.0, 0.0,
                                                                       0.51 + 2 * np.sqrt(0.51)],
                               rtol=1e-6)
    g = transport_cost_grad(d, "linf")
    # Subgradients: one coordinate; ties split equally (as autodiff of max); 0 at delta = 0.
    np.testing.assert_allclose(g, [[0, -1, 0], [0, 0, 0], [0.5, -0.5, 0]], atol=1e-7)
    np.testing.assert_allclose(transport_cost_grad(d, "elastic", beta=2.0)[1], 0.0)
    auto_ties = jax.grad(lambda z: jnp.sum(transport_cost(z, "linf")))(d[2:])
    np.testing.assert_allclose(g[2:], auto_ties, atol=1e-7)


def test_mahalanobis_identity_is_squared_l2(net):
    _, f, x, y = net
    delta = jax.random.normal(jax.random.PRNGKey(5), x.shape)
    eye = jnp.eye(12)
    np.testing.assert_allclose(transport_cost(delta, "mahalanobis", A=eye),
                               transport_cost(delta, "l2"), rtol=1e-6)
    a = wrm(f, x, y, gamma=0.5, step_size=0.2, steps=8, cost="mahalanobis", A=eye)
    b = wrm(f, x, y, gamma=0.5, step_size=0.2, steps=8, cost="l2")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_wrm_checks_its_arguments(net):
    _, f, x, y = net
    with pytest.raises(ValueError, match="cost"):
        wrm(f, x, y, gamma=1.0, step_size=0.1, steps=2, cost="l3")
    with pytest.raises(ValueError, match="A"):
        wrm(f, x, y, gamma=1.0, step_size=0.1, steps=2, cost="mahalanobis")
    with pytest.raises(ValueError, match="shape"):
        wrm(f, x, y, gamma=1.0, step_size=0.1, steps=2, cost="mahalanobis", A=jnp.eye(3))
    with pytest.raises(ValueError, match="key"):
        wrm(f, x, y, gamma=1.0, step_size=0.1, steps=2, random_start=True, init_eps=0.1)
    assert attacks.get_attack("wrm") is wrm


# ------------------------------------------------------------------------------------------------
# DRA Theorem 2 and the adaptive cost
# ------------------------------------------------------------------------------------------------

def _random_feasible(rng, d, r, n):
    """n random matrices of A_r = {A > 0 : sum_j sigma_j(A)^-r = d}: random rotation, random
    spectrum rescaled onto the constraint."""
    out = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        s = np.exp(rng.normal(scale=1.5, size=d))
        s = s * (np.sum(s ** -r) / d) ** (1.0 / r)
        out.append((q * s) @ q.T)
    return out


@pytest.mark.parametrize("d,r", [(3, 2.0), (4, 1.0), (5, 3.0)])
def test_theorem2_minimizes_the_expected_cost_over_A_r(d, r):
    """DRA Theorem 2: A_hat = argmin_{A in A_r} sum_i zeta_i^T A zeta_i (= tr(A S)), S the scatter."""
    rng = np.random.default_rng(d)
    zeta = rng.normal(size=(30, d)) * rng.uniform(0.1, 2.0, size=d)  # anisotropic perturbations
    S = zeta.T @ zeta
    A_hat, lam = dra.theorem2_matrix(jnp.asarray(S, jnp.float32), r, psi_floor=1e-12)
    A_hat = np.asarray(A_hat, np.float64)
    ev = np.linalg.eigvalsh(A_hat)
    assert np.all(ev > 0)
    np.testing.assert_allclose(np.sum(ev ** -r), d, rtol=1e-4)          # A_hat is in A_r
    best = np.trace(A_hat @ S)
    others = [np.trace(A @ S) for A in _random_feasible(rng, d, r, 2000)]
    assert best <= min(others) * (1 + 1e-4), (best, min(others))
    # Spectral optimality: A_hat and S commute, and larger scatter gets the cheaper direction.
    np.testing.assert_allclose(A_hat @ S, S @ A_hat, atol=1e-3 * np.abs(S).max())
    np.testing.assert_allclose(np.trace(A_hat @ S), best)
    # Perturbing A_hat along the constraint surface only increases the cost.
    for A in _random_feasible(rng, d, r, 50):
        t = 0.05
        mix = (1 - t) * A_hat + t * A
        s = np.linalg.eigvalsh(mix)
        mix = mix * (np.sum(s ** -r) / d) ** (1.0 / r)
        assert np.trace(mix @ S) >= best * (1 - 1e-5)


def test_theorem2_isotropic_scatter_gives_identity_and_is_scale_free():
    A, lam = dra.theorem2_matrix(3.7 * jnp.eye(6), 2.0)
    np.testing.assert_allclose(A, np.eye(6), atol=1e-5)
    S = jnp.asarray(np.diag([1.0, 2.0, 5.0]), jnp.float32)
    np.testing.assert_allclose(dra.theorem2_matrix(S, 2.0)[0], dra.theorem2_matrix(40 * S, 2.0)[0],
                               rtol=1e-5)
    # Rank-deficient scatter: the floor bounds the condition number at psi_floor^(-1/(r+1)).
    _, lam = dra.theorem2_matrix(jnp.diag(jnp.array([1.0, 0.0, 0.0])), 2.0, psi_floor=1e-6)
    assert np.isfinite(lam).all() and float(lam.max() / lam.min()) <= 100.0 * (1 + 1e-4)


# ------------------------------------------------------------------------------------------------
# DRA objectives
# ------------------------------------------------------------------------------------------------

def _mlp_apply_fn(variables, x, *, train=False, rngs=None, mutable=None, return_features=False):
    """A Flax-style apply for the conftest MLP (no model state)."""
    out = mlp_apply(variables["params"], x)
    return (out, {}) if mutable is not None else out


def _state(method=None):
    return {"model": {}, "method": {} if method is None else method}


def _make(name, hp):
    """The objective, jitted (cheap compilation): its steps run once or a few times here."""
    obj = objectives.make_objective(name, _mlp_apply_fn, hp)
    return fast_jit(obj.fn), obj


def test_wrm_objective_trains_on_the_lagrangian_point(net):
    params, f, x, y = net
    obj, _ = _make("wrm", dict(gamma=2.0, step_size=0.1, steps=5))
    loss, aux = obj(params, _state(), {"image": x, "label": y}, jax.random.PRNGKey(0))
    x_adv = wrm(f, x, y, gamma=2.0, step_size=0.1, steps=5)
    np.testing.assert_allclose(loss, losses.cross_entropy(f(x_adv), y).mean(), rtol=1e-5)
    m = aux["metrics"]
    np.testing.assert_allclose(m["cost"], transport_cost(x_adv - x, "l2").mean(), rtol=1e-5)
    assert float(m["gamma"]) == 2.0


def test_dra_multi_draws_one_cost_per_step_for_all_devices(net):
    """Algorithm 2: the draw comes from the method state's key, not the (per-device) step key."""
    params, f, x, y = net
    hp = dict(gamma_2=1.0, gamma_inf=5.0, step_size=0.1, steps=3, p=0.5)
    obj, objective = _make("dra_multi", hp)
    state = _state(objective.init_method_state(jax.random.PRNGKey(0)))
    batch = {"image": x, "label": y}
    refs = {c: fast_jit(lambda x, y, g=g, c=c: wrm(f, x, y, gamma=g, step_size=0.1, steps=3,
                                                   cost=c))(x, y)
            for c, g in (("l2", 1.0), ("linf", 5.0))}
    draws = []
    for _ in range(30):
        l1, a1 = obj(params, state, batch, jax.random.PRNGKey(1))
        l2, a2 = obj(params, state, batch, jax.random.PRNGKey(2))   # another "device"
        assert float(a1["metrics"]["cost_is_l2"]) == float(a2["metrics"]["cost_is_l2"])
        np.testing.assert_allclose(l1, l2, rtol=1e-6)
        use_l2 = bool(a1["metrics"]["cost_is_l2"])
        ref = refs["l2" if use_l2 else "linf"]
        np.testing.assert_allclose(l1, losses.cross_entropy(f(ref), y).mean(), rtol=1e-5)
        draws.append(use_l2)
        state = _state(a1["state"]["method"])
    assert 6 <= sum(draws) <= 24, sum(draws)    # nu ~ U[0, 1] < p = 0.5


def test_dra_mahalanobis_scatter_is_device_count_independent(net):
    """The loop pmeans method state: two half-batch devices must give the full-batch state."""
    params, f, x, y = net
    hp = dict(gamma=1.0, step_size=0.1, steps=4, input_dim=12, r=2.0)
    obj, objective = _make("dra_mahalanobis", hp)
    method = objective.init_method_state(jax.random.PRNGKey(0))
    full = obj(params, _state(method), {"image": x, "label": y}, jax.random.PRNGKey(0))[1]
    halves = [obj(params, _state(method), {"image": x[s], "label": y[s]},
                  jax.random.PRNGKey(i))[1] for i, s in enumerate((slice(0, 4), slice(4, 8)))]
    pmeaned = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, halves[0]["state"]["method"],
                                     halves[1]["state"]["method"])
    for k in ("scatter", "count", "A"):
        np.testing.assert_allclose(pmeaned[k], full["state"]["method"][k], rtol=1e-5, atol=1e-7)
    x_adv = wrm(f, x, y, gamma=1.0, step_size=0.1, steps=4, cost="mahalanobis", A=jnp.eye(12))
    zeta = np.asarray(x_adv - x)
    np.testing.assert_allclose(full["state"]["method"]["scatter"], zeta.T @ zeta / 8, rtol=1e-4,
                               atol=1e-8)
    # The epoch hook: Theorem 2 on the epoch's mean scatter, then a fresh scatter.
    new = objective.end_of_epoch(full["state"]["method"])
    expected, lam = dra.theorem2_matrix(full["state"]["method"]["scatter"], 2.0)
    np.testing.assert_allclose(new["A"], expected, rtol=1e-5, atol=1e-6)
    assert float(new["count"]) == 0 and float(jnp.abs(new["scatter"]).max()) == 0
    np.testing.assert_allclose(new["A_cond"], lam.max() / lam.min(), rtol=1e-5)
    with pytest.raises(ValueError, match="input_dim"):
        bad, bad_objective = _make("dra_mahalanobis", dict(hp, input_dim=10))
        bad(params, _state(bad_objective.init_method_state(None)), {"image": x, "label": y},
            jax.random.PRNGKey(0))


# ------------------------------------------------------------------------------------------------
# UDR
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["code_defaults", "tau_to_zero", "lambda_large"])
def test_udr_hard_ball_limit_is_pgd(net, limit):
    """Theorem 1 / Eq. (13): with the hard ball the UDR adversary is PGD, same key, same iterates."""
    _, f, x, y = net
    lam, tau = {"code_defaults": (1.0, 0.01), "tau_to_zero": (1.0, 1e-7),
                "lambda_large": (1e4, 0.01)}[limit]
    key = jax.random.PRNGKey(11)
    ref = attacks.pgd(f, x, y, key=key, eps=0.1, step_size=0.01, steps=15)
    out = udr.udr_attack(f, x, y, key=key, lam=jnp.float32(lam), eps=0.1, step_size=0.01,
                         steps=15, tau=tau)
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_udr_soft_ball_goes_beyond_eps_and_stays_in_box(net):
    _, f, x, y = net
    out = udr.udr_attack(f, x, y, key=jax.random.PRNGKey(0), lam=jnp.float32(0.2), eps=0.1,
                         step_size=0.01, steps=20, tau=0.01)
    dist = np.abs(np.asarray(out - x)).max(axis=1)
    assert dist.max() > 0.1 + 0.01 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # Fixed point of the per-pixel push/pull: excess <= (1 - kappa) eta / kappa = 0.04.
    assert dist.max() <= 0.1 + 0.04 + 1e-6
    # lambda = 0: no pull at all, the sign steps accumulate (clipped only by the box).
    free = udr.udr_attack(f, x, y, key=jax.random.PRNGKey(0), lam=jnp.float32(0.0), eps=0.1,
                          step_size=0.01, steps=20, tau=0.01)
    assert np.abs(np.asarray(free - x)).max() > 0.1 + 0.04 + 1e-3


def test_udr_pulls_soft_cost_and_lambda_update_formulas():
    d = jnp.array([[0.05, 0.2, -0.3, -0.1]])
    np.testing.assert_allclose(udr.pull_linf(d, 0.1, 1.0), jnp.clip(d, -0.1, 0.1))
    np.testing.assert_allclose(udr.pull_linf(d, 0.1, 0.0), d)
    np.testing.assert_allclose(udr.pull_linf(d, 0.1, 0.5), [[0.05, 0.15, -0.2, -0.1]], rtol=1e-6)
    np.testing.assert_allclose(udr.pull_l2(d, jnp.array([0.3]), 0.1, 0.01, 0.25), 0.75 * d)
    np.testing.assert_allclose(udr.pull_l2(d, jnp.array([0.05]), 0.1, 0.01, 0.25), 0.99 * d)
    c = jnp.array([0.05, 0.1, 0.2])
    np.testing.assert_allclose(udr.soft_ball_cost(c, 0.1, 0.5), [0.05, 0.1, 0.3], rtol=1e-6)
    assert float(udr.pull_strength(5.0, 0.01, 0.01)) == 1.0     # capped: never past the projection
    # (19): inside on average -> lambda decreases; outside -> increases; never below 0.
    assert float(udr.lambda_update(1.0, 0.05, 0.1, 0.02)) == pytest.approx(1.0 - 0.02 * 0.05)
    assert float(udr.lambda_update(1.0, 0.3, 0.1, 0.02)) == pytest.approx(1.0 + 0.02 * 0.2)
    assert float(udr.lambda_update(0.0005, 0.0, 0.1, 0.02)) == 0.0


@pytest.mark.parametrize("name", ["udr_pgd", "udr_trades", "udr_mart"])
def test_udr_objective_lambda_moves_the_right_way(net, name):
    params, f, x, y = net
    batch = {"image": x, "label": y}

    def run(**hp):
        obj, objective = _make(name, hp)
        return obj(params, _state(objective.init_method_state(None)), batch, jax.random.PRNGKey(0))

    # Inside: TRADES-style start and one small step in a large ball -> lambda decreases by (19).
    _, aux = run(eps=0.3, step_size=0.01, steps=1, start="trades", lambda_0=0.5, lambda_lr=0.1)
    m = aux["metrics"]
    assert float(m["soft_cost"]) < 0.3
    np.testing.assert_allclose(m["lambda"], 0.5 - 0.1 * (0.3 - m["soft_cost"]), rtol=1e-6)
    np.testing.assert_allclose(aux["state"]["method"]["lambda"], m["lambda"])
    # Outside: no pull (lambda_0 = 0) and a tiny ball -> lambda increases.
    _, aux = run(eps=0.001, step_size=0.01, steps=5, lambda_0=0.0, lambda_lr=0.1)
    assert float(aux["metrics"]["lambda"]) > 0.0 and float(aux["metrics"]["outside"]) == 1.0
    # Clipped at 0: inside on average with lambda_0 close to 0.
    _, aux = run(eps=0.3, step_size=0.01, steps=1, start="trades", lambda_0=1e-4, lambda_lr=0.1)
    assert float(aux["metrics"]["lambda"]) == 0.0


def test_udr_trades_loss_is_trades_on_the_udr_point(net):
    params, f, x, y = net
    hp = dict(eps=0.1, step_size=0.02, steps=4, beta=3.0, lambda_0=0.3)
    obj, objective = _make("udr_trades", hp)
    loss, _ = obj(params, _state(objective.init_method_state(None)), {"image": x, "label": y},
                  jax.random.PRNGKey(5))
    k_search = jax.random.split(jax.random.PRNGKey(5), 3)[0]
    k_attack = jax.random.split(k_search)[0]
    risk = lambda la, ln, yy: udr.risk_trades(la, ln, yy, beta=3.0)
    x_adv = udr.udr_attack(f, x, y, key=k_attack, lam=jnp.float32(0.3), eps=0.1, step_size=0.02,
                           steps=4, tau=0.02, risk=risk)
    from advjax.objectives.trades import trades_loss
    np.testing.assert_allclose(loss, trades_loss(f(x), f(x_adv), y, 3.0)[0], rtol=1e-5)


def test_udr_mart_risk_follows_eq7():
    ln = jnp.array([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]])
    la = jnp.array([[1.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    y = jnp.array([0, 2])
    p = jax.nn.softmax(ln)
    q = jax.nn.softmax(la)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    p_y = np.asarray(p)[np.arange(2), np.asarray(y)]
    other = np.where(np.eye(3)[np.asarray(y)] > 0, -1, np.asarray(p)).max(axis=1)
    bce = -np.log(p_y + 1e-12) - np.log(1.0001 - other)
    np.testing.assert_allclose(udr.risk_mart(la, ln, y, beta=2.0), bce + 2.0 * (1 - p_y) * kl,
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# AWP
# ------------------------------------------------------------------------------------------------

def test_awp_perturbation_is_layerwise_relative():
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
              "conv": {"kernel": 2 * jnp.ones((2, 2, 1, 3))}, "bn": {"scale": jnp.ones(3)}}
    grads = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.PRNGKey(a.size), a.shape),
                                   params)
    v = awp.weight_perturbation(grads, params, 0.01)
    for layer in ("dense", "conv"):
        w, d, g = params[layer]["kernel"], v[layer]["kernel"], grads[layer]["kernel"]
        np.testing.assert_allclose(jnp.linalg.norm(d), 0.01 * jnp.linalg.norm(w), rtol=1e-5)
        np.testing.assert_allclose(d / jnp.linalg.norm(d), g / jnp.linalg.norm(g), atol=1e-6)
    assert float(jnp.abs(v["dense"]["bias"]).max()) == 0 and float(jnp.abs(v["bn"]["scale"]).max()) == 0


def test_awp_gradient_is_taken_at_the_perturbed_weights(net):
    params, f, x, y = net
    hp = dict(eps=0.1, step_size=0.02, steps=3, gamma=0.05, random_start=False)
    _, obj = _make("awp", hp)
    batch = {"image": x, "label": y}
    grad = fast_jit(jax.grad(lambda p: obj(p, _state(), batch, jax.random.PRNGKey(0))[0]))(params)
    x_adv = attacks.pgd(f, x, y, eps=0.1, step_size=0.02, steps=3, random_start=False)
    ce = lambda p: losses.cross_entropy(mlp_apply(p, x_adv), y).mean()
    v = awp.weight_perturbation(jax.grad(ce)(params), params, 0.05)
    assert float(jnp.abs(v["b1"]).max()) == 0 and float(jnp.abs(v["w1"]).max()) > 0
    perturbed = jax.tree_util.tree_map(jnp.add, params, v)
    expected = jax.grad(ce)(perturbed)
    for k in params:
        np.testing.assert_allclose(grad[k], expected[k], rtol=1e-4, atol=1e-6)
    assert float(ce(perturbed)) > float(ce(params))   # the ascent step raised the loss
    # gamma = 0 is PGD-AT on adversarial examples only.
    l0 = _make("awp", dict(hp, gamma=0.0))[0](params, _state(), batch, jax.random.PRNGKey(0))[0]
    l_pgd = _make("pgd_at", dict(eps=0.1, step_size=0.02, steps=3, random_start=False))[0](
        params, _state(), batch, jax.random.PRNGKey(0))[0]
    np.testing.assert_allclose(l0, l_pgd, rtol=1e-6)


def test_udr_awp_with_gamma_zero_is_udr_pgd_without_natural_loss(net):
    params, _, x, y = net
    batch = {"image": x, "label": y}
    common = dict(eps=0.1, step_size=0.02, steps=4, lambda_0=0.4)
    a, oa = _make("udr_awp", dict(common, gamma=0.0))
    b, ob = _make("udr_pgd", dict(common, natural_weight=0.0))
    la, aa = a(params, _state(oa.init_method_state(None)), batch, jax.random.PRNGKey(3))
    lb, ab = b(params, _state(ob.init_method_state(None)), batch, jax.random.PRNGKey(3))
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    np.testing.assert_allclose(aa["metrics"]["lambda"], ab["metrics"]["lambda"], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Under the training loop
# ------------------------------------------------------------------------------------------------

def _loop_config(objective: dict, epochs: int):
    from advjax.config import default_config
    c = default_config()
    c.data.name = "digits"
    c.data.train_limit = 256
    c.model.name = "mlp"
    c.model.hidden = (32,)
    for k, val in objective.items():
        c.objective[k] = val
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.momentum = 0.0
    c.train.epochs = epochs
    c.train.batch_size = 64
    c.train.log_every = 2
    c.train.checkpoint_every_steps = 0
    c.train.progress = False
    c.eval.limit = 64
    c.eval.batch_size = 64
    c.eval.attacks = [dict(name="fgsm", eps=0.1)]
    return c


def test_udr_pgd_and_dra_mahalanobis_under_the_training_loop(tmp_path):
    from advjax import train
    runs = {
        "udr_pgd": (dict(name="udr_pgd", eps=0.1, step_size=0.02, steps=3, lambda_0=0.5,
                         lambda_lr=0.5), 1),
        "dra_mahalanobis": (dict(name="dra_mahalanobis", gamma=1.0, step_size=0.05, steps=3,
                                 input_dim=64), 2),
    }
    for name, (objective, epochs) in runs.items():
        cfg = _loop_config(objective, epochs)
        workdir = str(tmp_path / name)
        result = train.train_and_evaluate(cfg, workdir)
        assert os.path.exists(os.path.join(workdir, "eval.json"))
        with open(os.path.join(workdir, "eval.json")) as fh:
            assert json.load(fh)
        assert result["train_seconds"] > 0
        with open(os.path.join(workdir, "metrics.jsonl")) as fh:
            logged = [json.loads(line) for line in fh if line.strip()]
        state, _ = train.restore_state(cfg, workdir)
        method = jax.device_get(state.method_state)
        if name == "udr_pgd":
            assert int(state.step) == 4
            lam = float(method["lambda"])
            assert lam >= 0.0 and lam != 0.5
            assert any("lambda" in m for m in logged)
        else:
            assert int(state.step) == 8
            A = np.asarray(method["A"], np.float64)
            assert A.shape == (64, 64) and not np.allclose(A, np.eye(64), atol=1e-3)
            np.testing.assert_allclose(A, A.T, atol=1e-5)
            ev = np.linalg.eigvalsh(A)
            assert ev.min() > 0
            np.testing.assert_allclose(np.sum(ev ** -2.0), 64, rtol=1e-3)   # in A_r, r = 2
            assert float(method["count"]) == 0 and float(np.abs(method["scatter"]).max()) == 0
            assert float(method["A_cond"]) > 1.0
            assert {"A_eig_min", "A_eig_max", "A_cond", "gamma", "cost"} <= set(logged[-1])


# ------------------------------------------------------------------------------------------------
# The UDR toy problem (thesis Ch. 5, App. E)
# ------------------------------------------------------------------------------------------------

def _toy_module():
    spec = importlib.util.spec_from_file_location(
        "udr_toy_run", os.path.join(ROOT, "experiments", "udr_toy", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Slow (11 s): trains two toy models (experiments/udr_toy is the study).
@pytest.mark.slow
def test_udr_toy_soft_ball_beats_pgd_at():
    """App. E: UDR-PGD's soft ball beats PGD-AT at eps 2.0 (paper: 82.6 vs 74.5). Here with lambda
    held at the paper's Fig. 3a value 0.1; experiments/udr_toy/README.md has the adaptive runs."""
    toy = _toy_module()
    f_pgd, _, _ = toy.train("pgd_at", 0)
    f_udr, lambdas, _ = toy.train("udr_pgd_fixed0.1", 0)
    clean_pgd, robust_pgd = toy.evaluate(f_pgd, 0)
    clean_udr, robust_udr = toy.evaluate(f_udr, 0)
    assert clean_pgd > 0.95 and clean_udr > 0.95
    assert robust_udr >= robust_pgd + 0.03, (robust_udr, robust_pgd)
    assert lambdas == pytest.approx([0.1] * len(lambdas))


# ------------------------------------------------------------------------------------------------
# Issue 15: UDR's lambda (distance, schedule), App. G's pull, the matched baseline; WRM as
# Sinha et al.'s released code; DRA_A without the eigenvalue floor
# ------------------------------------------------------------------------------------------------

def test_udr_lambda_moves_under_the_defaults_and_the_linf_distance_is_a_fixed_point(net):
    """The [code] values lambda_0 = 1, tau = eta make the linf pull a hard projection (kappa = 1), so
    every example ends on the ball's surface. With the default distance (mean |delta_j|, the
    authors' code) lambda then decreases by (19); with App. G's linf distance eps - c_hat = 0 and
    lambda never moves: UDR stays PGD-AT (the trap the default avoids)."""
    params, _, x, y = net
    batch = {"image": x, "label": y}
    hp = dict(eps=0.1, step_size=0.025, steps=10)      # the studies' PGD-10 budget, tau = eta
    obj, objective = _make("udr_pgd", hp)
    _, aux = obj(params, _state(objective.init_method_state(None)), batch, jax.random.PRNGKey(0))
    m = aux["metrics"]
    assert float(m["outside"]) == 0.0 and float(m["mean_abs"]) < 0.1
    np.testing.assert_allclose(m["lambda"], 1.0 - 0.02 * (0.1 - m["mean_abs"]), rtol=1e-6)
    assert float(m["lambda"]) < 1.0
    np.testing.assert_allclose(m["linf"], 0.1, rtol=1e-5)          # logged adversary sizes
    assert float(m["l2"]) > float(m["mean_abs"]) > 0
    trap, objective = _make("udr_pgd", dict(hp, lambda_distance="threat"))
    _, aux = trap(params, _state(objective.init_method_state(None)), batch, jax.random.PRNGKey(0))
    assert float(aux["metrics"]["lambda"]) == pytest.approx(1.0, abs=1e-6)


def test_udr_code_lambda_schedule():
    """[code]: lambda <- lambda - eta_lambda (eps - mean of the batches since the last update), at
    steps 0, 10, 20, ... (the code's i % 10 == 0), on the raw distance, without the clamp at 0."""
    state = udr.init_lambda_state(1.0, "code")
    dists = np.linspace(0.01, 0.2, 25)
    lams = []
    for d in dists:
        state = udr.lambda_step(state, jnp.float32(d), jnp.float32(99.0), 0.1, 0.5, "code", 10)
        lams.append(float(state["lambda"]))
    lam1 = 1.0 - 0.5 * (0.1 - dists[0])
    lam2 = lam1 - 0.5 * (0.1 - dists[1:11].mean())
    lam3 = lam2 - 0.5 * (0.1 - dists[11:21].mean())
    np.testing.assert_allclose(lams[:10], [lam1] * 10, rtol=1e-6)
    np.testing.assert_allclose(lams[10:20], [lam2] * 10, rtol=1e-6)
    np.testing.assert_allclose(lams[20:], [lam3] * 5, rtol=1e-6)
    assert int(state["lambda_step"]) == 25 and float(state["dist_count"]) == 4
    # No clamp: far inside the ball with a large rate, lambda goes negative (the "paper" schedule
    # stops at 0).
    low = udr.lambda_step(udr.init_lambda_state(0.01, "code"), jnp.float32(0.0), jnp.float32(0.0),
                          0.1, 1.0, "code")
    assert float(low["lambda"]) == pytest.approx(0.01 - 0.1)
    paper = udr.lambda_step(udr.init_lambda_state(0.01), jnp.float32(0.0), jnp.float32(0.0), 0.1,
                            1.0)
    assert float(paper["lambda"]) == 0.0 and set(paper) == {"lambda"}


def test_udr_code_schedule_under_the_objective(net):
    params, _, x, y = net
    obj, objective = _make("udr_trades", dict(eps=0.1, step_size=0.025, steps=3, lambda_0=0.5,
                                              lambda_schedule="code", lambda_lr=0.3))
    state = _state(objective.init_method_state(None))
    assert set(state["method"]) == {"lambda", "dist_sum", "dist_count", "lambda_step"}
    lams = []
    for i in range(3):
        _, aux = obj(params, state, {"image": x, "label": y}, jax.random.PRNGKey(i))
        state = _state(aux["state"]["method"])
        lams.append(float(aux["metrics"]["lambda"]))
    m = aux["metrics"]
    assert lams[0] < 0.5 and lams[1] == lams[0] == lams[2]   # updated at step 0 only
    assert float(state["method"]["dist_count"]) == 2 and int(state["method"]["lambda_step"]) == 3
    with pytest.raises(ValueError, match="lambda_schedule"):
        _make("udr_pgd", dict(eps=0.1, step_size=0.01, steps=1, lambda_schedule="every"))


def test_udr_single_pixel_pull_of_app_g(net):
    """pull="linf_single": the linf cost's gradient is one-hot at the largest |delta_i|, so one pixel
    per example is pulled (by the per-pixel pull's step), the others stay where the push put them."""
    d = jnp.array([[0.05, 0.2, -0.3, -0.1], [0.12, -0.11, 0.0, 0.05]])
    out = udr.pull_linf_single(d, 0.1, 1.0)
    np.testing.assert_allclose(out, [[0.05, 0.2, -0.1, -0.1], [0.1, -0.11, 0.0, 0.05]], rtol=1e-6)
    np.testing.assert_allclose(udr.pull_linf_single(d, 0.1, 0.5)[0, 2], -0.2, rtol=1e-6)
    inside = jnp.array([[0.05, -0.08]])
    np.testing.assert_allclose(udr.pull_linf_single(inside, 0.1, 1.0), inside)
    _, f, x, y = net
    kw = dict(key=jax.random.PRNGKey(0), lam=jnp.float32(1.0), eps=0.1, step_size=0.01, steps=5,
              tau=0.01)
    single = udr.udr_attack(f, x, y, pull="linf_single", **kw)
    full = udr.udr_attack(f, x, y, pull="linf", **kw)
    # kappa = 1: the per-pixel pull projects every pixel, the single pull only one per step.
    assert float(jnp.abs(full - x).max()) <= 0.1 + 1e-6
    excess = np.abs(np.asarray(single - x)) > 0.1 + 1e-6
    assert excess.any(axis=1).all() and excess.sum() > x.shape[0]
    with pytest.raises(ValueError, match="linf_single"):
        udr.udr_attack(f, x, y, pull="linf_single", norm="l2", **kw)


def test_pgd_at_with_eq5_loss_is_the_udr_pgd_hard_ball_baseline(net):
    """pgd_at(beta=b): CE(x) + b CE(x_pgd), twice the convex mix = 0.5 loss at b = 1 (same keys);
    udr_pgd in its hard-ball limit (lambda huge) trains on the same loss at its PGD point."""
    params, f, x, y = net
    batch = {"image": x, "label": y}
    pgd_hp = dict(eps=0.1, step_size=0.025, steps=4)
    eq5, _ = _make("pgd_at", dict(pgd_hp, beta=1.0))
    mixed, _ = _make("pgd_at", dict(pgd_hp, mix=0.5))
    key = jax.random.PRNGKey(4)
    l_eq5 = eq5(params, _state(), batch, key)[0]
    np.testing.assert_allclose(l_eq5, 2 * mixed(params, _state(), batch, key)[0], rtol=1e-6)
    k_attack = jax.random.split(key, 4)[0]
    x_pgd = attacks.pgd(f, x, y, key=k_attack, **pgd_hp)
    ce = lambda z: losses.cross_entropy(f(z), y).mean()
    b3, _ = _make("pgd_at", dict(pgd_hp, beta=3.0))
    np.testing.assert_allclose(b3(params, _state(), batch, key)[0], ce(x) + 3 * ce(x_pgd),
                               rtol=1e-5)
    hard, objective = _make("udr_pgd", dict(pgd_hp, lambda_0=1e4, lambda_lr=0.0, beta=3.0))
    l_udr = hard(params, _state(objective.init_method_state(None)), batch, key)[0]
    k_udr_attack = jax.random.split(jax.random.split(key, 3)[0])[0]
    x_udr = attacks.pgd(f, x, y, key=k_udr_attack, **pgd_hp)
    np.testing.assert_allclose(l_udr, ce(x) + 3 * ce(x_udr), rtol=1e-5)
    with pytest.raises(ValueError, match="either mix"):
        objectives.make_objective("pgd_at", _mlp_apply_fn, dict(pgd_hp, mix=0.5, beta=1.0))


def _np_sinha(f, x, y, gamma, steps, smoothing=0.1):
    """Sinha et al.'s attacks_tf.wrm in NumPy (float64): x + eps grad(eps = 0.5 / gamma), then
    x' += 1 / sqrt(t + 2) (eps grad - (x' - x)), with the label-smoothed CE."""
    x64 = np.asarray(x, np.float64)
    k = 5
    target = np.full((x.shape[0], k), smoothing / (k - 1))
    target[np.arange(x.shape[0]), np.asarray(y)] = 1 - smoothing
    g = jax.grad(lambda z: jnp.sum(-jnp.sum(jnp.asarray(target, jnp.float32)
                                            * jax.nn.log_softmax(f(z)), -1)))
    grad = lambda z: np.asarray(g(jnp.asarray(z, jnp.float32)), np.float64)
    e = 0.5 / gamma
    xa = x64 + e * grad(x64)
    for t in range(steps):
        xa = xa + 1 / np.sqrt(t + 2) * (e * grad(xa) - (xa - x64))
    return xa


def test_wrm_sinha_code_variant_is_the_released_recursion(net):
    params, f, x, y = net
    x_edge = x.at[:, :3].set(0.999)          # near the box: the released attack does not clip
    gamma = 0.5 / 1.3                         # the released MNIST run: eps = 1.3
    out = wrm(f, x_edge, y, gamma=gamma, steps=6, variant="sinha_code")
    ref = _np_sinha(f, x_edge, y, gamma, 6)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)   # float32 vs float64 steps
    assert float(out.max()) > 1.0 or float(out.min()) < 0.0
    # Label smoothing 0 and s: -sum target log p.
    from advjax.attacks.wrm import smoothed_cross_entropy
    logits = f(x)
    np.testing.assert_allclose(smoothed_cross_entropy(logits, y, 0.0),
                               losses.cross_entropy(logits, y), rtol=1e-6)
    # The objective trains on the smoothed CE at the released attack's point.
    obj, _ = _make("wrm", dict(gamma=gamma, steps=6, variant="sinha_code"))
    loss, _ = obj(params, _state(), {"image": x_edge, "label": y}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, smoothed_cross_entropy(f(out), y, 0.1).mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="sinha_code"):
        wrm(f, x, y, gamma=gamma, steps=2, variant="sinha_code", cost="linf")
    with pytest.raises(ValueError, match="gamma > 0"):
        wrm(f, x, y, gamma=0.0, steps=2, variant="sinha_code")
    with pytest.raises(ValueError, match="step_size"):
        wrm(f, x, y, gamma=1.0, steps=2)


def test_theorem2_without_the_floor_is_the_paper():
    """psi_floor = 0: Theorem 2 exactly as stated on a full-rank scatter (the floor never bound), and
    a finite (huge) Lambda on a rank-deficient one, where psi_floor > 0 caps the condition number."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4)) * np.array([3.0, 1.0, 0.3, 0.1])
    S = jnp.asarray(z.T @ z, jnp.float32)
    A0, lam0 = dra.theorem2_matrix(S, 2.0, psi_floor=0.0)
    psi = np.linalg.eigvalsh(np.asarray(S, np.float64))
    np.testing.assert_allclose(np.sort(lam0), np.sort(dra.theorem2_eigenvalues(jnp.asarray(psi),
                                                                               2.0)), rtol=1e-4)
    _, lam_def = dra.theorem2_matrix(S, 2.0)
    np.testing.assert_allclose(lam0, lam_def, rtol=1e-5)     # 1e-6 did not bind either
    _, lam_rd = dra.theorem2_matrix(jnp.diag(jnp.array([1.0, 0.0, 0.0])), 2.0, psi_floor=0.0)
    assert np.all(np.isfinite(lam_rd)) and float(lam_rd.max() / lam_rd.min()) > 1e6
    objectives.make_objective("dra_mahalanobis", _mlp_apply_fn, dict(
        gamma=1.0, step_size=0.1, steps=1, input_dim=12, psi_floor=0.0))
