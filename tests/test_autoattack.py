"""AutoAttack: Square and FAB (closed forms, invariants, the threat-model contract), the cascade of
`advjax.evaluate.autoattack`, its sanity checks, and the guards against silently wrong numbers in
`robust_accuracy` and `autoattack`. Cross-checks against the reference implementation on identical
weights are in tests/test_peers.py."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import sys

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from advjax import attacks, evaluate, losses
from conftest import assert_in_threat_model, fast_jit, init_mlp, mlp_apply, random_batch

# The package re-exports the functions `fab` and `square` under the modules' names.
fab_lib = importlib.import_module("advjax.attacks.fab")
square_lib = importlib.import_module("advjax.attacks.square")

# A random MLP on 6x6x1 images with 5 classes, for the contract and invariance tests.
_IMG_PARAMS = init_mlp(jax.random.PRNGKey(3), 36, 16, 5, scale=3.0)


def img_mlp(x):
    return mlp_apply(_IMG_PARAMS, x.reshape(x.shape[0], -1))


def images(seed, n=6, side=6, classes=5):
    x, y = random_batch(jax.random.PRNGKey(seed), (n, side, side, 1), classes)
    return x, y


# ------------------------------------------------------------------------------------------------
# FAB's projection (Sec. 3.1): exact, against independent solvers
# ------------------------------------------------------------------------------------------------

def _linf_lp(t, w, c, lo, hi):
    """min ||d||_inf s.t. c + <w, d> = 0, lo <= t + d <= hi, by scipy's LP solver (or None)."""
    from scipy.optimize import linprog
    n = len(t)
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    res = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * n),
                  A_eq=np.r_[w, 0.0][None], b_eq=[-c],
                  bounds=[(lo - t[i], hi - t[i]) for i in range(n)] + [(0, None)])
    return res.fun if res.success else None


def _l2_qp(t, w, c, lo, hi):
    """min ||d||_2 by SLSQP, or None if it did not reach the hyperplane."""
    from scipy.optimize import minimize
    n = len(t)
    res = minimize(lambda z: z @ z, np.zeros(n), jac=lambda z: 2 * z, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda z: c + w @ z, "jac": lambda z: w}],
                   bounds=[(lo - t[i], hi - t[i]) for i in range(n)], options={"ftol": 1e-14})
    ok = res.success and abs(c + w @ res.x) < 1e-7
    return float(np.sqrt(res.fun)) if ok else None


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_minimal_norm_point_of_the_hyperplane_in_the_box(norm):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    n, rows = 7, 40
    lo, hi = -0.5, 1.0
    t = rng.uniform(lo, hi, (rows, n))
    w = rng.normal(size=(rows, n)) * (rng.uniform(size=(rows, n)) > 0.2)  # some w_i = 0
    c = rng.normal(size=rows) * 0.8
    d = np.asarray(jax.jit(functools.partial(fab_lib.project_to_hyperplane, norm=norm, lo=lo,
                                             hi=hi))(jnp.asarray(t, jnp.float32),
                                                     jnp.asarray(w, jnp.float32),
                                                     jnp.asarray(c, jnp.float32)), np.float64)
    solver = _linf_lp if norm == "linf" else _l2_qp
    checked = 0
    for i in range(rows):
        assert np.all(t[i] + d[i] >= lo - 1e-6) and np.all(t[i] + d[i] <= hi + 1e-6)
        assert np.all(d[i][w[i] == 0] == 0)
        best = solver(t[i], w[i], c[i], lo, hi)
        ours = np.abs(d[i]).max() if norm == "linf" else np.linalg.norm(d[i])
        if best is None:  # infeasible: the box corner, as close to the hyperplane as the box allows
            continue
        checked += 1
        assert abs(c[i] + w[i] @ d[i]) < 1e-5, "not on the hyperplane"
        assert ours <= best * (1 + 1e-4) + 1e-6, (ours, best)
    assert checked >= rows // 2


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_agrees_with_the_reference_code(norm):
    fp = pytest.importorskip("pyautoattack.fab_projections",
                             reason="pyautoattack is not installed (scripts/setup.sh installs it)")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    rows, n = 64, 50
    t = rng.uniform(0, 1, (rows, n)).astype(np.float32)
    w = rng.normal(size=(rows, n)).astype(np.float32)
    c = (rng.normal(size=rows) * 2).astype(np.float32)
    b = (w * t).sum(1) - c  # the reference's hyperplane <w, z> = b
    ref = {"linf": fp.projection_linf, "l2": fp.projection_l2}[norm]
    theirs = ref(torch.tensor(t), torch.tensor(w), torch.tensor(b)).numpy()
    ours = np.asarray(fab_lib.project_to_hyperplane(jnp.asarray(t), jnp.asarray(w), jnp.asarray(c),
                                                    norm=norm))
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_step_on_a_linear_model_lands_exactly_on_the_decision_boundary(norm):
    """For an affine model the linearization is exact: with eta = 1 and alpha_max = 0 the first
    step from x solves min ||d|| s.t. f_s(x + d) = 0 for the closest class s, so x + d lies on the
    boundary between y and s (when the box does not bind)."""
    rng = np.random.default_rng(2)
    d_in, classes, n = 16, 4, 32
    w = jnp.asarray(rng.normal(size=(d_in, classes)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=classes), jnp.float32)
    f = lambda x: x.reshape(x.shape[0], -1) @ w + bias
    x = jnp.asarray(rng.uniform(0.3, 0.7, (n, 4, 4, 1)), jnp.float32)
    y = jnp.argmax(f(x), -1)
    run = jax.jit(lambda x, y: fab_lib._fab_run(
        f, x, y, x, None, eps=jnp.inf, norm=norm, steps=1, alpha_max=0.0, eta=1.0, beta=1.0,
        lo=-10.0, hi=10.0, todo=jnp.ones(n, bool)))
    # One iteration without the backward step's effect (beta = 1); read x^(1) from the boundary
    # search directly: the returned x_out is x^(1) where it is misclassified or on the boundary.
    _, df, dg = fab_lib._boundary(f, x, y, None)
    dist = jnp.abs(df) / (jnp.sum(jnp.abs(dg), -1) if norm == "linf" else
                          jnp.linalg.norm(dg, axis=-1))
    s = jnp.argmin(dist, axis=1)
    z = f(x)
    flat = x.reshape(n, -1)
    wk = jnp.take_along_axis(dg, s[:, None, None], axis=1)[:, 0]
    ck = jnp.take_along_axis(df, s[:, None], axis=1)[:, 0]
    step = fab_lib.project_to_hyperplane(flat, wk, ck, norm=norm, lo=-10.0, hi=10.0)
    x1 = (flat + step).reshape(x.shape)
    z1 = np.asarray(f(x1), np.float64)
    gap = np.abs(z1[np.arange(n), np.asarray(s)] - z1[np.arange(n), np.asarray(y)])
    scale = np.abs(np.asarray(z)).max()
    assert gap.max() < 1e-5 * scale, gap.max()
    # and the norm is the distance formula |f_s| / ||w_s - w_y||_q of the closest hyperplane
    expected = np.asarray(jnp.min(dist, axis=1))
    got = np.asarray(jnp.max(jnp.abs(step), 1) if norm == "linf" else jnp.linalg.norm(step, axis=1))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # the full run's first iterate is adversarial or on the boundary, at that distance
    x_out, best = run(x, y)
    found = np.isfinite(np.asarray(best))
    np.testing.assert_allclose(np.asarray(best)[found], expected[found], rtol=1e-3)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_budget_on_a_linear_model(norm):
    """Affine binary-boundary model: the minimal adversarial norm is known in closed form, r* =
    min_l |f_l(x)| / ||w_l - w_y||_q. No attack can succeed below it; FAB succeeds just above it."""
    rng = np.random.default_rng(3)
    d_in, classes, n = 16, 3, 24
    w = jnp.asarray(rng.normal(size=(d_in, classes)), jnp.float32)
    f = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jnp.asarray(rng.uniform(0.4, 0.6, (n, 4, 4, 1)), jnp.float32)
    y = jnp.argmax(f(x), -1)
    _, df, dg = fab_lib._boundary(f, x, y, None)
    q = (jnp.sum(jnp.abs(dg), -1) if norm == "linf" else jnp.linalg.norm(dg, axis=-1))
    r_star = np.asarray(jnp.min(jnp.abs(df) / q, axis=1))
    for factor, expect_broken in ((0.98, False), (1.1, True)):
        eps = jnp.asarray(r_star * factor, jnp.float32).reshape(n, 1, 1, 1)
        # One example at a time (eps differs per example): vmap over the batch.
        one = lambda xi, yi, ei: fab_lib.fab(f, xi[None], yi[None], eps=ei, norm=norm,
                                             bounds=(-10.0, 10.0))[0]
        x_adv = jax.jit(jax.vmap(one))(x, y, eps.reshape(n))
        broken = np.asarray(jnp.argmax(f(x_adv), -1) != y)
        if expect_broken:
            assert broken.mean() >= 0.9, broken.mean()
        else:
            assert not broken.any()


# ------------------------------------------------------------------------------------------------
# Square: schedule, pattern, no gradients, determinism, queries
# ------------------------------------------------------------------------------------------------

def test_square_schedule_halves_p_at_the_published_iterations():
    p = square_lib.p_schedule(10000, 0.8, rescale_schedule=False)
    assert p[0] == p[10] == 0.8 and p[11] == 0.4 and p[50] == 0.4 and p[51] == 0.2
    assert p[8000] == 0.8 / 256 and p[8001] == 0.8 / 512
    q = square_lib.p_schedule(1000, 0.8, rescale_schedule=True)  # halvings at 1, 5, 20, ... of 1000
    assert q[1] == 0.8 and q[2] == 0.4 and q[6] == 0.2 and q[999] == 0.8 / 512
    sides = square_lib.window_sides(5000, 0.8, False, 28, 28, "linf")
    assert sides[0] == 25 and sides.min() >= 1  # round(sqrt(0.8 * 784)) = 25
    sides2 = square_lib.window_sides(5000, 0.8, False, 28, 28, "l2")
    assert np.all(sides2 % 2 == 1) and sides2.min() >= 3


def test_square_pattern_matches_the_reference_code():
    sq = pytest.importorskip("pyautoattack.square",
                             reason="pyautoattack is not installed (scripts/setup.sh installs it)")
    torch = pytest.importorskip("torch")
    ref = sq.SquareAttack(lambda z: z, norm="L2", eps=1.0, device="cpu")
    for s in range(2, 29):
        theirs = torch.zeros([s, s])
        theirs[:s // 2] = ref.eta_rectangles(s // 2, s)
        theirs[s // 2:] = -1.0 * ref.eta_rectangles(s - s // 2, s)
        theirs = (theirs / (theirs ** 2).sum().sqrt()).numpy()
        ours = np.asarray(square_lib.pseudo_gaussian_square(jnp.int32(s), 28))
        np.testing.assert_allclose(ours[:s, :s], theirs, atol=1e-6)
        assert not ours[s:].any() and not ours[:, s:].any()
        np.testing.assert_allclose(square_lib.pseudo_gaussian_square(s, s, xp=np), theirs,
                                   atol=1e-6)


def _no_gradient(f):
    """f, whose derivative (forward or reverse) raises: a gradient-free attack must never ask."""
    @jax.custom_jvp
    def g(x):
        return f(x)

    @g.defjvp
    def _(primals, tangents):
        raise AssertionError("the attack differentiated logits_fn")
    return g


@pytest.mark.parametrize("norm,variant", [("linf", "paper"), ("l2", "autoattack")])
def test_square_never_differentiates_and_is_deterministic_given_the_key(norm, variant):
    x, _ = images(0, n=8)
    y = jnp.argmax(img_mlp(x), -1).at[:2].add(1) % 5  # 6 of 8 correctly classified
    f = _no_gradient(img_mlp)
    eps = 0.1 if norm == "linf" else 0.5
    run = fast_jit(lambda x, y, k: square_lib.square_run(f, x, y, key=k, eps=eps, norm=norm,
                                                         n_queries=60, variant=variant))
    a = run(x, y, jax.random.PRNGKey(1))
    b = run(x, y, jax.random.PRNGKey(1))
    c = run(x, y, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a.x_adv), np.asarray(b.x_adv))
    assert not np.array_equal(np.asarray(a.x_adv), np.asarray(c.x_adv))
    assert_in_threat_model(a.x_adv, x, eps, norm)
    # per-example queries: 0 for examples misclassified at x, else <= 1 + n_queries, and an example
    # that is still correctly classified used them all
    correct = np.asarray(jnp.argmax(img_mlp(x), -1) == y)
    q = np.asarray(a.queries)
    assert np.all(q[~correct] == 0) and np.all(q <= 61)
    robust = np.asarray(a.margin) > 0
    assert np.all(q[robust & correct] == 61)


def test_square_queries_stop_at_success():
    """A model that every example's initialization fools: one query each, and the loop ends."""
    x, _ = images(4, n=5)
    y = jnp.zeros(5, jnp.int32)

    def f(z):  # class 0 at x, class 1 anywhere else
        moved = (jnp.max(jnp.abs(z - x), axis=(1, 2, 3)) > 0).astype(jnp.float32)
        return jnp.stack([1 - moved, moved] + [jnp.zeros_like(moved)] * 3, axis=1)

    res = square_lib.square_run(f, x, y, key=jax.random.PRNGKey(0), eps=0.1, n_queries=50)
    np.testing.assert_array_equal(np.asarray(res.queries), 1)
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) == 1)


_CONTRACT = {}


def _contract_fn(name, norm, variant):
    if (name, norm, variant) not in _CONTRACT:
        if name == "square":
            fn = lambda x, y, k, eps, lo, hi: square_lib.square(
                img_mlp, x, y, key=k, eps=eps, norm=norm, n_queries=25, variant=variant,
                bounds=(lo, hi))
        else:
            fn = lambda x, y, k, eps, lo, hi: fab_lib.fab(
                img_mlp, x, y, key=k, eps=eps, norm=norm, steps=8, restarts=2,
                targeted=variant == "targeted", num_target_classes=2, bounds=(lo, hi))
        _CONTRACT[name, norm, variant] = fast_jit(fn, static_argnums=(4, 5))
    return _CONTRACT[name, norm, variant]


@pytest.mark.parametrize("name,variant,box", [("square", "paper", (0.0, 1.0)),
                                              ("square", "autoattack", (-1.0, 2.0)),
                                              ("fab", "untargeted", (-1.0, 2.0)),
                                              ("fab", "targeted", (0.0, 1.0))])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(data=st.data())
def test_square_and_fab_stay_in_ball_and_box(name, variant, box, data):
    norm = data.draw(st.sampled_from(["linf", "l2"]), label="norm")
    factor = data.draw(st.sampled_from([0.0, 0.3, 1.0, 4.0]), label="eps / radius")
    binary = data.draw(st.booleans(), label="inputs on the box corners")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    x, y = images(seed)
    lo, hi = box
    x = lo + (hi - lo) * (jnp.round(x) if binary else x)
    eps = factor * (0.1 if norm == "linf" else 0.6)
    x_adv = _contract_fn(name, norm, variant)(x, y, jax.random.PRNGKey(seed), eps, lo, hi)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    scale = (x_adv - lo) / (hi - lo)
    assert_in_threat_model(scale, (x - lo) / (hi - lo), eps / (hi - lo), norm)
    if eps == 0.0:
        np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


def test_square_and_fab_validate_their_arguments():
    x, y = images(0)
    k = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="norm"):
        square_lib.square(img_mlp, x, y, key=k, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="variant"):
        square_lib.square(img_mlp, x, y, key=k, eps=0.1, variant="torch")
    with pytest.raises(ValueError, match="NHWC"):
        square_lib.square(lambda z: z @ jnp.ones((36, 5)), x.reshape(6, 36), y, key=k, eps=0.1)
    with pytest.raises(ValueError, match="bounds"):
        square_lib.square(img_mlp, x, y, key=k, eps=0.1, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="box"):
        fab_lib.fab(img_mlp, x + 2.0, y, eps=0.1, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"bounds=\[-1, 1\]"):
        square_lib.square(img_mlp, x + 2.0, y, key=k, eps=0.1, bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match="key"):
        fab_lib.fab(img_mlp, x, y, eps=0.1, restarts=2)
    with pytest.raises(ValueError, match="num_target_classes"):
        fab_lib.fab_t(img_mlp, x, y, eps=0.1, num_target_classes=5)
    assert attacks.get_attack("square") is square_lib.square
    assert attacks.get_attack("fab_t") is fab_lib.fab_t


# ------------------------------------------------------------------------------------------------
# The numerics behind "0% robust where the truth is 100%"
# ------------------------------------------------------------------------------------------------

def test_cross_entropy_gradient_stays_finite_for_huge_logits_under_jit():
    """XLA fuses the logits' last multiply into the loss and contracts it with the max-subtraction
    into an FMA, so z - max(z) came out positive and softmax overflowed to NaN (see losses.py)."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
    x = jnp.asarray(rng.uniform(size=(64, 12)), jnp.float32)
    for scale in (1.0, 3e10, 1e30):
        f = lambda v: (v @ w) * scale
        y = (jnp.argmax(f(x), -1) + 1) % 5
        g = jax.jit(jax.grad(lambda v: losses.cross_entropy(f(v), y).sum()))(x)
        eager = jax.grad(lambda v: -jnp.sum(jax.nn.log_softmax(f(v))[jnp.arange(64), y]))(x)
        assert np.all(np.isfinite(g)), scale
        np.testing.assert_allclose(g, eager, rtol=1e-4, atol=1e-6 * float(jnp.abs(eager).max()))
        kl = jax.jit(jax.grad(lambda v: losses.kl_divergence(f(x), f(v)).sum()))(x + 0.01)
        assert np.all(np.isfinite(kl)), scale


# ------------------------------------------------------------------------------------------------
# The cascade and its checks on a small trained model (sklearn digits as 8x8 images)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_images(digits_mlp):
    f, x, y = digits_mlp
    img = lambda z: f(z.reshape(z.shape[0], -1))
    return img, np.asarray(x).reshape(-1, 8, 8, 1)[:192], np.asarray(y)[:192]


def cheap_stages(norm, eps, version="standard"):
    """The version's stages with small budgets (the checks do not depend on them)."""
    return evaluate.autoattack_stages(norm, eps, version, steps=10, n_queries=300)


def test_autoattack_cascade_counts_and_examples(digits_images):
    f, x, y = digits_images
    res = evaluate.autoattack(f, (x, y), norm="linf", eps=0.08, key=jax.random.PRNGKey(0),
                              batch_size=64, return_examples=True,
                              stages=cheap_stages("linf", 0.08), warn=False)
    assert list(res.stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accs = [res.clean] + list(res.stages.values())
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs  # a cascade only removes examples
    pred_clean = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1))
    assert res.clean == np.mean(pred_clean == y)
    assert np.array_equal(res.broken_by == 0, pred_clean != y)
    for k, name in enumerate(res.stages, start=1):
        assert res.stages[name] == np.mean((res.broken_by < 0) | (res.broken_by > k))
    assert res.robust == np.mean(res.correct)
    # the returned examples: inside the threat model, misclassified exactly where a stage broke them
    assert_in_threat_model(res.x_adv, x, 0.08, "linf")
    pred_adv = np.asarray(jnp.argmax(f(jnp.asarray(res.x_adv)), -1))
    broken = res.broken_by > 0
    assert np.all(pred_adv[broken] != y[broken])
    assert np.array_equal(res.x_adv[res.broken_by < 0], x[res.broken_by < 0])
    assert res.robust < res.clean  # the model is not robust at this radius
    assert res.checks == {"probability_outputs": 0, "randomized": 0, "zero_gradient": 0,
                          "broken_after_apgd": res.checks["broken_after_apgd"]}
    md = res.markdown()
    for name in ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]:
        assert f"| {name} |" in md
    d = res.as_dict()
    assert d["autoattack"] == res.robust and d["autoattack/apgd-t"] == res.stages["apgd-t"]
    json.dumps(d)


def test_autoattack_with_nothing_left_to_attack():
    """Every example misclassified at x: the stages have nothing to run on and report 0."""
    x, _ = images(0, n=8)
    always_0 = lambda z: jnp.zeros((z.shape[0], 5)).at[:, 0].set(1.0) + 0.0 * jnp.sum(z)
    res = evaluate.autoattack(always_0, (np.asarray(x), np.ones(8, np.int32)), norm="linf",
                              eps=0.1, key=jax.random.PRNGKey(0), batch_size=4, warn=False)
    assert res.clean == 0.0 and list(res.stages.values()) == [0.0] * 4
    assert np.all(res.broken_by == 0)


def test_autoattack_versions_and_their_published_hyperparameters():
    std = dict(evaluate.autoattack_stages("linf", 0.3, "standard"))
    assert list(std) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert std["apgd-ce"].keywords == dict(eps=0.3, norm="linf", steps=100, loss="ce", restarts=1,
                                           bounds=(0.0, 1.0))
    assert std["apgd-t"].keywords["num_target_classes"] == 9
    assert std["fab-t"].keywords["targeted"] and std["fab-t"].keywords["num_target_classes"] == 9
    assert std["square"].keywords["n_queries"] == 5000 and std["square"].keywords["p_init"] == 0.8
    assert std["square"].keywords["variant"] == "autoattack"
    assert not std["square"].keywords["rescale_schedule"]
    plus = dict(evaluate.autoattack_stages("l2", 0.5, "plus"))
    assert list(plus) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus["apgd-ce"].keywords["restarts"] == 5 and plus["fab"].keywords["restarts"] == 5
    assert dict(evaluate.autoattack_stages("linf", 0.3, num_classes=4))["apgd-t"].keywords[
        "num_target_classes"] == 3
    with pytest.raises(ValueError, match="version"):
        evaluate.autoattack_stages("linf", 0.3, "fast")
    with pytest.raises(ValueError, match="norm"):
        evaluate.autoattack_stages("l1", 0.3)


def test_probability_outputs_trigger_their_warning(digits_images):
    f, x, y = digits_images
    soft = lambda z: jax.nn.softmax(f(z), axis=-1)
    stages = [("apgd-ce", functools.partial(attacks.apgd_ce, eps=0.05, steps=5))]
    with pytest.warns(UserWarning, match="probabilities"):
        res = evaluate.autoattack(soft, (x[:64], y[:64]), norm="linf", eps=0.05,
                                  key=jax.random.PRNGKey(0), batch_size=64, stages=stages)
    assert res.checks["probability_outputs"] == 64
    assert any("all 64 rows" in w for w in res.warnings)


def test_randomized_model_triggers_its_warning(digits_images):
    f, x, y = digits_images
    rng = np.random.default_rng(0)

    def noisy(z):  # fresh noise at every call, also under jit (a host callback)
        noise = jax.pure_callback(lambda: rng.normal(size=(z.shape[0], 10)).astype(np.float32),
                                  jax.ShapeDtypeStruct((z.shape[0], 10), jnp.float32))
        return f(z) + 0.5 * noise

    stages = [("apgd-ce", functools.partial(attacks.apgd_ce, eps=0.05, steps=2))]
    res = evaluate.autoattack(noisy, (x[:64], y[:64]), norm="linf", eps=0.05,
                              key=jax.random.PRNGKey(0), batch_size=64, stages=stages, warn=False)
    assert res.checks["randomized"] == 64
    assert any("randomized" in w and "64 of 64" in w for w in res.warnings)


def test_zero_gradient_model_is_flagged_and_broken_by_square(digits_images):
    """jnp.round inside the model: every input gradient is exactly zero, APGD cannot move, and the
    gradient-free Square Attack breaks examples that APGD left: both warnings name their counts."""
    f, x, y = digits_images
    quantized = lambda z: f(jnp.round(z * 4) / 4)
    x = np.round(x * 4) / 4 + 0.06  # every pixel 0.06 above a level: 0.07 crosses a rounding point
    x = np.clip(x, 0, 1).astype(np.float32)
    stages = [("apgd-ce", functools.partial(attacks.apgd_ce, eps=0.07, steps=10)),
              ("square", functools.partial(attacks.square, eps=0.07, n_queries=300,
                                           variant="autoattack", rescale_schedule=False))]
    with pytest.warns(UserWarning, match="zero input gradient"):
        res = evaluate.autoattack(quantized, (x, y), norm="linf", eps=0.07,
                                  key=jax.random.PRNGKey(0), batch_size=64, stages=stages)
    assert res.checks["zero_gradient"] == len(x)
    square_broke = int(np.sum(res.broken_by == 2))
    assert square_broke >= 5, res.markdown()
    assert res.checks["broken_after_apgd"] == square_broke
    assert any(f"square {square_broke}" in w and "masking" in w for w in res.warnings)
    assert "WARNING" in res.markdown()


# ------------------------------------------------------------------------------------------------
# Guards: errors naming the cause, never a number
# ------------------------------------------------------------------------------------------------

PGD = dict(name="pgd", eps=0.05, step_size=0.02, steps=3)


def test_huge_logits_give_the_true_robust_accuracy_not_nan(digits_images):
    """Logits x 1e10: the predictions are those of the unscaled model. CE attacks used to return NaN
    images (reported as 0% robust accuracy); now they see the saturated softmax's exactly zero
    gradient, which the zero-gradient check reports, and the scale-invariant attacks (DLR, FAB)
    give the unscaled model's numbers."""
    f, x, y = digits_images
    x, y = x[:64], y[:64]
    huge = lambda z: f(z) * 1e10
    key = jax.random.PRNGKey(0)
    specs = [dict(name="apgd", label="apgd-dlr", eps=0.08, steps=10, loss="dlr"),
             dict(name="fab", eps=0.08, steps=10),
             dict(name="apgd_ce", eps=0.08, steps=10)]
    a = evaluate.robust_accuracy(huge, (x, y), specs, key=key, batch_size=64)
    b = evaluate.robust_accuracy(f, (x, y), specs[:1], key=key, batch_size=64)
    assert a.clean == b.clean
    assert abs(a.attacks["apgd-dlr"] - b.attacks["apgd-dlr"]) <= 2 / 64
    assert a.attacks["fab"] < a.clean
    assert a.attacks["apgd-dlr"] < a.clean
    assert a.attacks["apgd_ce"] > 0.0  # was 0.0: NaN images scored as class 0
    _, finite, zero = jax.jit(functools.partial(evaluate._clean_pass, huge))(jnp.asarray(x),
                                                                             jnp.asarray(y))
    assert np.all(finite) and np.sum(zero) >= 0.9 * a.clean * len(x)


def test_nan_logits_are_an_error(digits_images):
    f, x, y = digits_images
    nan_some = lambda z: jnp.where(jnp.arange(z.shape[0])[:, None] == 3, jnp.nan, f(z))
    with pytest.raises(ValueError, match="non-finite logits.*1 of 64 clean"):
        evaluate.robust_accuracy(nan_some, (x[:64], y[:64]), [PGD], key=jax.random.PRNGKey(0),
                                 batch_size=64)
    with pytest.raises(ValueError, match="non-finite logits"):
        evaluate.autoattack(nan_some, (x[:64], y[:64]), norm="linf", eps=0.05,
                            key=jax.random.PRNGKey(0), batch_size=64)


@pytest.mark.parametrize("bad,match", [
    (lambda f, x, y, key: x * jnp.nan, "non-finite values"),
    (lambda f, x, y, key: jnp.clip(x + 0.2, 0, 1), "outside the linf ball"),
    (lambda f, x, y, key: x + 0.01, "outside the box"),
])
def test_attack_outputs_that_cannot_be_scored_are_errors(digits_images, bad, match):
    f, x, y = digits_images
    attack = _with_eps(bad, 0.05)
    with pytest.raises(ValueError, match=match):
        evaluate.robust_accuracy(f, (x[:64], y[:64]), {"bad": attack}, key=jax.random.PRNGKey(0),
                                 batch_size=64)
    with pytest.raises(ValueError, match=match):
        evaluate.autoattack(f, (x[:64], y[:64]), norm="linf", eps=0.05, key=jax.random.PRNGKey(0),
                            batch_size=64, stages=[("bad", attack)], warn=False)


def _with_eps(fn, eps, **keywords):
    """A partial carrying eps (how `threat_of` reads an attack's ball) and e.g. bounds."""
    def attack(logits_fn, x, y, *, key, eps, bounds=(0.0, 1.0)):
        return fn(logits_fn, x, y, key)
    return functools.partial(attack, eps=eps, **keywords)


def test_the_box_of_the_guards_is_each_attacks_bounds(digits_images):
    """Data in [-1, 1] (bounds=(-1, 1)): the identity attack is valid there (the fixed [0, 1] box
    would call its output invalid); an output above 1 is outside *its* box; and the data check uses
    the attacks' box too. AutoAttack hands its `bounds` to every stage."""
    f, x, y = digits_images
    g = lambda z: f((z + 1.0) / 2.0)
    xs, ys = 2.0 * x[:64] - 1.0, y[:64]
    box = (-1.0, 1.0)
    identity = _with_eps(lambda f, x, y, key: x, 0.05, bounds=box)
    res = evaluate.robust_accuracy(g, (xs, ys), {"id": identity}, key=jax.random.PRNGKey(0),
                                   batch_size=64)
    assert res.attacks["id"] == res.clean
    spec = dict(name="square", eps=0.1, n_queries=20, bounds=box)
    res = evaluate.robust_accuracy(g, (xs, ys), [spec], key=jax.random.PRNGKey(0), batch_size=64)
    assert res.attacks["square"] <= res.clean
    above = _with_eps(lambda f, x, y, key: jnp.clip(x + 0.01, -1.0, 1.01), 0.05, bounds=box)
    with pytest.raises(ValueError, match=r"outside the box \[-1.0, 1.0\]"):
        evaluate.robust_accuracy(g, (xs, ys), {"up": above}, key=jax.random.PRNGKey(0),
                                 batch_size=64)
    with pytest.raises(ValueError, match=r"x must lie in the box bounds=\[0, 1\]"):
        evaluate.robust_accuracy(g, (xs, ys), {"id": _with_eps(lambda f, x, y, key: x, 0.05)},
                                 key=jax.random.PRNGKey(0), batch_size=64)
    out = evaluate.autoattack(g, (xs, ys), norm="linf", eps=0.05, key=jax.random.PRNGKey(0),
                              batch_size=64, stages=[("id", identity)], warn=False, bounds=box)
    assert out.robust == out.clean
    with pytest.raises(ValueError, match=r"bounds=\[0, 1\]"):
        evaluate.autoattack(g, (xs, ys), norm="linf", eps=0.05, key=jax.random.PRNGKey(0),
                            batch_size=64, stages=[("id", identity)], warn=False)
    for version in ("standard", "plus"):
        for name, stage in evaluate.autoattack_stages("l2", 0.5, version, bounds=(0, 255)):
            assert evaluate.threat_of(stage) == (0.5, "l2", (0.0, 255.0)), name


@pytest.mark.parametrize("labels,match", [
    (lambda y: y.astype(np.float32), "integer class labels.*float32"),
    (lambda y: y.astype(np.float64) + 0.5, "integer class labels"),
    (lambda y: y.astype(np.int64) + 2 ** 32, "fit in int32"),
    (lambda y: y.astype(np.int64) - 2 ** 32, ">= 0"),
    (lambda y: y + 10, r"\[0, 10\)"),
])
def test_labels_are_validated_before_any_cast(digits_images, labels, match):
    f, x, y = digits_images
    bad = labels(y[:64])
    with pytest.raises(ValueError, match=match):
        evaluate.robust_accuracy(f, (x[:64], bad), [PGD], key=jax.random.PRNGKey(0), batch_size=64)
    with pytest.raises(ValueError, match=match):
        evaluate.autoattack(f, (x[:64], bad), norm="linf", eps=0.05, key=jax.random.PRNGKey(0),
                            batch_size=64, stages=[("pgd", evaluate.attack_from_spec(PGD)[1])],
                            warn=False)


# ------------------------------------------------------------------------------------------------
# advjax eval runs AutoAttack from the config
# ------------------------------------------------------------------------------------------------

def test_cli_eval_runs_autoattack_from_the_config(tmp_path, capsys, monkeypatch):
    """`advjax eval` with config.eval.autoattack set: every stage in the table and in eval.json."""
    from advjax import cli, config as config_lib, train
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = tmp_path / "aa_tiny.py"
    cfg.write_text(
        "import importlib.util\n"
        "def get_config():\n"
        f"    spec = importlib.util.spec_from_file_location('tiny', {os.path.join(repo, 'configs', 'tiny.py')!r})\n"
        "    mod = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(mod)\n"
        "    c = mod.get_config()\n"
        "    c.train.epochs, c.data.train_limit, c.eval.limit = 1, 256, 32\n"
        "    c.train.progress, c.eval.attacks = False, []\n"
        "    return c\n")
    assert config_lib.default_config().eval.autoattack.norm == ""  # off by default
    spec = importlib.util.spec_from_file_location("aa_tiny", str(cfg))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = str(tmp_path / "w")
    train.train_and_evaluate(mod.get_config(), w)
    assert not any(k.startswith("autoattack") for k in json.load(open(os.path.join(w, "eval.json"))))
    capsys.readouterr()
    argv = ["advjax", "eval", "--config", str(cfg), "--workdir", w, "--limit", "40",
            "--config.eval.autoattack.norm=linf", "--config.eval.autoattack.eps=0.1"]
    monkeypatch.setattr(sys, "argv", argv)  # ml-collections reads the overrides from sys.argv
    assert cli.main(list(argv)) == 0
    out = capsys.readouterr().out
    res = json.load(open(os.path.join(w, "eval.json")))
    for stage in ("apgd-ce", "apgd-t", "fab-t", "square"):
        assert f"autoattack/{stage}" in res and f"| {stage} |" in out
    assert res["autoattack"] == res["autoattack/square"] <= res["autoattack/clean"]
    assert res["autoattack/n"] == 40 and res["autoattack/version"] == "standard"
    assert "AutoAttack (standard, linf, eps = 0.1)" in open(os.path.join(w, "eval.md")).read()
    # The same evaluation without AutoAttack is less full: it must not replace that eval.json.
    argv = ["advjax", "eval", "--config", str(cfg), "--workdir", w, "--limit", "40"]
    monkeypatch.setattr(sys, "argv", argv)
    assert cli.main(list(argv)) == 0
    assert json.load(open(os.path.join(w, "eval.json")))["autoattack"] == res["autoattack"]
    assert "autoattack" not in json.load(open(os.path.join(w, "eval.n40.json")))
