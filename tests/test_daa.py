"""DAA-BLOB, DAA-DGF and Algorithm 1 (Zheng et al., AAAI 2019): reductions to PGD, the interaction
terms against autodiff and naive loops, the median bandwidth, the threat model, restarts, padding.
"""

from __future__ import annotations

import functools
import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, evaluate
from advjax.attacks import daa
from conftest import (assert_in_threat_model, fast_jit, init_mlp, linear_logits, mlp_logits,
                      random_batch)

EPS, STEP, STEPS = 0.1, 0.02, 8

# Jitted entry points: one compilation each instead of dozens of eager primitives (keeps it fast).
blob_interaction = fast_jit(daa.blob_interaction, static_argnames="repulsive")
blob_direction = fast_jit(daa.blob_direction, static_argnames="repulsive")
dgf_interaction = fast_jit(daa.dgf_interaction)
dgf_direction = fast_jit(daa.dgf_direction)
pairwise_sq_dists = fast_jit(daa.pairwise_sq_dists)
median_sq_distance = fast_jit(daa.median_sq_distance)
median_bandwidth = fast_jit(daa.median_bandwidth, static_argnames="log_offset")


@pytest.fixture(scope="module")
def mlp():
    return mlp_logits(init_mlp(jax.random.PRNGKey(0), 12, 16, 5, scale=3.0))


@pytest.fixture(scope="module")
def batch():
    return random_batch(jax.random.PRNGKey(1), (24, 12), 5)


# Attacks run jitted with the static hyperparameters bound and everything else traced (eps, step
# size, c, coef, key, ...), cached by configuration: tests sharing a configuration share one compiled
# program, which is what keeps this file fast on CPU.
_STATIC = ("steps", "restarts", "loss", "kappa", "random_start", "repulsive")
_COMPILED = {}


def attack(name, f, x, y, **kw):
    fn = attacks.get_attack(name)
    params = inspect.signature(fn).parameters
    static = {k: p.default for k, p in params.items() if k in _STATIC}  # normalized cache key
    static.update({k: kw.pop(k) for k in list(kw) if k in _STATIC})
    static = tuple(sorted(static.items()))
    ck = (name, f, static)
    if ck not in _COMPILED:
        _COMPILED[ck] = fast_jit(functools.partial(fn, f, **dict(static)))
    return _COMPILED[ck](x, y, **kw)


def pgd(f, x, y, **kw):
    return attack("pgd", f, x, y, **{"eps": EPS, "step_size": STEP, "steps": STEPS, **kw})


def _run(method, f, x, y, **kw):
    kw = {"eps": EPS, "step_size": STEP, "steps": STEPS, **kw}
    if method == "blob":
        kw.setdefault("c", 1.5)
        return attack("daa_blob", f, x, y, **kw)
    kw.setdefault("coef", 1.0)
    return attack("daa_dgf", f, x, y, **kw)


def _naive_blob(x, g, h, repulsive):
    """(1/M) sum_j [K_ij g_j -/+ grad_{x_j} K(x_i, x_j)] with explicit loops, float64."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    g = np.asarray(g, np.float64).reshape(len(g), -1)
    m = len(x)
    out = np.zeros_like(x)
    s = 1.0 if repulsive else -1.0
    for i in range(m):
        for j in range(m):
            k = np.exp(-np.sum((x[i] - x[j]) ** 2) / h)
            out[i] += k * g[j] + s * (2.0 / h) * k * (x[i] - x[j])
    return out / m


# ------------------------------------------------------------------------------------------------
# Reductions to PGD
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,loss", list(itertools.product(["blob", "dgf"], ["ce", "cw"])))
def test_zero_coefficient_is_pgd_exactly(mlp, batch, method, loss):
    x, y = batch
    key = jax.random.PRNGKey(3)
    for restarts in ((1, 2) if (method, loss) == ("blob", "ce") else (1,)):
        ref = pgd(mlp, x, y, key=key, loss=loss, kappa=50.0, restarts=restarts)
        kw = {"c": 0.0} if method == "blob" else {"coef": 0.0}
        out = _run(method, mlp, x, y, key=key, loss=loss, restarts=restarts, **kw)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    # (A nonzero coefficient changes the result: test_interaction_changes_result_on_clustered_class.)


@pytest.mark.parametrize("method,repulsive", [("blob", False), ("blob", True), ("dgf", False)])
def test_single_particle_is_pgd(mlp, batch, method, repulsive):
    x, y = batch[0][:1], batch[1][:1]
    key = jax.random.PRNGKey(4)
    ref = pgd(mlp, x, y, key=key)
    kw = {"c": 3.0, "repulsive": repulsive} if method == "blob" else {"coef": 3.0}
    out = _run(method, mlp, x, y, key=key, **kw)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_cw_default_kappa_is_madrys_50(mlp, batch):
    x, y = batch
    key = jax.random.PRNGKey(5)
    ref = pgd(mlp, x, y, key=key, loss="cw", kappa=50.0)
    out = _run("blob", mlp, x, y, key=key, loss="cw", c=0.0)  # kappa left at its default
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


# ------------------------------------------------------------------------------------------------
# The interaction terms
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("repulsive", [False, True])
def test_blob_kernel_gradient_is_autodiff_of_kernel_sum(repulsive):
    kx, kg = jax.random.split(jax.random.PRNGKey(6))
    m, shape = 7, (2, 3, 2)
    x = jax.random.uniform(kx, (m,) + shape)
    g = jax.random.normal(kg, (m,) + shape)
    h = 1.7  # held fixed

    def kernel_sum(i, particles):
        """sum_j K(x_i, x_j) as a function of the particles x_j, with x_i fixed."""
        diff = (x[i] - particles).reshape(m, -1)
        return jnp.sum(jnp.exp(-jnp.sum(diff ** 2, axis=1) / h))

    # sum_j grad_{x_j} K(x_i, x_j) = sum over the particle axis of d kernel_sum(i, X) / dX.
    grad_k = fast_jit(jax.vmap(lambda i: jnp.sum(jax.grad(kernel_sum, argnums=1)(i, x), axis=0)))(
        jnp.arange(m))
    xn = np.asarray(x, np.float64).reshape(m, -1)
    k = np.exp(-np.sum((xn[:, None] - xn[None]) ** 2, axis=-1) / h)
    kg_term = (k @ np.asarray(g, np.float64).reshape(m, -1)).reshape(x.shape)
    expected = (kg_term + (1.0 if repulsive else -1.0) * np.asarray(grad_k)) / m
    got = blob_interaction(x, g, bandwidth=h, repulsive=repulsive)
    assert got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got).reshape(m, -1), _naive_blob(x, g, h, repulsive),
                               rtol=1e-4, atol=1e-5)
    # The analytic kernel-gradient part is not zero (the test is not vacuous).
    assert float(jnp.max(jnp.abs(grad_k))) > 1e-2


def test_blob_direction_median_bandwidth_and_naive_loop():
    kx, kg = jax.random.split(jax.random.PRNGKey(7))
    m = 9
    x = jax.random.uniform(kx, (m, 20))
    g = jax.random.normal(kg, (m, 20))
    xn = np.asarray(x, np.float64)
    dists = [np.linalg.norm(xn[i] - xn[j]) for i in range(m) for j in range(i + 1, m)]
    h = np.median(dists) ** 2 / np.log(m)
    got = blob_direction(x, g, c=2.0)
    want = np.asarray(g, np.float64) + 2.0 * _naive_blob(x, g, h, repulsive=False)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("m", [2, 5, 8])
def test_bandwidth_is_median_squared_over_log_m(m):
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(m), (m + 3, 30)), np.float64)
    valid = np.arange(m + 3) < m  # three padded rows with other content
    xv = x[:m]
    dists = [np.linalg.norm(xv[i] - xv[j]) for i in range(m) for j in range(i + 1, m)]
    med2 = np.median(dists) ** 2
    d2 = pairwise_sq_dists(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(float(median_sq_distance(d2, jnp.asarray(valid))), med2, rtol=1e-5)
    np.testing.assert_allclose(float(median_bandwidth(d2, jnp.asarray(valid))),
                               med2 / np.log(m), rtol=1e-5)
    np.testing.assert_allclose(float(median_bandwidth(d2, jnp.asarray(valid), log_offset=1.0)),
                               med2 / np.log(m + 1), rtol=1e-5)
    # Without the mask the padded rows change the median: the mask is what excludes them.
    all_dists = [np.linalg.norm(x[i] - x[j]) for i in range(m + 3) for j in range(i + 1, m + 3)]
    np.testing.assert_allclose(float(median_sq_distance(d2)), np.median(all_dists) ** 2,
                               rtol=1e-5)


def test_median_by_bisection_matches_numpy_with_ties():
    rng = np.random.default_rng(0)
    for m in (2, 3, 4, 7, 10):
        base = rng.uniform(0, 1, (m, 5)).astype(np.float32)
        base[m // 2:] = base[0]  # many coincident particles: ties and zero distances
        for x in (rng.uniform(0, 1, (m, 5)).astype(np.float32), base):
            d2 = pairwise_sq_dists(jnp.asarray(x))
            d = np.sqrt(np.asarray(d2, np.float64))
            want = np.median(d[np.triu_indices(m, 1)]) ** 2
            np.testing.assert_allclose(float(median_sq_distance(d2)), want, rtol=1e-5, atol=1e-12)


def test_pairwise_sq_dists_no_negative_round_off():
    base = jax.random.uniform(jax.random.PRNGKey(8), (1, 784))
    # Duplicates, near-duplicates and a far point.
    x = jnp.concatenate([base, base, base + 1e-2, jnp.ones((1, 784))])
    d2 = np.asarray(pairwise_sq_dists(x))
    assert np.all(d2 >= 0.0) and np.all(np.diag(d2) == 0.0)
    assert d2[0, 1] == 0.0 and d2[1, 0] == 0.0
    # Gram-matrix distances lose ~1e-7 ||x - mean||^2 to cancellation: fine at pixel-scale offsets.
    np.testing.assert_allclose(d2[0, 2], 784 * 1e-4, rtol=1e-2)
    blob = blob_direction(x, jnp.ones_like(x), c=1.0)
    dgf = dgf_direction(x, jnp.ones_like(x), coef=1.0)
    assert np.all(np.isfinite(blob)) and np.all(np.isfinite(dgf))


def test_dgf_interaction_matches_naive_formula():
    x = jax.random.uniform(jax.random.PRNGKey(9), (6, 4, 3))
    for lam in (0.5, 2.0, None):
        xn = np.asarray(x, np.float64).reshape(6, -1)
        d = np.array([[np.sum((xn[i] - xn[j]) ** 2) for j in range(6)] for i in range(6)])
        if lam is None:
            lam_ = np.median(np.sqrt(d[np.triu_indices(6, 1)])) ** 2 / np.log(7)
        else:
            lam_ = lam
        want = np.zeros_like(xn)
        for i in range(6):
            for j in range(6):
                want[i] += (d[i, j] / lam_ - 1.0) * np.exp(-d[i, j] / lam_) * (xn[i] - xn[j])
        got = dgf_interaction(x, lam=lam)
        assert got.shape == x.shape
        np.testing.assert_allclose(np.asarray(got).reshape(6, -1), want, rtol=1e-4, atol=1e-5)
        assert np.max(np.abs(want)) > 1e-2
        g = jax.random.normal(jax.random.PRNGKey(10), x.shape)
        np.testing.assert_allclose(np.asarray(dgf_direction(x, g, coef=0.3, lam=lam)),
                                   np.asarray(g) - 0.3 * want.reshape(x.shape),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["blob", "dgf"])
def test_masked_rows_do_not_interact(method):
    kx, kg, kp = jax.random.split(jax.random.PRNGKey(11), 3)
    x = jax.random.uniform(kx, (5, 16))
    g = jax.random.normal(kg, (5, 16))
    valid = jnp.arange(8) < 5
    fn = ((lambda a, b, **kw: blob_direction(a, b, c=2.0, **kw)) if method == "blob" else
          (lambda a, b, **kw: dgf_direction(a, b, coef=0.5, **kw)))
    ref = fn(x, g)
    for pad in (jnp.zeros((3, 16)), jax.random.uniform(kp, (3, 16)), jnp.repeat(x[:1], 3, 0)):
        out = fn(jnp.concatenate([x, pad]), jnp.concatenate([g, pad]), valid=valid)
        np.testing.assert_allclose(np.asarray(out[:5]), np.asarray(ref), rtol=1e-5, atol=1e-6)
    # Unmasked duplicates of x[0] do change the result (so the mask is doing the work).
    dup = jnp.repeat(x[:1], 3, 0)
    out = fn(jnp.concatenate([x, dup]), jnp.concatenate([g, jnp.repeat(g[:1], 3, 0)]),
             valid=jnp.ones(8, bool))
    assert not np.allclose(np.asarray(out[:5]), np.asarray(ref), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The attacks
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,loss,restarts",
                         [("blob", "ce", 1), ("dgf", "cw", 1)])
def test_particles_stay_in_ball_and_box(mlp, method, loss, restarts):
    # Inputs pinned at the box edges, large coefficients, eps larger than the distance to the edges.
    x, y = random_batch(jax.random.PRNGKey(12), (16, 12), 5)
    x = x.at[:4].set(0.0).at[4:8].set(1.0)
    eps = 0.3
    kw = {"c": 20.0} if method == "blob" else {"coef": 5.0}
    out = _run(method, mlp, x, y, key=jax.random.PRNGKey(13), eps=eps, step_size=eps / 3, steps=6,
               loss=loss, restarts=restarts, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_in_threat_model(out, x, eps, "linf")
    assert np.max(np.abs(np.asarray(out) - np.asarray(x))) > eps / 2  # the particles did move


@pytest.mark.parametrize("method", ["blob"])  # the restart loop is shared by both methods
def test_restarts_never_weaken(mlp, batch, method):
    x, y = batch
    key = jax.random.PRNGKey(14)
    kw = {"c": 2.0} if method == "blob" else {"coef": 1.0}
    best = _run(method, mlp, x, y, key=key, restarts=2, **kw)

    def score(xa):
        logits = mlp(xa)
        from advjax import losses
        return np.asarray(losses.cross_entropy(logits, y)), np.asarray(jnp.argmax(logits, -1) != y)

    ob, sb = score(best)
    for k in jax.random.split(key, 2):
        o, s = score(_run(method, mlp, x, y, key=k, **kw))
        assert np.all(sb >= s)  # every example fooled by some restart stays fooled
        both_fail = ~sb & ~s
        assert np.all(ob[both_fail] >= o[both_fail] - 1e-5)


@pytest.fixture(scope="module")
def clustered():
    """Class 0: 16 points clustered tightly; class 1: 16 spread points. Linear 2-class model."""
    rng = np.random.default_rng(0)
    d = 10
    center = rng.uniform(0.3, 0.7, d)
    x0 = center + 0.02 * rng.standard_normal((16, d))
    x1 = rng.uniform(0.0, 1.0, (16, d))
    x = jnp.asarray(np.clip(np.concatenate([x0, x1]), 0, 1), jnp.float32)
    y = jnp.asarray([0] * 16 + [1] * 16, jnp.int32)
    w = jnp.asarray(rng.standard_normal((d, 2)), jnp.float32)
    return linear_logits(w), x, y


@pytest.mark.parametrize("method", ["blob", "dgf"])
def test_interaction_changes_result_on_clustered_class(clustered, method):
    f, x, y = clustered
    kw = {"c": 2.0} if method == "blob" else {"coef": 0.05}
    common = dict(eps=0.1, step_size=0.02, steps=10, random_start=True, key=jax.random.PRNGKey(15))
    ref = np.asarray(pgd(f, x, y, **common))
    out = np.asarray(_run(method, f, x, y, **common, **kw))
    changed = np.mean(out[:16] != ref[:16])
    print(f"{method}: {changed:.3f} of the clustered coordinates changed")
    assert changed > 0.05, f"interaction changed only {changed:.3f} of the clustered coordinates"


def test_eager_matches_jitted_with_traced_hyperparameters(mlp, batch):
    # The other tests run jitted with eps, step_size and c traced; eagerly the results agree, and
    # c = 0 is PGD bit for bit in eager mode too.
    x, y = batch
    key = jax.random.PRNGKey(16)
    common = dict(key=key, eps=EPS, step_size=STEP, steps=STEPS)
    eager = attacks.daa_blob(mlp, x, y, c=1.5, **common)
    np.testing.assert_allclose(np.asarray(_run("blob", mlp, x, y, c=1.5, key=key)),
                               np.asarray(eager), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(attacks.daa_blob(mlp, x, y, c=0.0, **common)),
                                  np.asarray(attacks.pgd(mlp, x, y, **common)))


def test_valid_mask_in_attack(mlp, batch):
    x, y = batch[0][:5], batch[1][:5]
    ref = _run("blob", mlp, x, y, c=3.0, random_start=False)
    xp = jnp.concatenate([x, jnp.repeat(x[:1], 3, 0)])
    yp = jnp.concatenate([y, jnp.repeat(y[:1], 3, 0)])
    valid = jnp.arange(8) < 5
    out = _run("blob", mlp, xp, yp, c=3.0, random_start=False, valid=valid)
    np.testing.assert_allclose(np.asarray(out[:5]), np.asarray(ref), atol=1e-6)


def test_input_validation(mlp, batch):
    x, y = batch
    base = dict(eps=EPS, step_size=STEP, steps=2, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="needs c"):
        attacks.daa_blob(mlp, x, y, c=None, **base)
    with pytest.raises(ValueError, match="coef"):
        attacks.daa_dgf(mlp, x, y, coef=None, **base)
    with pytest.raises(ValueError, match="loss"):
        attacks.daa_blob(mlp, x, y, c=1.0, loss="kl", **base)
    with pytest.raises(ValueError, match="bandwidth"):
        attacks.daa_blob(mlp, x, y, c=1.0, bandwidth=0.0, **base)
    with pytest.raises(ValueError, match="lam"):
        attacks.daa_dgf(mlp, x, y, coef=1.0, lam=-1.0, **base)
    with pytest.raises(ValueError, match="valid"):
        attacks.daa_blob(mlp, x, y, c=1.0, valid=jnp.ones(3, bool), **base)


def test_registered_and_usable_from_robust_accuracy(mlp, batch):
    assert attacks.get_attack("daa_blob") is attacks.daa_blob
    assert attacks.get_attack("daa_dgf") is attacks.daa_dgf
    assert attacks.daa_blob.batch_level and attacks.daa_dgf.batch_level
    x, y = batch
    specs = [{"name": "daa_blob", "eps": EPS, "step_size": STEP, "steps": 4, "c": 1.5}]
    res = evaluate.robust_accuracy(mlp, (np.asarray(x), np.asarray(y)), specs,
                                   key=jax.random.PRNGKey(0), batch_size=12)
    assert res.n == len(x) and set(res.attacks) == {"daa_blob"}
    assert all(a <= res.clean for a in res.attacks.values())


# ------------------------------------------------------------------------------------------------
# Algorithm 1
# ------------------------------------------------------------------------------------------------

def test_algorithm1_through_robust_accuracy_matches_direct_call(mlp, batch):
    # A set-level attack: robust_accuracy runs it once on all 24 examples (evaluation batches of 10,
    # so the last one is padded), and its column equals the predictions on the direct call's output.
    x, y = np.asarray(batch[0]), np.asarray(batch[1])
    spec = {"name": "daa_algorithm1", "label": "alg1", "rounds": 2, "batch_size": 8, "steps": 4,
            "eps": EPS, "step_size": STEP, "c": 2.0}
    key = jax.random.PRNGKey(5)
    res = evaluate.robust_accuracy(mlp, (x, y), [spec], key=key, batch_size=10)
    _, fn = evaluate.attack_from_spec(spec)
    assert evaluate.is_set_level(fn) and not evaluate.is_set_level(attacks.pgd)
    x_adv = fn(mlp, jnp.asarray(x), jnp.asarray(y), key=jax.random.fold_in(jax.random.fold_in(key, 2**31 - 1), 0))
    direct = np.asarray(jnp.argmax(mlp(x_adv), -1)) == y
    np.testing.assert_array_equal(res.correct["alg1"], direct)
    assert res.attacks["alg1"] < res.clean  # the attack did something
    with pytest.raises(ValueError, match="whole evaluation set"):
        evaluate.robust_accuracy(mlp, [(x, y)], [spec], key=key, batch_size=24)
    res_limited = evaluate.robust_accuracy(mlp, (x, y), [spec], key=key, batch_size=10, limit=15)
    assert res_limited.n == 15 and len(res_limited.correct["alg1"]) == 15


def test_round_steps_sum_to_total():
    assert daa.round_steps(100, 10) == [10] * 10
    assert daa.round_steps(7, 3) == [3, 2, 2]
    for steps, rounds in [(7, 3), (5, 5), (11, 4)]:
        assert sum(daa.round_steps(steps, rounds)) == steps


def test_algorithm1_makes_exactly_l_steps(mlp, batch):
    # With c = 0 the particles do not interact, so Algorithm 1 is PGD with L steps whatever the
    # rounds (3 rounds of 3, 2, 2 steps), the permutations and the (padded: 24 = 2 * 10 + 4)
    # minibatches. Equal up to float32 rounding (1 ulp: the jitted random start and projection fuse
    # differently from eager PGD's); a step more or fewer moves coordinates by 0.01.
    x, y = batch
    key = jax.random.PRNGKey(17)
    out = np.asarray(daa.daa_algorithm1(mlp, x, y, key=key, rounds=3, batch_size=10, steps=7,
                                        eps=0.3, step_size=0.01, c=0.0))
    ref = np.asarray(pgd(mlp, x, y, key=key, eps=0.3, step_size=0.01, steps=7))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["blob"])  # DGF's Algorithm 1 path: test_algorithm1_restarts...
def test_algorithm1_one_minibatch_equals_direct_update(mlp, batch, method):
    x, y = batch
    key = jax.random.PRNGKey(18)
    kw = {"c": 2.0} if method == "blob" else {"coef": 1.0}
    out = daa.daa_algorithm1(mlp, x, y, key=key, method=method, rounds=1, batch_size=len(x),
                             steps=STEPS, eps=EPS, step_size=STEP, **kw)
    ref = _run(method, mlp, x, y, key=key, **kw)
    # The set is permuted before the update: equal up to float summation order.
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    if method == "blob":  # ...and different from PGD, so the comparison is not vacuous.
        ref_pgd = pgd(mlp, x, y, key=key)
        assert np.any(np.asarray(out) != np.asarray(ref_pgd))


def test_algorithm1_padding_does_not_leak(mlp, batch):
    # N = 9, M = 8: one round puts one particle alone in a minibatch padded with 7 masked rows;
    # alone, DAA is PGD exactly (M = 1). The other 8 particles form one full minibatch.
    x, y = batch[0][:9], batch[1][:9]
    key = jax.random.PRNGKey(19)
    common = dict(eps=EPS, step_size=STEP, steps=STEPS, random_start=False)
    out = np.asarray(daa.daa_algorithm1(mlp, x, y, key=key, rounds=1, batch_size=8, c=5.0,
                                        **common))
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 9))
    alone = perm[8:]
    ref_alone = pgd(mlp, x[alone], y[alone], **common)
    np.testing.assert_array_equal(out[alone], np.asarray(ref_alone))
    first = perm[:8]
    ref_first = _run("blob", mlp, x[first], y[first], c=5.0, **common)
    np.testing.assert_allclose(out[first], np.asarray(ref_first), atol=1e-6)


def test_algorithm1_restarts_and_threat_model(mlp, batch):
    x, y = batch
    out = daa.daa_algorithm1(mlp, x, y, key=jax.random.PRNGKey(20), method="dgf", rounds=2,
                             batch_size=10, steps=4, eps=EPS, step_size=STEP, coef=1.0, restarts=2,
                             loss="cw")
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_in_threat_model(out, x, EPS, "linf")
    with pytest.raises(ValueError, match="rounds"):
        daa.daa_algorithm1(mlp, x, y, key=jax.random.PRNGKey(0), rounds=5, batch_size=8, steps=4,
                           eps=EPS, step_size=STEP, c=1.0)


def test_robust_accuracy_padding_does_not_join_daa_particles():
    """evaluate pads the last batch by repeating its first example; a batch-level attack must get
    the mask, so the real rows' predictions equal those of the unpadded batch."""

    w = jax.random.normal(jax.random.PRNGKey(0), (20, 10))
    f = lambda x: x.reshape(x.shape[0], -1) @ w
    x = jax.random.uniform(jax.random.PRNGKey(1), (12, 4, 5))
    y = jnp.argmax(f(x), -1)
    attack = functools.partial(daa.daa_blob, eps=0.1, step_size=0.02, steps=5, c=20.0,
                               random_start=False)
    unpadded = evaluate._attacked_predictions(f, attack, x, y, None, jnp.ones(12, bool))
    xp = jnp.concatenate([x, jnp.repeat(x[:1], 8, axis=0)])
    yp = jnp.concatenate([y, jnp.repeat(y[:1], 8)])
    masked = evaluate._attacked_predictions(f, attack, xp, yp, None, jnp.arange(20) < 12)
    np.testing.assert_array_equal(masked[0][:12], unpadded[0])  # (predictions, output stats)
    # Without the mask the duplicated rows do interact (so the mask is what makes this pass).
    x_unmasked = attack(f, xp, yp, key=None)
    x_ref = attack(f, x, y, key=None)
    assert not np.allclose(x_unmasked[:12], x_ref, atol=1e-6)
