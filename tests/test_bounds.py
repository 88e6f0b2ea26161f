"""`bounds=(lo, hi)` on every attack family, `normalized`, and the default step sizes.

Each family is run on inputs in a box other than [0, 1] that sit at its edges, so that a box ignored
or left at [0, 1] shows up: the result must stay in [lo, hi] and in the eps-ball, and reach the box's
faces (the clip is active). Invariant: an attack in the box [lo, hi] on f equals (up to float
rounding) the [0, 1] attack on u -> f(lo + (hi - lo) u), mapped back, with eps and step sizes scaled.
"""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from advjax import attacks, threat
from advjax.attacks import adt, gradient, tamoo

D, C = 16, 5


def linear_model(key, classes=C, dim=D, scale=1.0):
    w = scale * jax.random.normal(key, (dim, classes))
    return lambda x: x.reshape(x.shape[0], -1) @ w


def edge_batch(key, lo, hi, shape=(8, D)):
    """Inputs in [lo, hi] with a quarter of the coordinates exactly at lo or hi."""
    k1, k2 = jax.random.split(key)
    x = jax.random.uniform(k1, shape, jnp.float32, lo, hi)
    edge = jax.random.randint(k2, shape, 0, 4)
    return jnp.where(edge == 0, lo, jnp.where(edge == 1, hi, x)).astype(jnp.float32)


def assert_in_box_and_ball(x_adv, x, eps, bounds, norm="linf", must_touch=True):
    lo, hi = bounds
    xa = np.asarray(x_adv, np.float64)
    assert np.all(np.isfinite(xa))
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    assert xa.min() >= lo - tol and xa.max() <= hi + tol, (xa.min(), xa.max(), bounds)
    d = (xa - np.asarray(x, np.float64)).reshape(len(xa), -1)
    n = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
    assert np.all(n <= eps * (1 + 1e-5) + tol), (n.max(), eps)
    if must_touch:  # the box binds somewhere: a box left at [0, 1] or ignored would not give this
        assert np.mean(np.isclose(xa, lo) | np.isclose(xa, hi)) > 0.05


def test_check_bounds_errors():
    assert threat.check_bounds((0, 255)) == (0.0, 255.0)
    for bad, match in [((1.0, 1.0), "lo < hi"), ((2.0, 1.0), "lo < hi"),
                       ((0.0, float("inf")), "finite"), ((0.0, float("nan")), "finite"),
                       ((0.0,), "pair"), ("ab", "pair"), ((0.0, np.zeros(2)), "two scalars")]:
        with pytest.raises(ValueError, match=match):
            threat.check_bounds(bad)
    f = linear_model(jax.random.PRNGKey(0))
    x = edge_batch(jax.random.PRNGKey(1), 0.0, 255.0)
    y = jnp.zeros((8,), jnp.int32)
    with pytest.raises(ValueError, match=r"x must lie in the box bounds=\[0, 1\]"):
        attacks.pgd(f, x, y, key=jax.random.PRNGKey(0), eps=8.0, steps=2)
    with pytest.raises(ValueError, match=r"bounds must satisfy lo < hi"):
        attacks.fgsm(f, x, y, eps=8.0, bounds=(255.0, 0.0))
    with pytest.raises(ValueError, match=r"bounds must be concrete"):
        jax.jit(lambda lo: attacks.fgsm(f, x / 255, y, eps=0.1, bounds=(lo, 1.0)))(0.0)


@settings(max_examples=4, deadline=None, derandomize=True)
@given(lo=st.sampled_from([-3.0, -1.0, 0.0, 10.0]), width=st.sampled_from([0.5, 2.0, 255.0]),
       norm=st.sampled_from(["linf", "l2"]))
def test_pgd_respects_any_box(lo, width, norm):
    hi = lo + width
    f = linear_model(jax.random.PRNGKey(2), scale=1.0 / width)
    x = edge_batch(jax.random.PRNGKey(3), lo, hi)
    y = jnp.argmax(f(x), -1)
    eps = 0.3 * width if norm == "linf" else 1.5 * width
    x_adv = attacks.pgd(f, x, y, key=jax.random.PRNGKey(4), eps=eps, steps=5, norm=norm,
                        bounds=(lo, hi))
    assert_in_box_and_ball(x_adv, x, eps, (lo, hi), norm)


def test_pgd_in_a_box_is_the_unit_box_attack_rescaled():
    lo, hi = -1.0, 3.0
    g = linear_model(jax.random.PRNGKey(5))                   # the model on [0, 1] inputs
    f = lambda x: g((x - lo) / (hi - lo))                     # the same model on [lo, hi] inputs
    u = edge_batch(jax.random.PRNGKey(6), 0.0, 1.0)
    x = lo + (hi - lo) * u
    y = jnp.argmax(g(u), -1)
    key = jax.random.PRNGKey(7)
    u_adv = attacks.pgd(g, u, y, key=key, eps=0.1, steps=6, step_size=0.03)
    x_adv = attacks.pgd(f, x, y, key=key, eps=0.1 * (hi - lo), steps=6, step_size=0.03 * (hi - lo),
                        bounds=(lo, hi))
    np.testing.assert_allclose(x_adv, lo + (hi - lo) * u_adv, atol=1e-5)


@pytest.mark.parametrize("name", ["fgsm", "rfgsm", "bim", "mim", "cw_pgd", "multitargeted_pgd"])
def test_gradient_family_respects_box(name):
    lo, hi = -1.0, 1.0
    f = linear_model(jax.random.PRNGKey(8))
    x = edge_batch(jax.random.PRNGKey(9), lo, hi)
    y = jnp.argmax(f(x), -1)
    hp = dict(eps=0.5)
    if name in ("cw_pgd", "multitargeted_pgd"):
        hp["steps"] = 3
    x_adv = getattr(attacks, name)(f, x, y, key=jax.random.PRNGKey(10), bounds=(lo, hi), **hp)
    assert_in_box_and_ball(x_adv, x, 0.5, (lo, hi))


def test_apgd_respects_box_and_matches_unit_box():
    """APGD-T (all of APGD's machinery: random start, projection, step-size schedule) in [0, 255]
    is the [0, 1] run scaled by 255."""
    lo, hi = 0.0, 255.0
    g = linear_model(jax.random.PRNGKey(11))
    f = lambda x: g(x / hi)
    u = edge_batch(jax.random.PRNGKey(12), 0.0, 1.0)
    x = u * hi
    y = jnp.argmax(g(u), -1)
    key = jax.random.PRNGKey(13)
    x_adv = attacks.apgd_t(f, x, y, key=key, eps=8.0, steps=10, num_target_classes=1,
                           bounds=(lo, hi))
    assert_in_box_and_ball(x_adv, x, 8.0, (lo, hi))
    u_adv = attacks.apgd_t(g, u, y, key=key, eps=8.0 / 255, steps=10, num_target_classes=1)
    np.testing.assert_allclose(x_adv / hi, u_adv, atol=1e-5)


def test_daa_respects_box():
    lo, hi = -2.0, 2.0
    f = linear_model(jax.random.PRNGKey(14))
    x = edge_batch(jax.random.PRNGKey(15), lo, hi)
    y = jnp.argmax(f(x), -1)
    x_adv = attacks.daa_blob(f, x, y, key=jax.random.PRNGKey(16), eps=0.5, step_size=0.2, steps=3,
                             c=1.0, bounds=(lo, hi))
    assert_in_box_and_ball(x_adv, x, 0.5, (lo, hi))
    x_alg = attacks.daa_algorithm1(f, x, y, key=jax.random.PRNGKey(17), method="dgf", rounds=2,
                                   batch_size=4, steps=2, eps=0.5, step_size=0.2, coef=0.01,
                                   bounds=(lo, hi))
    assert_in_box_and_ball(x_alg, x, 0.5, (lo, hi))


def test_adt_exp_respects_box():
    lo, hi = -1.0, 1.0
    f = linear_model(jax.random.PRNGKey(18))
    x = edge_batch(jax.random.PRNGKey(19), lo, hi)
    y = jnp.argmax(f(x), -1)
    x_adv = attacks.adt_exp_attack(f, x, y, key=jax.random.PRNGKey(20), eps=0.5, steps=1, samples=1,
                                   bounds=(lo, hi))
    assert_in_box_and_ball(x_adv, x, 0.5, (lo, hi))
    # perturb clips to the box, not to [0, 1]
    np.testing.assert_array_equal(adt.perturb(x, jnp.full_like(x, 0.5), (lo, hi)),
                                  jnp.clip(x + 0.5, lo, hi))


def test_tamoo_respects_box_and_maps_eot_transforms():
    lo, hi = 0.0, 255.0
    k = jax.random.PRNGKey(21)
    g = linear_model(k, dim=4 * 4 * 1)
    f = lambda x: g(x / hi)
    x = edge_batch(jax.random.PRNGKey(22), lo, hi, shape=(4, 4, 4, 1))
    y = jnp.argmax(f(x), -1)
    common = dict(eps=16.0, step_size=4.0, steps=2, key=jax.random.PRNGKey(23), bounds=(lo, hi))
    x_eot = attacks.tamoo_eot(f, x, y, transforms=("identity", "brightness"), **common)
    assert_in_box_and_ball(x_eot, x, 16.0, (lo, hi))
    # The EoT transforms act on (x - lo) / (hi - lo): brightness in [0, 255] is brightness in [0, 1].
    t = tamoo._transforms(("brightness",), (lo, hi))[0]
    np.testing.assert_allclose(t(x), hi * tamoo.brightness(x / hi), rtol=1e-6)


def test_wrm_respects_box():
    lo, hi = -1.0, 1.0
    f = linear_model(jax.random.PRNGKey(24))
    x = edge_batch(jax.random.PRNGKey(25), lo, hi)
    y = jnp.argmax(f(x), -1)
    x_adv = attacks.wrm(f, x, y, gamma=0.0, step_size=0.5, steps=3, bounds=(lo, hi))
    xa = np.asarray(x_adv)
    assert xa.min() >= lo and xa.max() <= hi and np.mean(np.isclose(xa, lo) | np.isclose(xa, hi)) > 0.05


# ------------------------------------------------------------------------------------------------
# normalized and the default step sizes
# ------------------------------------------------------------------------------------------------

def test_normalized_standardizes_per_channel():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    f = lambda z: z.reshape(z.shape[0], -1)[:, :4]
    x = jax.random.uniform(jax.random.PRNGKey(26), (2, 3, 3, 3))
    g = attacks.normalized(f, mean, std)
    np.testing.assert_allclose(g(x), f((x - jnp.asarray(mean)) / jnp.asarray(std)), rtol=1e-6)
    np.testing.assert_allclose(attacks.normalized(f, 0.5, 2.0)(x), f((x - 0.5) / 2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="std must be > 0"):
        attacks.normalized(f, 0.5, [0.2, 0.0, 0.1])
    with pytest.raises(ValueError, match="3 channels but x has 2"):
        attacks.normalized(f, mean, std)(jnp.zeros((1, 2, 2, 2)))


def test_default_step_sizes():
    f = linear_model(jax.random.PRNGKey(27))
    x = edge_batch(jax.random.PRNGKey(28), 0.0, 1.0)
    y = jnp.argmax(f(x), -1)
    key = jax.random.PRNGKey(29)
    # PGD: 2.5 eps / steps (Madry et al.)
    np.testing.assert_array_equal(attacks.pgd(f, x, y, key=key, eps=0.1, steps=4),
                                  attacks.pgd(f, x, y, key=key, eps=0.1, steps=4, step_size=0.0625))
    # MIM: 10 steps of eps / 10 (Dong et al.)
    np.testing.assert_array_equal(attacks.mim(f, x, y, eps=0.1),
                                  attacks.mim(f, x, y, eps=0.1, steps=10, step_size=0.01))
    # BIM: min(eps + 4, 1.25 eps) steps of one intensity level (Kurakin et al.)
    assert gradient.kurakin_steps(8 / 255) == 10 and gradient.kurakin_steps(0.3) == 80
    assert gradient.kurakin_steps(8.0, (0.0, 255.0)) == 10
    np.testing.assert_array_equal(attacks.bim(f, x, y, eps=8 / 255),
                                  attacks.bim(f, x, y, eps=8 / 255, steps=10, step_size=1 / 255))
    with pytest.raises(ValueError, match="steps is required when eps is traced"):
        jax.jit(lambda e: attacks.bim(f, x, y, eps=e))(0.1)
    # eps stays traceable with the default step size: one trace serves two radii.
    traces = []

    def attack(e):
        traces.append(e)
        return attacks.pgd(f, x, y, key=key, eps=e, steps=4)

    run = jax.jit(attack)
    np.testing.assert_allclose(run(0.1), attacks.pgd(f, x, y, key=key, eps=0.1, steps=4), atol=1e-6)
    run(0.2)
    assert len(traces) == 1


@pytest.mark.parametrize("name,norm", [("square", "linf"), ("square", "l2"), ("fab", "linf"),
                                       ("fab_t", "l2")])
def test_square_and_fab_in_a_box_are_the_unit_box_attack_rescaled(name, norm):
    """Square's windows and FAB's box-constrained projection in [lo, hi] = the [0, 1] run scaled."""
    lo, hi = -1.0, 3.0
    g = linear_model(jax.random.PRNGKey(15), dim=36, scale=4.0)
    f = lambda x: g((x - lo) / (hi - lo))
    u = edge_batch(jax.random.PRNGKey(16), 0.0, 1.0, shape=(8, 6, 6, 1))
    x = lo + (hi - lo) * u
    y = jnp.argmax(g(u), -1)
    eps = 0.1 if norm == "linf" else 0.5
    hp = dict(n_queries=30) if name == "square" else dict(steps=10)
    if name == "fab_t":
        hp["num_target_classes"] = 2
    attack = getattr(attacks, name)
    key = jax.random.PRNGKey(17)
    x_adv = attack(f, x, y, key=key, eps=eps * (hi - lo), norm=norm, bounds=(lo, hi), **hp)
    u_adv = attack(g, u, y, key=key, eps=eps, norm=norm, **hp)
    assert_in_box_and_ball(x_adv, x, eps * (hi - lo), (lo, hi), norm)
    assert not np.allclose(u_adv, u)  # it moved something
    np.testing.assert_allclose((x_adv - lo) / (hi - lo), u_adv, atol=1e-4)
