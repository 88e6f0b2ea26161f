"""Threat models: projections against independent characterizations, steepest ascent against random
competitors, and the distribution of random starts.

The Euclidean projection p of v onto a closed convex set C is characterized by the variational
inequality <v - p, q - p> <= 0 for all q in C. For the l_p ball of radius eps the maximum of the linear
function <v - p, q> over C is eps * ||v - p||_q (q the dual exponent), so

    p in C   and   eps * ||v - p||_dual <= <v - p, p>

is a complete, exact check of the projection that uses no sorting and no advjax code.
"""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from advjax import threat
from conftest import fast_jit, per_example_norm

DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)

shapes = st.sampled_from([(1, 1), (3, 5), (2, 4, 4, 1), (1, 64)])
radii = st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0, 4.0])
norms = st.sampled_from(threat.NORMS)
seeds = st.integers(0, 2 ** 16)


# Jitted once per shape (eager dispatch would compile every primitive for every new shape).
project = fast_jit(threat.project, static_argnums=2)
project_to_threat = fast_jit(threat.project_to_threat, static_argnums=3)
steepest_ascent = fast_jit(threat.steepest_ascent, static_argnums=(1, 2))
random_init = fast_jit(threat.random_init, static_argnums=3)


def _batch(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


# ------------------------------------------------------------------------------------------------
# Projections
# ------------------------------------------------------------------------------------------------

def _bisection_l1(v: np.ndarray, eps: float) -> np.ndarray:
    """Projection onto the l1 ball by bisection on the soft threshold (float64, no sorting).

    Outside the ball the projection is sign(v) max(|v| - theta, 0) with theta > 0 the root of the
    decreasing function s(theta) = sum max(|v| - theta, 0) - eps.
    """
    a = np.abs(v)
    if a.sum() <= eps:
        return v.copy()
    lo, hi = 0.0, a.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(a - mid, 0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(a - 0.5 * (lo + hi), 0)


@SETTINGS
@given(shape=shapes, eps=radii, seed=seeds, scale=st.sampled_from([0.01, 0.3, 3.0]))
def test_l1_projection_matches_bisection(shape, eps, seed, scale):
    v = _batch(seed, shape, scale)
    p = np.asarray(project(v, eps, "l1"), np.float64)
    flat_v = np.asarray(v, np.float64).reshape(shape[0], -1)
    expected = np.stack([_bisection_l1(row, eps) for row in flat_v]).reshape(shape)
    np.testing.assert_allclose(p, expected, atol=1e-5 * max(1.0, eps))


@SETTINGS
@given(shape=shapes, eps=radii, seed=seeds, norm=norms, scale=st.sampled_from([0.01, 0.3, 3.0]))
def test_projection_satisfies_variational_inequality(shape, eps, seed, norm, scale):
    v = _batch(seed, shape, scale)
    p = project(v, eps, norm)
    chex.assert_equal_shape((p, v))
    chex.assert_trees_all_equal_dtypes(p, v)
    p64 = np.asarray(p, np.float64).reshape(shape[0], -1)
    r = np.asarray(v, np.float64).reshape(shape[0], -1) - p64
    tol = 1e-5 * (1.0 + np.abs(np.asarray(v)).sum())
    # Feasible ...
    assert np.all(per_example_norm(p64, norm) <= eps * (1 + 1e-5) + 1e-7)
    # ... and no point of the ball is closer to v.
    support = eps * per_example_norm(r, DUAL[norm])
    inner = np.sum(r * p64, axis=1)
    assert np.all(support <= inner + tol), (support - inner).max()


@SETTINGS
@given(shape=shapes, eps=radii, seed=seeds, norm=norms)
def test_projection_is_idempotent_and_fixes_the_ball(shape, eps, seed, norm):
    v = _batch(seed, shape, 2.0)
    p = project(v, eps, norm)
    chex.assert_trees_all_close(project(p, eps, norm), p, atol=1e-6 * max(1.0, eps))
    # A point strictly inside the ball is its own projection.
    inside = v / (jnp.asarray(per_example_norm(v, norm), jnp.float32).reshape(
        (-1,) + (1,) * (v.ndim - 1)) + 1e-12) * 0.9 * eps
    chex.assert_trees_all_close(project(inside, eps, norm), inside, atol=1e-7)


def test_linf_and_l2_projection_closed_forms():
    v = jnp.array([[3.0, -4.0], [0.1, 0.2], [-0.5, 0.0]])
    chex.assert_trees_all_close(threat.project(v, 0.3, "linf"),
                                jnp.array([[0.3, -0.3], [0.1, 0.2], [-0.3, 0.0]]))
    chex.assert_trees_all_close(threat.project(v, 1.0, "l2"),
                                jnp.array([[0.6, -0.8], [0.1, 0.2], [-0.5, 0.0]]), atol=1e-6)
    # l1: |v| = (3, 4) projected onto the simplex of radius 1 is (0, 1): threshold 3.
    chex.assert_trees_all_close(threat.project(v[:1], 1.0, "l1"), jnp.array([[0.0, -1.0]]))
    chex.assert_trees_all_close(threat.project(v[:1], 3.0, "l1"), jnp.array([[1.0, -2.0]]))


def test_projection_works_under_jit_with_traced_eps():
    v = _batch(0, (4, 10), 1.0)
    for norm in threat.NORMS:
        jitted = jax.jit(threat.project, static_argnums=2)
        chex.assert_trees_all_close(jitted(v, 0.25, norm), threat.project(v, 0.25, norm), atol=1e-6)


@pytest.mark.parametrize("norm", threat.NORMS)
def test_projection_keeps_low_precision_dtype_with_array_eps(norm):
    v = _batch(0, (3, 8), 1.0).astype(jnp.bfloat16)
    x = jnp.full((3, 8), 0.5, jnp.bfloat16)
    eps = jnp.float32(0.25)
    assert project(v, eps, norm).dtype == jnp.bfloat16
    assert project_to_threat(x + v, x, eps, norm).dtype == jnp.bfloat16
    assert random_init(jax.random.PRNGKey(0), x, eps, norm).dtype == jnp.bfloat16


@SETTINGS
@given(shape=shapes, eps=radii, seed=seeds, norm=norms)
def test_project_to_threat_lands_in_ball_and_box(shape, eps, seed, norm):
    kx, kv = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.uniform(kx, shape)
    x_adv = x + 3.0 * jax.random.normal(kv, shape)
    out = np.asarray(project_to_threat(x_adv, x, eps, norm), np.float64)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(per_example_norm(out - np.asarray(x), norm) <= eps * (1 + 1e-5) + 1e-6)


def test_norm_is_checked():
    with pytest.raises(ValueError, match="norm"):
        threat.project(jnp.zeros((1, 3)), 0.1, "l3")
    with pytest.raises(ValueError, match="norm"):
        threat.steepest_ascent(jnp.zeros((1, 3)), "inf")
    with pytest.raises(ValueError, match="norm"):
        threat.random_init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), 0.1, "L2")


# ------------------------------------------------------------------------------------------------
# Steepest ascent
# ------------------------------------------------------------------------------------------------

def _random_unit_ball_points(rng, n, d, norm):
    """n points of the unit l_p ball drawn by NumPy (interior and boundary, several shapes)."""
    if norm == "linf":
        pts = rng.uniform(-1, 1, (n, d))
        pts[: n // 2] = np.sign(pts[: n // 2])  # vertices
        return pts
    if norm == "l2":
        g = rng.normal(size=(n, d))
        return g / np.linalg.norm(g, axis=1, keepdims=True)
    g = rng.laplace(size=(n, d)) * (rng.uniform(size=(n, d)) < 0.3)
    g[:, 0] += 1e-9
    return g / np.abs(g).sum(axis=1, keepdims=True)


@SETTINGS
@given(shape=shapes, seed=seeds, norm=norms)
def test_steepest_ascent_maximizes_linear_function_on_unit_ball(shape, seed, norm):
    g = _batch(seed, shape)
    v = np.asarray(steepest_ascent(g, norm, 1), np.float64).reshape(shape[0], -1)
    g64 = np.asarray(g, np.float64).reshape(shape[0], -1)
    np.testing.assert_allclose(per_example_norm(v, norm), 1.0, rtol=1e-5)
    value = np.sum(g64 * v, axis=1)
    # The maximum of <g, v> over the unit l_p ball is the dual norm of g.
    np.testing.assert_allclose(value, per_example_norm(g64, DUAL[norm]), rtol=1e-5)
    rng = np.random.default_rng(seed)
    for i in range(shape[0]):
        competitors = _random_unit_ball_points(rng, 500, g64.shape[1], norm) @ g64[i]
        assert competitors.max() <= value[i] + 1e-5 * (1 + abs(value[i]))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_l1_topk_direction(k):
    g = _batch(3, (4, 10))
    v = np.asarray(threat.steepest_ascent(g, "l1", l1_k=k))
    g = np.asarray(g)
    np.testing.assert_allclose(np.abs(v).sum(axis=1), 1.0, rtol=1e-6)
    for vi, gi in zip(v, g):
        top = np.argsort(-np.abs(gi))[:k]
        np.testing.assert_array_equal(np.flatnonzero(vi), np.sort(top))
        np.testing.assert_allclose(vi[top], np.sign(gi[top]) / k)


def test_l1_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="l1_k"):
        threat.steepest_ascent(jnp.ones((2, 5)), "l1", l1_k=6)
    with pytest.raises(ValueError, match="l1_k"):
        threat.steepest_ascent(jnp.ones((2, 5)), "l1", l1_k=0)


@pytest.mark.parametrize("norm", threat.NORMS)
def test_steepest_ascent_of_zero_gradient_is_finite_and_zero(norm):
    v = threat.steepest_ascent(jnp.zeros((2, 6)), norm)
    chex.assert_tree_all_finite(v)
    chex.assert_trees_all_equal(v, jnp.zeros((2, 6)))


# ------------------------------------------------------------------------------------------------
# Random starts
# ------------------------------------------------------------------------------------------------

N_SAMPLES = 4000


@pytest.mark.parametrize("norm", threat.NORMS)
@pytest.mark.parametrize("d", [1, 2, 5, 20])
def test_random_init_is_uniform_in_the_ball_radially(norm, d):
    """For a uniform point in a d-dimensional ball of radius eps, P(||delta|| <= eps q^(1/d)) = q."""
    eps = 0.3
    x = jnp.zeros((N_SAMPLES, d))
    delta = random_init(jax.random.PRNGKey(d), x, eps, norm)
    chex.assert_equal_shape((delta, x))
    r = per_example_norm(delta, norm)
    assert np.all(r <= eps * (1 + 1e-5))
    tol = 4 * np.sqrt(0.25 / N_SAMPLES)  # four standard errors of a proportion
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        frac = np.mean(r <= eps * q ** (1.0 / d))
        assert abs(frac - q) < tol, f"{norm}, d={d}: P(r <= eps {q}^(1/d)) = {frac}, expected {q}"


@pytest.mark.parametrize("d", [3, 16])
def test_random_init_directions(d):
    """Direction checks that a radial test cannot see (moments of uniform ball / sphere points)."""
    eps = 1.0
    rng_key = jax.random.PRNGKey(100 + d)
    x = jnp.zeros((N_SAMPLES, d))
    # l1: each |delta_i| / eps is Beta(1, d), so P(|delta_i| <= eps (1 - 0.5^(1/d))) = 1/2; signs
    # are symmetric.
    delta = np.asarray(random_init(rng_key, x, eps, "l1"))
    frac = np.mean(np.abs(delta) <= eps * (1 - 0.5 ** (1.0 / d)))
    assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / delta.size) * np.sqrt(d)
    assert abs(np.mean(delta > 0) - 0.5) < 0.02
    # l2: the direction is uniform on the sphere, E[u_i^4] = 3 / (d (d + 2)) (a box-normalized or
    # axis-biased direction has a different fourth moment).
    delta = np.asarray(random_init(rng_key, x, eps, "l2"), np.float64)
    u = delta / np.linalg.norm(delta, axis=1, keepdims=True)
    ratio = np.mean(u ** 4) * d * (d + 2) / 3
    assert abs(ratio - 1) < 0.1, ratio
    # linf: coordinates are independent U(-eps, eps): E[delta_i^2] = eps^2 / 3.
    delta = np.asarray(random_init(rng_key, x, eps, "linf"), np.float64)
    np.testing.assert_allclose(np.mean(delta ** 2, axis=0), eps ** 2 / 3, rtol=0.1)


def test_random_init_is_deterministic_and_key_dependent():
    x = jnp.zeros((8, 5))
    for norm in threat.NORMS:
        a = random_init(jax.random.PRNGKey(0), x, 0.5, norm)
        b = random_init(jax.random.PRNGKey(0), x, 0.5, norm)
        c = random_init(jax.random.PRNGKey(1), x, 0.5, norm)
        chex.assert_trees_all_equal(a, b)
        assert not np.allclose(a, c)
