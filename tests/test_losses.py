"""Per-example losses against optax, direct NumPy formulas and their defining invariances."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

from advjax import losses

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)

# A few shapes only: every new shape recompiles each primitive, which dominates the run time.
batches = st.sampled_from([1, 5])
classes = st.sampled_from([4, 10])
seeds = st.integers(0, 2 ** 16)
scales = st.sampled_from([0.01, 1.0, 30.0])


def _logits(seed, b, c, scale=1.0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    z = scale * jax.random.normal(k1, (b, c))
    y = jax.random.randint(k2, (b,), 0, c)
    return z, y


@SETTINGS
@given(b=batches, c=classes, seed=seeds, scale=scales)
def test_cross_entropy_equals_optax(b, c, seed, scale):
    z, y = _logits(seed, b, c, scale)
    out = losses.cross_entropy(z, y)
    chex.assert_shape(out, (b,))
    chex.assert_trees_all_close(out, optax.softmax_cross_entropy_with_integer_labels(z, y),
                                rtol=1e-5, atol=1e-5)


@SETTINGS
@given(b=batches, c=classes, seed=seeds, scale=scales)
def test_cw_margin_formula_and_sign(b, c, seed, scale):
    z, y = _logits(seed, b, c, scale)
    zn, yn = np.asarray(z, np.float64), np.asarray(y)
    other = np.array([np.max(np.delete(zi, yi)) for zi, yi in zip(zn, yn)])
    expected = other - zn[np.arange(b), yn]
    out = np.asarray(losses.cw_margin(z, y))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    misclassified = np.argmax(zn, axis=1) != yn
    np.testing.assert_array_equal(out > 0, misclassified)
    # kappa caps the margin from above.
    capped = np.asarray(losses.cw_margin(z, y, kappa=0.5))
    np.testing.assert_allclose(capped, np.minimum(expected, 0.5), rtol=1e-5, atol=1e-5)


def test_cw_margin_with_very_negative_logits():
    # The true class must be excluded from the max even when every logit is hugely negative.
    z = jnp.array([[-5e9, -6e9, -7e9]])
    out = losses.cw_margin(z, jnp.array([0]))
    chex.assert_trees_all_close(out, jnp.array([-1e9]), rtol=1e-3)


def _dlr_reference(z, y):
    z = np.asarray(z, np.float64)
    s = np.sort(z, axis=1)[:, ::-1]
    other = np.array([np.max(np.delete(zi, yi)) for zi, yi in zip(z, y)])
    return -(z[np.arange(len(y)), y] - other) / (s[:, 0] - s[:, 2])


@SETTINGS
@given(b=batches, c=classes, seed=seeds, shift=st.floats(-50, 50), scale=st.floats(0.05, 20))
def test_dlr_formula_and_invariance_to_shift_and_positive_scale(b, c, seed, shift, scale):
    z, y = _logits(seed, b, c)
    base = losses.dlr(z, y)
    np.testing.assert_allclose(base, _dlr_reference(z, np.asarray(y)), rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(losses.dlr(z + shift, y), base, rtol=1e-3, atol=1e-3)
    chex.assert_trees_all_close(losses.dlr(z * scale, y), base, rtol=1e-3, atol=1e-3)
    # Positive iff misclassified (the numerator is the C&W margin).
    np.testing.assert_array_equal(np.asarray(base) > 0, np.argmax(z, 1) != y)


@SETTINGS
@given(b=batches, c=classes, seed=seeds, shift=st.floats(-50, 50), scale=st.floats(0.05, 20))
def test_targeted_dlr_formula_and_invariance(b, c, seed, shift, scale):
    z, y = _logits(seed, b, c)
    t = (y + 1 + jax.random.randint(jax.random.PRNGKey(seed + 1), y.shape, 0, c - 1)) % c
    zn, yn, tn = np.asarray(z, np.float64), np.asarray(y), np.asarray(t)
    s = np.sort(zn, axis=1)[:, ::-1]
    expected = -(zn[np.arange(b), yn] - zn[np.arange(b), tn]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]))
    base = losses.dlr_targeted(z, y, t)
    np.testing.assert_allclose(base, expected, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(losses.dlr_targeted(z + shift, y, t), base, rtol=1e-3, atol=1e-3)
    chex.assert_trees_all_close(losses.dlr_targeted(z * scale, y, t), base, rtol=1e-3, atol=1e-3)


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="3 classes"):
        losses.dlr(jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="4 classes"):
        losses.dlr_targeted(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), jnp.ones(2, jnp.int32))


@SETTINGS
@given(b=batches, c=classes, seed=seeds, scale=scales)
def test_kl_is_nonnegative_and_zero_iff_equal_distributions(b, c, seed, scale):
    p, _ = _logits(seed, b, c, scale)
    q, _ = _logits(seed + 1, b, c, scale)
    kl = np.asarray(losses.kl_divergence(p, q))
    assert np.all(kl >= -1e-6)
    # Against the direct formula with NumPy softmax.
    def log_softmax(z):
        z = np.asarray(z, np.float64)
        m = z.max(axis=1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(p), log_softmax(q)
    np.testing.assert_allclose(kl, np.sum(np.exp(lp) * (lp - lq), axis=1), rtol=1e-4, atol=1e-5)
    # Zero for the same distribution, including logits that differ by a per-example shift.
    chex.assert_trees_all_close(losses.kl_divergence(p, p + 3.0), jnp.zeros(b), atol=1e-5)
    # Strictly positive for different distributions.
    distinct = np.abs(np.exp(lp) - np.exp(lq)).max(axis=1) > 1e-3
    assert np.all(kl[distinct] > 0)


def test_entropy_bounds():
    z, _ = _logits(0, 5, 7, 3.0)
    h = np.asarray(losses.entropy(z))
    assert np.all(h >= 0) and np.all(h <= np.log(7) + 1e-6)
    np.testing.assert_allclose(losses.entropy(jnp.zeros((1, 7))), [np.log(7)], rtol=1e-6)


def test_get_loss_resolves_names_and_rejects_unknown():
    z, y = _logits(0, 3, 5)
    chex.assert_trees_all_close(losses.get_loss("ce")(z, y), losses.cross_entropy(z, y))
    chex.assert_trees_all_close(losses.get_loss("cw", kappa=0.1)(z, y), losses.cw_margin(z, y, 0.1))
    chex.assert_trees_all_close(losses.get_loss("dlr")(z, y), losses.dlr(z, y))
    nat = z + 1.0
    chex.assert_trees_all_close(losses.get_loss("kl", logits_nat=nat)(z, y),
                                losses.kl_divergence(nat, z))
    fn = lambda logits, yy: logits[:, 0]
    assert losses.get_loss(fn) is fn
    with pytest.raises(ValueError, match="logits_nat"):
        losses.get_loss("kl")
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.get_loss("hinge")


def test_kl_loss_treats_natural_logits_as_constants():
    z, y = _logits(0, 3, 5)
    g = jax.grad(lambda nat: jnp.sum(losses.get_loss("kl", logits_nat=nat)(z + 0.5, y)))(z)
    chex.assert_trees_all_equal(g, jnp.zeros_like(z))
