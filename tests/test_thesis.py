"""Thesis Ch. 3 (ADR, ASCL) and Ch. 4 (TA-MOO, ensembles, CCE): closed forms against brute force,
masks against loop constructions from the definitions, and reductions to the baselines."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, losses, models
from advjax.attacks import tamoo
from advjax.models.ensemble import Ensemble, member_model, member_variables, stack_member_variables
from advjax.objectives import adr, ascl, at, cce, ensemble_at, trades

EPS = 0.1


def fast_jit(fn, **kwargs):
    """jax.jit with XLA's backend optimizations off: these small programs run once, so compile time
    dominates (the same helper as tests/conftest.py, kept here so this file stands alone)."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


def assert_in_ball_and_box(x_adv, x, eps, atol=1e-6):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + atol
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0


# ------------------------------------------------------------------------------------------------
# TA-MOO: Theorem 1, the weight solver, reductions
# ------------------------------------------------------------------------------------------------

def simplex_grid(dim, steps):
    """All points of the probability simplex in R^dim with coordinates in multiples of 1/steps."""
    pts = [c for c in itertools.product(range(steps + 1), repeat=dim - 1) if sum(c) <= steps]
    pts = np.array([list(c) + [steps - sum(c)] for c in pts], dtype=np.float64) / steps
    return pts


def brute_force_distance_to_extended_simplex(w, achieved, steps=400):
    """min over pi in {0_s} x simplex(m - s) of ||w - pi||^2, over a grid of the simplex (m - s <= 3)."""
    un = ~achieved
    grid = simplex_grid(int(un.sum()), steps)
    return float(np.sum(w[achieved] ** 2) + np.min(np.sum((grid - w[un]) ** 2, axis=1)))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_theorem1_closed_form_is_the_squared_distance_to_the_extended_simplex(m):
    rng = np.random.default_rng(m)
    for _ in range(6):
        w = rng.dirichlet(np.ones(m))
        achieved = rng.random(m) < 0.5
        if achieved.all():
            achieved[rng.integers(m)] = False
        if (~achieved).sum() > 3:
            achieved[: m - 3] = True
        closed = float(tamoo.omega(jnp.asarray(w, jnp.float32), jnp.asarray(achieved)))
        brute = brute_force_distance_to_extended_simplex(w, achieved)
        # Lemma 1's projection: the unachieved part projected onto the simplex.
        proj = np.asarray(tamoo.project_simplex(jnp.asarray(w[~achieved])))
        lemma = float(np.sum(w[achieved] ** 2) + np.sum((w[~achieved] - proj) ** 2))
        np.testing.assert_allclose(closed, lemma, atol=1e-6)
        np.testing.assert_allclose(closed, brute, atol=2e-4)


def test_omega_zero_without_achieved_tasks_and_sum_of_squares_when_all_are():
    w = jnp.array([0.2, 0.3, 0.5])
    assert float(tamoo.omega(w, jnp.zeros(3, bool))) == 0.0
    np.testing.assert_allclose(tamoo.omega(w, jnp.ones(3, bool)), float(jnp.sum(w * w)), rtol=1e-6)


def _grid_min(q, achieved, lam, steps=300):
    grid = simplex_grid(q.shape[0], steps)
    vals = np.einsum("gi,ij,gj->g", grid, q, grid)
    if lam:
        vals = vals + lam * np.asarray(jax.vmap(lambda w: tamoo.omega(w, achieved))(
            jnp.asarray(grid, jnp.float32)))
    return float(vals.min())


@pytest.mark.parametrize("m,lam,n_achieved", [(2, 0.0, 0), (3, 0.0, 0), (3, 1.0, 1), (2, 1.0, 1)])
def test_softmax_weight_solver_reaches_the_brute_force_minimum(m, lam, n_achieved):
    rng = np.random.default_rng(10 * m + n_achieved)
    for _ in range(3):
        g = rng.normal(size=(m, 5)) * rng.uniform(0.3, 1.5, size=(m, 1))
        q = g @ g.T
        achieved = jnp.arange(m) < n_achieved
        alpha = tamoo.solve_weights(jnp.zeros(m), jnp.asarray(q, jnp.float32), achieved, lam=lam,
                                    lr=0.5, inner_steps=3000)
        w = jax.nn.softmax(alpha)
        value = float(w @ q @ w + lam * tamoo.omega(w, achieved))
        best = _grid_min(q, achieved, lam)
        assert value <= best + 2e-3 * max(1.0, abs(best)), (value, best)
    # Batched: a leading problem axis gives the same answers as single problems.
    qs = jnp.asarray(np.stack([q, 2 * q]), jnp.float32)
    ach = jnp.stack([achieved, achieved])
    batched = tamoo.solve_weights(jnp.zeros((2, m)), qs, ach, lam=lam, lr=0.1, inner_steps=20)
    single = tamoo.solve_weights(jnp.zeros(m), qs[1], achieved, lam=lam, lr=0.1, inner_steps=20)
    np.testing.assert_allclose(batched[1], single, rtol=1e-5, atol=1e-6)


def test_minmax_weights_stay_on_the_simplex_and_favour_low_losses():
    w = jnp.full((4, 3), 1 / 3)
    task_losses = jnp.array([[0.0, 1.0, 2.0]] * 4)
    for _ in range(50):
        w = tamoo.minmax_weights(w, task_losses, gamma=3.0, lr=0.1)
    np.testing.assert_allclose(jnp.sum(w, -1), 1.0, atol=1e-6)
    assert float(jnp.min(w)) >= 0.0
    assert bool(jnp.all(w[:, 0] > w[:, 1])) and bool(jnp.all(w[:, 1] >= w[:, 2]))
    # Fixed point of the inner min: w = proj(1/m - losses / gamma).
    np.testing.assert_allclose(w[0], tamoo.project_simplex(1 / 3 - task_losses[0] / 3.0), atol=1e-4)


def test_release_moo_solver_step_is_one_gradient_step_with_the_uniform_regularizer():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 6))
    q = g @ g.T
    alpha = rng.normal(size=3)
    lr, gamma = 0.025, 20.0
    kw = tamoo.settings("ens", "moo", 0.1, "release")
    assert (kw["inner_steps"], kw["uniform_weight"], kw["lr_w"]) == (1, gamma, lr)
    got = tamoo.solve_weights(jnp.asarray(alpha, jnp.float32), jnp.asarray(q, jnp.float32),
                              jnp.zeros(3, bool), lam=0.0, lr=lr, inner_steps=1,
                              uniform_weight=gamma)
    w = np.exp(alpha) / np.exp(alpha).sum()
    dfdw = 2 * q @ w + 2 * gamma * (w - 1 / 3)            # d/dw [w^T Q w + gamma ||w - 1/m||^2]
    jac = np.diag(w) - np.outer(w, w)                      # dw/dalpha of the softmax
    np.testing.assert_allclose(got, alpha - lr * jac @ dfdw, rtol=1e-4, atol=1e-6)


def test_tamoo_settings_give_valid_arguments_and_the_documented_differences():
    import inspect
    fns = {"ens": tamoo.tamoo_ens, "uni": tamoo.tamoo_uni, "eot": tamoo.tamoo_eot}
    eps = 0.1
    for setting, fn in fns.items():
        params = inspect.signature(fn).parameters
        for weighting in tamoo.WEIGHTINGS:
            text = tamoo.settings(setting, weighting, eps)
            rel = tamoo.settings(setting, weighting, eps, "release")
            assert set(text) <= set(params) and set(rel) <= set(params)
            assert text["steps"] == 100 and text["step_size"] == pytest.approx(eps / 4)
            assert text["entropy_weight"] == 0 and text["uniform_weight"] == 0
            assert rel["minmax_lr"] == 0.025 and rel["entropy_weight"] == 20.0
            assert rel["loss"] == ("cw" if setting == "eot" else "ce")
    uni = lambda w: tamoo.settings("uni", w, eps, "release")
    assert uni("tamoo")["lam"] == 10.0 and tamoo.settings("ens", "tamoo", eps, "release")["lam"] == 100
    assert [uni(w)["steps"] for w in tamoo.WEIGHTINGS] == [50, 100, 100, 50]  # uniform moo tamoo minmax
    assert tamoo.settings("ens", "tamoo", eps, "release")["lr_w"] == 0.025
    assert tamoo.settings("eot", "tamoo", eps, "release")["step_size"] == pytest.approx(eps / 3.1)
    with pytest.raises(ValueError, match="variant"):
        tamoo.settings("ens", "tamoo", eps, "code")


def linear_member(key, d, classes, bias=None):
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, (d, classes))
    b = jnp.zeros(classes) if bias is None else bias
    return lambda x: x.reshape(x.shape[0], -1) @ w + b


def _ens_run(weighting):
    """ENS attack against three linear members given as arrays (one compilation per weighting)."""

    def run(ws, b, x, y):
        fns = [lambda v, w=w: v.reshape(v.shape[0], -1) @ w + b for w in ws]
        return tamoo.tamoo_ens(fns, x, y, key=jax.random.PRNGKey(2), eps=0.3, step_size=0.05,
                               steps=6, lr_w=0.5, weighting=weighting, lam=100.0)

    return fast_jit(run)


def test_tamoo_equals_moo_when_no_task_is_achieved():
    ws = jax.random.normal(jax.random.PRNGKey(0), (3, 12, 3))
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 3, 4, 1))
    moo, ta = _ens_run("moo"), _ens_run("tamoo")
    # Members that always predict class 0 inside the ball: no task is ever achieved.
    bias = jnp.array([1e3, 0.0, 0.0])
    y = jnp.zeros(5, jnp.int32)
    out_moo, out_ta = moo(ws, bias, x, y), ta(ws, bias, x, y)
    fns = [lambda v, w=w: v.reshape(v.shape[0], -1) @ w + bias for w in ws]
    assert not bool(jnp.any(tamoo.ens_success(fns, out_ta, y)))
    np.testing.assert_array_equal(np.asarray(out_moo), np.asarray(out_ta))
    # ... and they differ once tasks are achieved (no bias: the members are fooled quickly).
    zero = jnp.zeros(3)
    y2 = jnp.argmax(x.reshape(5, -1) @ ws[0], -1)
    assert not np.array_equal(np.asarray(moo(ws, zero, x, y2)), np.asarray(ta(ws, zero, x, y2)))


def test_uniform_weighting_is_pgd_on_the_summed_loss():
    fns = [linear_member(k, 12, 3) for k in jax.random.split(jax.random.PRNGKey(3), 2)]
    x = jax.random.uniform(jax.random.PRNGKey(4), (6, 3, 4, 1))
    y = jnp.argmax(fns[0](x), -1)
    kw = dict(eps=EPS, step_size=0.02, steps=5)
    out = tamoo.tamoo_ens(fns, x, y, weighting="uniform", random_start=False, **kw)

    summed = lambda xa: sum(jnp.sum(losses.cross_entropy(f(xa), y)) for f in fns)
    ref = x
    for _ in range(5):  # PGD on the summed loss, written out
        ref = ref + 0.02 * jnp.sign(jax.grad(summed)(ref))
        ref = jnp.clip(x + jnp.clip(ref - x, -EPS, EPS), 0.0, 1.0)
    np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("weighting", tamoo.WEIGHTINGS)
def test_tamoo_attacks_stay_in_the_ball_and_box(weighting):
    key = jax.random.PRNGKey(5)
    fns = [linear_member(k, 8 * 8, 4) for k in jax.random.split(key, 3)]
    x = jax.random.uniform(jax.random.PRNGKey(6), (4, 8, 8, 1))
    y = jnp.argmax(fns[0](x), -1)
    kw = dict(key=key, eps=EPS, step_size=0.04, steps=3, weighting=weighting)
    assert_in_ball_and_box(fast_jit(lambda x, y: tamoo.tamoo_ens(fns, x, y, **kw))(x, y), x, EPS)
    if weighting in ("uniform", "moo"):
        return  # EoT and UNI share the loop; their two other weightings suffice
    eot = fast_jit(lambda x, y: tamoo.tamoo_eot(fns[0], x, y, **kw))(x, y)
    assert_in_ball_and_box(eot, x, EPS)
    # UNI: one perturbation per group (inputs away from the box edges, so no clipping).
    xm = 0.3 + 0.4 * x
    uni = fast_jit(lambda x, y: tamoo.tamoo_uni(fns[1], x, y, group_size=2, **kw))(xm, y)
    assert_in_ball_and_box(uni, xm, EPS)
    d = np.asarray(uni - xm).reshape(2, 2, -1)
    np.testing.assert_allclose(d[:, 0], d[:, 1], atol=1e-6)
    assert tamoo.tamoo_uni.batch_level is True
    # Padded rows (valid = False, as advjax.evaluate passes them) do not move the shared delta.
    valid = jnp.array([True, False, True, True])
    kw0 = dict(kw, random_start=False)
    pad = fast_jit(lambda x, y: tamoo.tamoo_uni(fns[1], x, y, group_size=2, valid=valid, **kw0))
    alone = fast_jit(lambda x, y: tamoo.tamoo_uni(fns[1], x, y, group_size=1, **kw0))
    np.testing.assert_allclose(pad(xm, y)[0], alone(xm[:1], y[:1])[0], atol=1e-6)
    succ = tamoo.uni_success(fns[1], uni, y, 2)
    assert succ.shape == (2, 2)
    assert 0.0 <= float(tamoo.a_all(succ)) <= float(tamoo.a_avg(succ)) <= 1.0


def test_a_all_and_a_avg():
    s = jnp.array([[True, True], [True, False], [False, False]])
    assert float(tamoo.a_all(s)) == pytest.approx(1 / 3)
    assert float(tamoo.a_avg(s)) == pytest.approx(0.5)


def test_eot_transforms_keep_shape_and_range_and_identity_is_exact():
    x = jax.random.uniform(jax.random.PRNGKey(7), (2, 10, 12, 3))
    for name, t in tamoo.EOT_TRANSFORMS.items():
        out = t(x)
        assert out.shape == x.shape and out.dtype == x.dtype, name
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
        if name != "identity":
            assert not np.allclose(out, x), name
    np.testing.assert_array_equal(tamoo.identity(x), x)
    np.testing.assert_array_equal(tamoo.hflip(tamoo.hflip(x)), x)
    np.testing.assert_array_equal(tamoo.vflip(x)[:, 0], x[:, -1])
    np.testing.assert_allclose(tamoo.rotate(x, 0.0), x, atol=1e-6)
    np.testing.assert_allclose(tamoo.center_crop_resize(x, 1.0), x, atol=1e-6)
    np.testing.assert_allclose(tamoo.gamma_correction(x, 1.3), x ** 1.3, rtol=1e-6)
    np.testing.assert_allclose(tamoo.brightness(x, 1.3), np.clip(1.3 * np.asarray(x), 0, 1),
                               rtol=1e-6)
    # Rotation by 90 degrees about the center of a square image is an exact index permutation.
    sq = x[:, :10, :10]
    np.testing.assert_allclose(tamoo.rotate(sq, 90.0), jnp.rot90(sq, k=1, axes=(1, 2)), atol=1e-5)
    # Gradients flow through every transform (EoT differentiates through them).
    grads = fast_jit(lambda v: {name: jax.grad(lambda u: jnp.sum(t(u) ** 2))(v)
                                for name, t in tamoo.EOT_TRANSFORMS.items()})(x * 0.5 + 0.2)
    for name, g in grads.items():
        assert np.all(np.isfinite(g)) and np.any(g != 0), name


# ------------------------------------------------------------------------------------------------
# ASCL: selection masks, the contrastive loss and R-DIV against loops over the definitions
# ------------------------------------------------------------------------------------------------

def loop_selection(y, p_nat, p_adv, selection):
    """Table 1 of Ch. 3, one anchor at a time; rows 0..N-1 natural, N..2N-1 adversarial."""
    n = len(y)
    two_n = 2 * n
    lab = lambda r: y[r % n]
    pred = lambda r: p_nat[r] if r < n else p_adv[r - n]
    pos = np.zeros((two_n, two_n), bool)
    neg = np.zeros((two_n, two_n), bool)
    for a in range(two_n):
        for b in range(two_n):
            if b % n == a % n:
                continue  # j != i: the anchor and its counterpart are neither
            if lab(b) == lab(a):
                pos[a, b] = selection != "leaked_ls" or pred(b) == pred(a)
            else:
                if selection == "global":
                    neg[a, b] = True
                elif selection == "hard_ls":
                    neg[a, b] = pred(b) == lab(a)
                else:
                    neg[a, b] = pred(b) == pred(a)
    return pos, neg


def _small_batch(seed=0, n=10, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    p_nat = np.where(rng.random(n) < 0.6, y, rng.integers(classes, size=n))
    p_adv = np.where(rng.random(n) < 0.4, y, rng.integers(classes, size=n))
    return y, p_nat, p_adv


@pytest.mark.parametrize("selection", ascl.SELECTIONS)
def test_ascl_selection_masks_match_a_loop_over_the_definitions(selection):
    y, p_nat, p_adv = _small_batch()
    pos, neg, cp = ascl.selection_masks(jnp.asarray(np.concatenate([y, y])),
                                        jnp.asarray(np.concatenate([p_nat, p_adv])), selection)
    ref_pos, ref_neg = loop_selection(y, p_nat, p_adv, selection)
    np.testing.assert_array_equal(np.asarray(pos), ref_pos)
    np.testing.assert_array_equal(np.asarray(neg), ref_neg)
    n = len(y)
    np.testing.assert_array_equal(np.asarray(cp), np.roll(np.eye(2 * n, dtype=bool), n, axis=1))


def loop_scl(z, y, p_nat, p_adv, selection, tau):
    """Eqs. 1-3 of Ch. 3 with explicit sums over the selected sets."""
    n = len(y)
    pos, neg = loop_selection(y, p_nat, p_adv, selection)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for a in range(2 * n):
        partner = (a + n) % (2 * n)
        pulled = [b for b in range(2 * n) if pos[a, b]] + [partner]
        kept = pulled + [b for b in range(2 * n) if neg[a, b]]
        denom = sum(np.exp(zn[a] @ zn[k] / tau) for k in kept)
        total += -sum(np.log(np.exp(zn[a] @ zn[b] / tau) / denom) for b in pulled) / len(pulled)
    return total / n


@pytest.mark.parametrize("selection", ascl.SELECTIONS)
def test_scl_loss_matches_the_sums_of_eqs_1_to_3(selection):
    y, p_nat, p_adv = _small_batch(1)
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2 * len(y), 6))
    tau = 0.5
    got, _ = ascl.scl_loss(jnp.asarray(z[:10], jnp.float32), jnp.asarray(z[10:], jnp.float32),
                           jnp.asarray(y), jnp.asarray(p_nat), jnp.asarray(p_adv),
                           selection=selection, tau=tau)
    np.testing.assert_allclose(float(got), loop_scl(z, y, p_nat, p_adv, selection, tau), rtol=1e-4)


def test_r_div_matches_its_definition():
    y, _, _ = _small_batch(3)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(20, 5))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = 10
    d_pos, d_neg = [], []
    for i in range(n):
        lab = lambda r: y[r % n]
        pos = [1 - zn[i] @ zn[b] for b in range(2 * n) if b % n != i and lab(b) == y[i]]
        neg = [1 - zn[i] @ zn[b] for b in range(2 * n) if lab(b) != y[i]]
        if pos:
            d_pos.append(np.mean(pos))
        if neg:
            d_neg.append(np.mean(neg))
    ref = np.mean(d_pos) / np.mean(d_neg)
    got = ascl.relative_divergence(jnp.asarray(z[:n], jnp.float32), jnp.asarray(z[n:], jnp.float32),
                                   jnp.asarray(y))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Objectives on a tiny CNN
# ------------------------------------------------------------------------------------------------

TINY_CNN = dict(widths=(4, 4), fc_widths=(8,), padding="SAME", num_classes=3,
                first_conv_impl="xla", conv_impl="xla")


@functools.lru_cache(maxsize=None)
def tiny_setup(dropout=0.0):
    model = models.get_model("cnn4c3f", dropout_rate=dropout, **TINY_CNN)
    variables = fast_jit(lambda k: models.init_variables(model, k, (8, 8, 1)))(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
    y = jax.random.randint(jax.random.PRNGKey(2), (8,), 0, 3)
    return model, variables, {"image": x, "label": y}


def run_objective(obj, params, batch, key=jax.random.PRNGKey(3)):
    state = {"model": {}, "method": obj.init_method_state(key)}
    (loss, aux), grads = fast_jit(jax.value_and_grad(obj, has_aux=True))(params, state, batch, key)
    return loss, aux, grads


ATTACK = dict(eps=EPS, step_size=0.05, steps=2)
ZERO = dict(lambda_lc=0.0, lambda_gb=0.0, lambda_conf=0.0, lambda_smt=0.0)


def test_adr_adv_with_zero_weights_is_twice_the_mixed_pgd_at_loss():
    model, variables, batch = tiny_setup(dropout=0.5)  # same keys, so even dropout agrees
    loss, aux, grads = run_objective(adr.adr_adv(model.apply, **ATTACK, **ZERO),
                                     variables["params"], batch)
    ref, _, ref_grads = run_objective(at.pgd_at(model.apply, mix=0.5, **ATTACK),
                                      variables["params"], batch)
    np.testing.assert_allclose(float(loss), 2 * float(ref), rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, 2 * b, rtol=1e-4, atol=1e-6),
                           grads, ref_grads)
    # The regularizers are logged (and nonzero) even with weight 0.
    m = aux["metrics"]
    assert float(m["l_lc"]) > 0 and float(m["l_smt"]) > 0 and float(m["l_conf"]) > 0


def test_adr_trades_thesis_is_eq4_on_the_trades_adversary_and_release_is_trades():
    # Issue 16: ADR-TRADES as the thesis defines it (Sec. 3.4, 4.2) keeps L_c of Eq. 4 and only swaps
    # the adversary; the PyTorch release's L_c is CE + 1 KL, which with the ADR weights 0 is TRADES.
    model, variables, batch = tiny_setup()
    params, key = variables["params"], jax.random.PRNGKey(3)
    x, y = batch["image"], batch["label"]
    state = {"model": {}, "method": {}}
    thesis = adr.adr_trades(model.apply, **ATTACK, **ZERO)
    release = adr.adr_trades(model.apply, variant="release", **ATTACK, **ZERO)
    reference_trades = trades.make(model.apply, beta=1.0, **ATTACK)

    def run(params):
        k_attack = jax.random.split(key, 4)[0]
        f = lambda v: model.apply({"params": params}, v)
        x_a = trades.trades_attack(f, x, y, k_attack, **ATTACK)   # the TRADES adversary itself
        eq4 = c_mean_ce(model.apply({"params": params}, x_a), y) + c_mean_ce(f(x), y)
        return (thesis(params, state, batch, key)[0], release(params, state, batch, key)[0],
                reference_trades(params, state, batch, key)[0], eq4)

    got_thesis, got_release, ref_trades, ref_eq4 = fast_jit(run)(params)
    np.testing.assert_allclose(float(got_thesis), float(ref_eq4), rtol=1e-5)
    np.testing.assert_allclose(float(got_release), float(ref_trades), rtol=1e-5)
    assert abs(float(got_thesis) - float(got_release)) > 1e-3   # two different losses
    with pytest.raises(ValueError, match="beta"):
        adr.adr_trades(model.apply, beta=6.0, **ATTACK)        # silently unused otherwise
    with pytest.raises(ValueError, match="variant"):
        adr.adr_trades(model.apply, variant="pytorch", **ATTACK)


def c_mean_ce(logits, y):
    return jnp.mean(losses.cross_entropy(logits, y))


def test_adr_smt_stop_gradient_blocks_only_the_natural_side():
    rng = np.random.default_rng(11)
    feat_nat, feat_adv = (jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for _ in range(2))
    logits_nat, logits_adv = (jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(4, size=6))

    def smt(ln, la, sg):
        return adr.adr_regularizers(feat_nat, feat_adv, ln, la, y, smt_stop_gradient=sg)["smt"]

    for sg in (False, True):
        np.testing.assert_allclose(float(smt(logits_nat, logits_adv, sg)),
                                   float(jnp.mean(losses.kl_divergence(logits_nat, logits_adv))),
                                   rtol=1e-6)
    g_nat = jax.grad(smt, argnums=(0, 1))(logits_nat, logits_adv, False)
    g_sg = jax.grad(smt, argnums=(0, 1))(logits_nat, logits_adv, True)
    assert float(jnp.max(jnp.abs(g_nat[0]))) > 1e-3 and float(jnp.max(jnp.abs(g_sg[0]))) == 0.0
    np.testing.assert_allclose(g_sg[1], g_nat[1], rtol=1e-5, atol=1e-7)


def test_adr_global_compactness_matches_the_pair_sum():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    y = np.array([0, 1, 0, 2, 1, 0])
    ref = np.mean([[((0.99 - (y[i] != y[j])) / 0.99) * np.mean(np.abs(a[i] - b[j]))
                    for j in range(6)] for i in range(6)])
    got = adr.global_compactness(jnp.asarray(a), jnp.asarray(b), jnp.asarray(y), alpha=0.99)
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    np.testing.assert_allclose(adr.global_weights(jnp.array([0, 1]))[0, 1], -0.01 / 0.99, rtol=1e-5)


def test_ascl_objective_runs_and_logs_r_div():
    # The release variant's path (the thesis' scl_loss / vat_loss are checked against the sums above).
    model, variables, batch = tiny_setup()
    loss, aux, grads = run_objective(
        ascl.ascl(model.apply, selection="leaked_ls", variant="release", **ATTACK),
        variables["params"], batch)
    m = aux["metrics"]
    assert np.isfinite(float(loss)) and np.isfinite(float(m["r_div"])) and float(m["r_div"]) > 0
    np.testing.assert_allclose(float(loss), float(m["l_at"] + m["l_scl"] + 2 * m["l_vat"]),
                               rtol=1e-5)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def loop_scl_release(z, y, p_nat, p_adv, selection, tau):
    """The released code's L_SCL written from its description: -linf similarity of L2-normalized
    latents, positives = same label (and, for Leaked-LS, same prediction) among all other rows (the
    counterpart is one of them), kept = positives + the selection's negatives, L_r divided by
    max(|P|, 1), mean over the 2N anchors."""
    n = len(y)
    lab = lambda r: y[r % n]
    pred = lambda r: p_nat[r] if r < n else p_adv[r - n]
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for a in range(2 * n):
        pos, neg = [], []
        for b in range(2 * n):
            if b == a:
                continue
            if lab(b) == lab(a):
                if selection != "leaked_ls" or pred(b) == pred(a):
                    pos.append(b)
            elif (selection == "global" or (selection == "hard_ls" and pred(b) == lab(a))
                  or (selection in ("soft_ls", "leaked_ls") and pred(b) == pred(a))):
                neg.append(b)
        s = lambda b: -np.max(np.abs(zn[a] - zn[b])) / tau
        if not pos and not neg:
            continue
        log_denom = np.log(sum(np.exp(s(k)) for k in pos + neg))
        total += -sum(s(b) - log_denom for b in pos) / max(len(pos), 1)
    return total / (2 * n)


@pytest.mark.parametrize("selection", ["global", "leaked_ls"])
def test_scl_and_vat_release_variant_match_the_released_definitions(selection):
    y, p_nat, p_adv = _small_batch(8)
    rng = np.random.default_rng(9)
    z = rng.normal(size=(2 * len(y), 6))
    tau = 0.5
    args = (jnp.asarray(z[:10], jnp.float32), jnp.asarray(z[10:], jnp.float32), jnp.asarray(y),
            jnp.asarray(p_nat), jnp.asarray(p_adv))
    got, _ = ascl.scl_loss(*args, selection=selection, tau=tau, variant="release")
    np.testing.assert_allclose(float(got), loop_scl_release(z, y, p_nat, p_adv, selection, tau),
                               rtol=1e-4)
    thesis, _ = ascl.scl_loss(*args, selection=selection, tau=tau)
    if selection == "global":   # same sets and similarity: only the 1/2N vs 1/N scale differs
        cos_half, _ = ascl.scl_loss(*args, selection=selection, tau=tau, variant="release",
                                    similarity="cosine")
        np.testing.assert_allclose(float(cos_half), float(thesis) / 2, rtol=1e-5)
    # VAT: KL / C in the release (KLDivLoss averages over batch and classes).
    ln, la = (jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(2))
    kl = float(jnp.mean(losses.kl_divergence(ln, la)))
    np.testing.assert_allclose(float(ascl.vat_loss(ln, la)), kl, rtol=1e-6)
    np.testing.assert_allclose(float(ascl.vat_loss(ln, la, "release")), kl / 4, rtol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        ascl.ascl(lambda *a, **k: None, eps=0.1, step_size=0.1, steps=1, variant="code")


def test_batched_r_div_averages_the_divergences_over_minibatches():
    rng = np.random.default_rng(12)
    z_nat, z_adv = (jnp.asarray(rng.normal(size=(10, 4)), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(3, size=10))
    r, d_pos, d_neg = ascl.batched_relative_divergence(z_nat, z_adv, y, batch_size=4)
    parts = [ascl.absolute_divergences(z_nat[s], z_adv[s], y[s])
             for s in (slice(0, 4), slice(4, 8), slice(8, 10))]
    np.testing.assert_allclose(float(d_pos), np.mean([float(p[0]) for p in parts]), rtol=1e-6)
    np.testing.assert_allclose(float(d_neg), np.mean([float(p[1]) for p in parts]), rtol=1e-6)
    np.testing.assert_allclose(float(r), float(d_pos) / float(d_neg), rtol=1e-6)
    whole = ascl.batched_relative_divergence(z_nat, z_adv, y, batch_size=10)[0]
    np.testing.assert_allclose(float(whole), float(ascl.relative_divergence(z_nat, z_adv, y)),
                               rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Ensembles and CCE
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def tiny_ensemble(n=2):
    ens = Ensemble(member="cnn4c3f", num_members=n, member_config=dict(dropout_rate=0.0, **{
        k: v for k, v in TINY_CNN.items() if k != "num_classes"}), num_classes=3)
    variables = fast_jit(lambda k: models.init_variables(ens, k, (8, 8, 1)))(jax.random.PRNGKey(4))
    return ens, variables


def test_ensemble_is_the_log_mean_member_probability():
    ens, variables = tiny_ensemble(3)
    _, _, batch = tiny_setup()
    x = batch["image"]
    member = member_model(ens)
    probs, out = fast_jit(lambda v, x: (
        [jax.nn.softmax(member.apply(member_variables(v, n), x)) for n in range(3)],
        ens.apply(v, x)))(variables, x)
    np.testing.assert_allclose(jnp.exp(out), sum(probs) / 3, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.nn.softmax(out), sum(probs) / 3, rtol=1e-5, atol=1e-7)
    back = stack_member_variables([member_variables(variables, n) for n in range(3)])
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)
    # Works as a logits_fn for an attack.
    x_adv = fast_jit(lambda x, y: attacks.pgd(lambda v: ens.apply(variables, v), x, y,
                                              key=jax.random.PRNGKey(0), **ATTACK))(x, batch["label"])
    assert_in_ball_and_box(x_adv, x, EPS)


def test_cce_base_is_independent_adversarial_training_of_each_member():
    ens, variables = tiny_ensemble(2)
    _, _, batch = tiny_setup()
    kw = dict(ATTACK, random_start=False)
    loss, aux, grads = run_objective(cce.cce(ens.apply, mode="base", **kw),
                                     variables["params"], batch)
    member = member_model(ens)
    reference = at.pgd_at(member.apply, mix=0.5, **kw)
    ref_fn = fast_jit(jax.value_and_grad(reference, has_aux=True))
    state = {"model": {}, "method": {}}
    total = 0.0
    for n in range(2):
        params_n = member_variables(variables, n)["params"]
        (ref, _), ref_grads = ref_fn(params_n, state, batch, jax.random.PRNGKey(3))
        total += 2 * float(ref)
        got_n = jax.tree_util.tree_map(lambda a: a[n], grads["members"]["member"])
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, 2 * b, rtol=1e-4, atol=1e-6), got_n, ref_grads)
        np.testing.assert_allclose(float(aux["metrics"][f"loss_member{n}"]), 2 * float(ref),
                                   rtol=1e-5)
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)
    # (The crossing terms of CCE-RM / CCE-DM are checked against Eq. 5 in the next test.)


def test_cce_crossing_terms_match_eq5():
    rng = np.random.default_rng(6)
    nat = rng.normal(size=(3, 4, 5)).astype(np.float32)
    cross = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    y = rng.integers(5, size=4)
    lpm, ldm = 0.7, 2.0

    def ce(z, t):
        return -np.log(np.exp(z[t]) / np.exp(z).sum())

    def ent(z):
        p = np.exp(z) / np.exp(z).sum()
        return -(p * np.log(p)).sum()

    ref = []
    for n in range(3):
        val = np.mean([ce(nat[n, b], y[b]) + ce(cross[n, n, b], y[b]) for b in range(4)])
        for i in range(3):
            if i != n:
                terms = [lpm * np.exp(-ce(cross[n, i, b], y[b])) * ce(cross[n, i, b], y[b])
                         - ldm * (1 - np.exp(-ce(cross[n, i, b], y[b]))) * ent(cross[n, i, b])
                         for b in range(4)]
                val += np.mean(terms) / 2
        ref.append(val)
    got = cce.cce_member_losses(jnp.asarray(nat), jnp.asarray(cross), jnp.asarray(y),
                                lambda_pm=lpm, lambda_dm=ldm)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_cce_release_crossing_terms_use_probabilities_and_no_stop_gradient():
    rng = np.random.default_rng(7)
    nat = rng.normal(size=(2, 3, 4)).astype(np.float32) * 2
    cross = rng.normal(size=(2, 2, 3, 4)).astype(np.float32) * 2
    y = rng.integers(4, size=3)
    lpm, ldm = 1.0, 5.0

    def reference(nat, cross):
        # The released adv_CCE from its description: p = member probabilities fed as logits.
        sm = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        out = []
        for n in range(2):
            val = np.mean([-np.log(sm(nat[n, b])[y[b]]) - np.log(sm(cross[n, n, b])[y[b]])
                           for b in range(3)])
            i = 1 - n
            terms = []
            for b in range(3):
                p = sm(cross[n, i, b])
                q = sm(p)
                terms.append(lpm * p[y[b]] * -np.log(q[y[b]])
                             - ldm * (1 - p[y[b]]) * -np.sum(p * np.log(q)))
            out.append(val + np.mean(terms))
        return np.array(out)

    got = cce.cce_member_losses(jnp.asarray(nat), jnp.asarray(cross), jnp.asarray(y),
                                lambda_pm=lpm, lambda_dm=ldm, variant="release")
    np.testing.assert_allclose(got, reference(nat, cross), rtol=1e-5)
    thesis = cce.cce_member_losses(jnp.asarray(nat), jnp.asarray(cross), jnp.asarray(y),
                                   lambda_pm=lpm, lambda_dm=ldm)
    assert np.max(np.abs(np.asarray(got) - np.asarray(thesis))) > 1e-2
    # No stop-gradient on p_y: the gradient is that of the whole expression (central differences
    # on an off-diagonal, i.e. crossing, logit).
    loss = lambda c: jnp.sum(cce.cce_member_losses(jnp.asarray(nat), c, jnp.asarray(y),
                                                   lambda_pm=lpm, lambda_dm=ldm,
                                                   variant="release"))
    grad = np.asarray(jax.grad(loss)(jnp.asarray(cross)))
    h = 1e-2
    for idx in [(0, 1, 0, int(y[0])), (1, 0, 2, 1)]:
        up, down = cross.copy(), cross.copy()
        up[idx] += h
        down[idx] -= h
        fd = (reference(nat, up).sum() - reference(nat, down).sum()) / (2 * h)
        np.testing.assert_allclose(grad[idx], fd, rtol=2e-2, atol=1e-4)
    with pytest.raises(ValueError, match="lambda_pm"):
        cce.cce(lambda *a, **k: None, eps=0.1, step_size=0.1, steps=1, mode="rm", lambda_pm=2.0)


def test_adv_en_attacks_the_ensemble_and_trains_every_member_on_its_examples():
    ens, variables = tiny_ensemble(2)
    _, _, batch = tiny_setup()
    x, y = batch["image"], batch["label"]
    key = jax.random.PRNGKey(3)
    loss, aux, grads = run_objective(ensemble_at.adv_en(ens.apply, **ATTACK), variables["params"],
                                     batch, key)
    member = member_model(ens)

    def reference(params):
        # x_a^en: PGD against the ensemble output with the objective's attack key; then per-member
        # CE on x_a^en and on x, summed over the members.
        k_attack = jax.random.split(key, 4)[0]
        full = {"params": params}
        x_a = attacks.pgd(lambda v: ens.apply(jax.lax.stop_gradient(full), v), x, y,
                          key=k_attack, **ATTACK)
        total = 0.0
        for n in range(2):
            vn = member_variables(full, n)
            total += c_mean_ce(member.apply(vn, x_a), y) + c_mean_ce(member.apply(vn, x), y)
        return total

    ref, ref_grads = fast_jit(jax.value_and_grad(reference))(variables["params"])
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           grads, ref_grads)
    # The "ensemble" reading: CE of the ensemble output on both batches.
    z_nat, z_adv = (jnp.asarray(np.random.default_rng(s).normal(size=(2, 8, 3)), jnp.float32)
                    for s in (1, 2))
    ens_ce = lambda z: c_mean_ce(jnp.log(jnp.mean(jax.nn.softmax(z, -1), 0)), y)
    np.testing.assert_allclose(float(ensemble_at.adv_en_loss(z_nat, z_adv, y, "ensemble")[0]),
                               float(ens_ce(z_nat) + ens_ce(z_adv)), rtol=1e-5)
    members_ce = sum(c_mean_ce(z_nat[n], y) + c_mean_ce(z_adv[n], y) for n in range(2))
    np.testing.assert_allclose(float(ensemble_at.adv_en_loss(z_nat, z_adv, y)[0]),
                               float(members_ce), rtol=1e-5)


def test_tamoo_at_release_loss_is_the_ensemble_ce_on_clean_and_adversarial_examples():
    ens, variables = tiny_ensemble(2)
    _, _, batch = tiny_setup()
    x, y = batch["image"], batch["label"]
    kw = dict(eps=EPS, step_size=0.05, steps=1, weighting="uniform")
    loss, _, _ = run_objective(cce.ensemble_moo_at(ens.apply, variant="release", **kw),
                               variables["params"], batch)
    k_attack = jax.random.split(jax.random.PRNGKey(3), 4)[0]
    members = lambda v: ens.apply(variables, v, return_members=True)
    x_adv = fast_jit(lambda x, y: tamoo.tamoo_ens(members, x, y, key=k_attack, **kw))(x, y)
    ref = c_mean_ce(ens.apply(variables, x), y) + c_mean_ce(ens.apply(variables, x_adv), y)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    with pytest.raises(ValueError, match="mix"):
        cce.ensemble_moo_at(ens.apply, variant="release", mix=0.5, **kw)


def test_transferability_metric():
    a = jnp.array([[0.1, 0.7], [0.6, 0.2]])
    np.testing.assert_allclose(float(cce.transferability(a)), 0.7 - 0.1 + 0.6 - 0.2, rtol=1e-6)
    ens, variables = tiny_ensemble(2)
    _, _, batch = tiny_setup()
    fns = cce.ensemble_member_fns(ens.apply, variables, 2)
    attack = functools.partial(attacks.pgd, **ATTACK)
    mat = fast_jit(lambda x, y: cce.transfer_accuracy_matrix(fns, attack, x, y,
                                                             key=jax.random.PRNGKey(0)))(
        batch["image"], batch["label"])
    assert mat.shape == (2, 2) and bool(jnp.all((mat >= 0) & (mat <= 1)))


def test_ensemble_moo_at_trains_every_member_on_the_shared_ensemble_examples():
    ens, variables = tiny_ensemble(2)
    _, _, batch = tiny_setup()
    kw = dict(eps=EPS, step_size=0.05, steps=2)
    loss, aux, grads = run_objective(cce.ensemble_moo_at(ens.apply, weighting="tamoo", **kw),
                                     variables["params"], batch)
    # The same examples from the attack called directly (same key split as the objective).
    k_attack = jax.random.split(jax.random.PRNGKey(3), 4)[0]
    members = lambda v: ens.apply(variables, v, return_members=True)
    x_adv = fast_jit(lambda x, y: tamoo.tamoo_ens(members, x, y, key=k_attack, weighting="tamoo",
                                                  **kw))(batch["image"], batch["label"])
    assert_in_ball_and_box(x_adv, batch["image"], EPS)
    ref = sum(float(jnp.mean(losses.cross_entropy(z, batch["label"]))) for z in members(x_adv))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_ensemble_moo_at_trains_with_the_default_custom_vjp_conv():
    # Regression: the per-task gradients of the attack, taken inside the training step's gradient
    # under pmap (as advjax.train runs it), once vmapped the custom-VJP convolution (layers.Conv's
    # default impl), which failed to trace (NotImplementedError).
    cfg = {k: v for k, v in TINY_CNN.items() if k not in ("num_classes", "first_conv_impl",
                                                          "conv_impl")}
    ens = Ensemble(member="cnn4c3f", num_members=2, num_classes=3,
                   member_config=dict(dropout_rate=0.0, **cfg))
    variables = fast_jit(lambda k: models.init_variables(ens, k, (8, 8, 1)))(jax.random.PRNGKey(4))
    _, _, batch = tiny_setup()
    obj = cce.ensemble_moo_at(ens.apply, weighting="tamoo", eps=EPS, step_size=0.05, steps=2)
    key = jax.random.PRNGKey(3)
    state = {"model": {}, "method": obj.init_method_state(key)}
    step = jax.pmap(lambda p, b: jax.value_and_grad(obj, has_aux=True)(p, state, b, key),
                    axis_name="batch", devices=jax.local_devices()[:1])
    add_axis = functools.partial(jax.tree_util.tree_map, lambda a: a[None])
    (loss, _), grads = step(add_axis(variables["params"]), add_axis(batch))
    assert np.isfinite(float(loss[0]))
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))


def test_ens_attack_from_a_config_targets_the_ensemble_members():
    # advjax eval's logits function of an Ensemble carries .members, so the registered ENS attack
    # runs from an attack spec and equals tamoo_ens on the member logits.
    from types import SimpleNamespace

    from advjax import evaluate, train
    ens, variables = tiny_ensemble(2)
    _, _, batch = tiny_setup()
    x, y = batch["image"], batch["label"]
    state = SimpleNamespace(params=variables["params"],
                            model_state={k: v for k, v in variables.items() if k != "params"})
    f = train.eval_logits_fn(ens, state)
    np.testing.assert_allclose(f.members(x), ens.apply(variables, x, return_members=True),
                               rtol=1e-6)
    spec = dict(name="tamoo_ens_members", eps=EPS, step_size=0.05, steps=2, weighting="minmax")
    _, attack = evaluate.attack_from_spec(spec)
    key = jax.random.PRNGKey(7)
    got = fast_jit(lambda x, y: attack(f, x, y, key=key))(x, y)
    ref = fast_jit(lambda x, y: tamoo.tamoo_ens(f.members, x, y, key=key, eps=EPS, step_size=0.05,
                                                steps=2, weighting="minmax"))(x, y)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert_in_ball_and_box(got, x, EPS)
    with pytest.raises(ValueError, match="logits_fn"):
        attack(lambda v: ens.apply(variables, v), x, y, key=key)


def test_stochastic_eot_is_reproducible_per_key_and_stays_in_the_ball_and_box():
    fn = linear_member(jax.random.PRNGKey(7), 8 * 8, 4)
    x = jax.random.uniform(jax.random.PRNGKey(8), (4, 8, 8, 1))
    y = jnp.argmax(fn(x), -1)
    kw = dict(eps=EPS, step_size=0.04, steps=3, weighting="tamoo", stochastic=True)
    run = fast_jit(lambda x, y, k: tamoo.tamoo_eot(fn, x, y, key=k, **kw))
    a, b = run(x, y, jax.random.PRNGKey(0)), run(x, y, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_in_ball_and_box(a, x, EPS)
    assert not np.array_equal(np.asarray(a), np.asarray(run(x, y, jax.random.PRNGKey(1))))
    # Different keys draw different transformations; one draw per example, inside [0, 1], and the
    # parameter ranges contain the identity (crop 1, rotation 0, gamma 1), which the draws approach.
    draw = lambda k: {n: t(k, x) for n, t in tamoo.STOCHASTIC_EOT_TRANSFORMS.items()}
    d0, d1 = fast_jit(draw)(jax.random.PRNGKey(0)), fast_jit(draw)(jax.random.PRNGKey(1))
    for name in ("center_crop", "brightness", "rotation", "gamma"):
        out = np.asarray(d0[name])
        assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0, name
        assert not np.allclose(out, np.asarray(d1[name])), name
    np.testing.assert_allclose(tamoo.center_crop_resize_per_example(x, jnp.ones(4)), x, atol=1e-6)
    np.testing.assert_allclose(tamoo.rotate_per_example(x, jnp.zeros(4)), x, atol=1e-6)
    np.testing.assert_allclose(tamoo.rotate_per_example(x, jnp.full(4, 10.0)), tamoo.rotate(x),
                               atol=1e-6)
    np.testing.assert_allclose(tamoo.gamma_correction_per_example(x, jnp.full(4, 1.3)),
                               tamoo.gamma_correction(x), rtol=1e-5, atol=1e-7)
    # gamma < 1 keeps a finite gradient at black pixels (the thesis' overflow, App. D.4).
    g = jax.grad(lambda v: jnp.sum(tamoo.gamma_correction_per_example(v, jnp.full(4, 0.7))))(
        x.at[:, 0].set(0.0))
    assert np.all(np.isfinite(np.asarray(g)))
    succ = tamoo.eot_success(fn, a, y, stochastic_key=jax.random.PRNGKey(2))
    assert succ.shape == (4, 7)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "member_config":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_thesis_study_configs_match_their_baselines_in_everything_but_the_method():
    # Issue 16: each method is compared with the thesis' baseline under the same network, data,
    # adversary budget, optimizer and schedule; only objective.* may differ.
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "configs",
                                                                         f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return _flat(mod.get_config().to_dict())

    pairs = {"adr_none_fmnist": ["adr_adv_fmnist", "adr_trades_fmnist",
                                 "adr_baseline_trades_fmnist"],
             "ascl_none_fmnist": [f"ascl_{s}_fmnist" for s in ("global", "hard", "soft", "leaked")],
             "adv_en_fmnist": [f"cce_{m}_fmnist" for m in ("base", "rm", "dm")]}
    for base, others in pairs.items():
        b = load(base)
        budget = {k: b[k] for k in ("objective.eps", "objective.step_size", "objective.steps")}
        for other in others:
            o = load(other)
            differ = {k for k in set(b) | set(o) if b.get(k) != o.get(k)}
            assert all(k.startswith("objective.") for k in differ), (base, other, differ)
            assert {k: o[k] for k in budget} == budget, (base, other)
    adr_none = load("adr_none_fmnist")
    assert adr_none["objective.name"] == "adr_adv"
    assert all(adr_none[f"objective.lambda_{t}"] == 0 for t in ("lc", "gb", "conf", "smt"))
    assert (adr_none["optim.name"], adr_none["optim.lr"], adr_none["model.widths"],
            adr_none["model.fc_widths"]) == ("sgd", 0.01, (32, 32), (200, 200))
    ascl_none = load("ascl_none_fmnist")
    assert {k: v for k, v in ascl_none.items() if k.startswith("objective.")} == \
        {k: v for k, v in adr_none.items() if k.startswith("objective.")}
    assert (ascl_none["optim.name"], ascl_none["optim.lr"], ascl_none["optim.grad_clip"]) == \
        ("adam", 1e-3, 0.0)
    assert load("adv_en_fmnist")["objective.name"] == "adv_en"
