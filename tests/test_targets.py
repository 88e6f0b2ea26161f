"""Target selection (advjax.attacks.targets) and targeted modes: each rule against an independent NumPy
reference, APGD-T's published target order (the reference AutoAttack code's sort), and targeted
attacks that reach their targets on a model where every class is reachable."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks import targets

C, D = 6, 12


def prototype_logits(key, classes: int = C, dim: int = D):
    """logit_c(x) = -||x - p_c||^2 with prototypes p_c in [0.1, 0.9]^d: class c wins at x = p_c,
    so every class is reachable inside the [0, 1] box (an eps = 1 linf ball covers it)."""
    protos = jax.random.uniform(key, (classes, dim), jnp.float32, 0.1, 0.9)

    def f(x):
        flat = x.reshape(x.shape[0], -1)
        return -jnp.sum((flat[:, None, :] - protos[None]) ** 2, axis=-1)

    return f, protos


@pytest.fixture(scope="module")
def problem():
    f, protos = prototype_logits(jax.random.PRNGKey(0))
    # Each example sits near its own class' prototype, so it is correctly classified.
    y = jnp.arange(8) % C
    noise = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (8, D))
    x = jnp.clip(protos[y] + noise, 0.0, 1.0)
    assert np.all(np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y))
    return f, x, y


# ------------------------------------------------------------------------------------------------
# The rules against NumPy references
# ------------------------------------------------------------------------------------------------

def test_ranked_targets_is_autoattack_order_for_correct_points():
    """APGD-T's k-th target is `output.sort(dim=1)[1][:, -(k + 1)]` in the reference code (for the
    correctly classified points it attacks): the (k+1)-th most likely class overall."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10)).astype(np.float32)
    y = logits.argmax(1)
    got = np.asarray(targets.ranked_targets(jnp.asarray(logits), jnp.asarray(y), 9))
    ref = np.stack([np.argsort(logits, axis=1)[:, -(k + 1)] for k in range(1, 10)], axis=1)
    np.testing.assert_array_equal(got, ref)


def test_ranked_targets_never_contain_y_for_misclassified_points():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 10)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    got = np.asarray(targets.ranked_targets(jnp.asarray(logits), jnp.asarray(y), 9))
    assert not np.any(got == y[:, None])
    # The 9 other classes, each once, by decreasing logit.
    for row, yi, lg in zip(got, y, logits):
        assert sorted(row.tolist()) == [c for c in range(10) if c != yi]
        assert np.all(np.diff(lg[row]) <= 0)


def test_least_likely_targets_match_reference():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(30, 7)).astype(np.float32)
    y = rng.integers(0, 7, 30)
    masked = np.where(np.eye(7, dtype=bool)[y], np.inf, logits)
    for k in (1, 2):
        got = np.asarray(targets.least_likely_targets(jnp.asarray(logits), jnp.asarray(y), k))
        np.testing.assert_array_equal(got, np.argsort(masked, axis=1)[:, k - 1])


def test_random_targets_uniform_over_other_classes():
    y = jnp.asarray(np.random.default_rng(3).integers(0, 5, 4000))
    t = np.asarray(targets.random_targets(jax.random.PRNGKey(0), y, 5))
    assert not np.any(t == np.asarray(y))
    # Per true class, each of the 4 other classes about 1/4 of the time (binomial sd ~ 0.015).
    for c in range(5):
        counts = np.bincount(t[np.asarray(y) == c], minlength=5) / np.sum(np.asarray(y) == c)
        assert counts[c] == 0
        np.testing.assert_allclose(np.delete(counts, c), 0.25, atol=0.06)
    # A function of the key.
    np.testing.assert_array_equal(t, targets.random_targets(jax.random.PRNGKey(0), y, 5))


def test_label_map_and_function_rules(problem):
    f, x, y = problem
    shift = [(c + 1) % C for c in range(C)]
    np.testing.assert_array_equal(targets.by_label_map(shift)(f, x, y, None), (np.asarray(y) + 1) % C)
    np.testing.assert_array_equal(
        targets.by_label_map({c: (c + 2) % C for c in range(C)})(f, x, y, None),
        (np.asarray(y) + 2) % C)
    np.testing.assert_array_equal(targets.by_function(lambda xx, yy: (yy + 3) % C)(f, x, y, None),
                                  (np.asarray(y) + 3) % C)
    with pytest.raises(ValueError, match="mapping must give a target for every class"):
        targets.by_label_map({0: 1})(f, x, y, None)
    with pytest.raises(ValueError, match="mapping must hold"):
        targets.by_label_map([1, 2])(f, x, y, None)


def test_check_targets_errors(problem):
    f, x, y = problem
    with pytest.raises(ValueError, match="targets must be an int array of y's shape"):
        targets.check_targets(jnp.zeros((3,), jnp.int32), y, C)
    with pytest.raises(ValueError, match="integer classes"):
        targets.check_targets(jnp.zeros(y.shape), y, C)
    with pytest.raises(ValueError, match=r"classes in \[0, 6\)"):
        targets.check_targets(jnp.full(y.shape, 7), y, C)
    with pytest.raises(ValueError, match="must differ from the true labels"):
        targets.check_targets(y, y, C)


# ------------------------------------------------------------------------------------------------
# Targeted attacks reach their targets
# ------------------------------------------------------------------------------------------------

RULES = {
    "random": targets.random(),
    "least_likely": targets.least_likely(),
    "most_likely_2": targets.most_likely(2),
    "label_map": targets.by_label_map([(c + 1) % C for c in range(C)]),
    "function": targets.by_function(lambda x, y: (y + C - 1) % C),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_targeted_pgd_reaches_targets_for_every_rule(problem, rule):
    f, x, y = problem
    attack = attacks.targeted(attacks.pgd, RULES[rule])
    key = jax.random.PRNGKey(4)
    x_adv = attack(f, x, y, key=key, eps=1.0, steps=20)
    t = np.asarray(attack.targets(f, x, y, key))
    assert not np.any(t == np.asarray(y))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(f(x_adv), -1)), t)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_targeted_apgd_t_reaches_random_targets_under_jit(problem):
    """apgd_t's `targets=` mode (success = the target is predicted) through targeted(), jitted."""
    f, x, y = problem
    attack = attacks.targeted(attacks.apgd_t, targets.random())
    run = jax.jit(lambda xx, yy, k: attack(f, xx, yy, key=k, eps=1.0, steps=20))
    key = jax.random.PRNGKey(5)
    x_adv = run(x, y, key)
    t = np.asarray(attack.targets(f, x, y, key))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(f(x_adv), -1)), t)


def test_targeted_mode_errors(problem):
    f, x, y = problem
    with pytest.raises(ValueError, match="has no targeted mode"):
        attacks.targeted(attacks.daa_blob, targets.random())
    attack = attacks.targeted(attacks.pgd, targets.least_likely())
    with pytest.raises(ValueError, match="targeted is set by targeted"):
        attack(f, x, y, eps=0.1, steps=1, targeted=False)
    with pytest.raises(ValueError, match="key is required"):
        attacks.targeted(attacks.pgd, targets.random())(f, x, y, eps=0.1, steps=1,
                                                        random_start=False)
