"""Attacks: the threat-model contract, closed forms on linear models, jit/vmap/key invariances,
restarts, constant program size in `steps`, targeted attacks, APGD's schedule and strength, and input
validation."""

from __future__ import annotations

import importlib
import math
from fractions import Fraction

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings

from advjax import attacks, losses
from conftest import (assert_in_threat_model, fast_jit, init_mlp, linear_logits, mlp_logits,
                      random_batch)

apgd_lib = importlib.import_module("advjax.attacks.apgd")  # the package re-exports the function `apgd`

# ------------------------------------------------------------------------------------------------
# The attack table: supported norms and a small budget for each attack
# ------------------------------------------------------------------------------------------------

ALL_NORMS = ("linf", "l2", "l1")
NORMS = {
    "fgm": ALL_NORMS, "fgsm": ("linf",), "rfgsm": ("linf",), "bim": ALL_NORMS, "pgd": ALL_NORMS,
    "mim": ALL_NORMS, "cw_pgd": ALL_NORMS, "multitargeted_pgd": ALL_NORMS,
    "apgd": ("linf", "l2"), "apgd_ce": ("linf", "l2"), "apgd_t": ("linf", "l2"),
}
TAKES_NORM = {name for name, norms in NORMS.items() if len(norms) > 1}
ITERATIVE = {"bim", "pgd", "mim", "cw_pgd", "multitargeted_pgd", "apgd", "apgd_ce", "apgd_t"}
RANDOM = {"rfgsm", "pgd", "cw_pgd", "multitargeted_pgd", "apgd", "apgd_ce", "apgd_t"}
# A typical radius per norm for 12 features in [0, 1].
RADIUS = {"linf": 0.1, "l2": 0.5, "l1": 1.0}


def test_table_covers_the_core_attacks():
    # Method modules may register more attacks (DAA, ADT, ...); the core ones must all be here.
    assert set(NORMS) <= set(attacks.ATTACKS)


def attack_kwargs(name, eps, norm, steps=5, **extra):
    """Keyword arguments for `name` with a small budget (step sizes proportional to eps)."""
    kw = dict(eps=eps)
    if name in TAKES_NORM:
        kw["norm"] = norm
    if name in ITERATIVE:
        kw["steps"] = steps
    if name in {"bim", "pgd", "mim", "cw_pgd", "multitargeted_pgd"}:
        kw["step_size"] = eps / 4
    if name == "multitargeted_pgd":
        kw["num_targets"] = 2
    if name == "apgd_t":
        kw["num_target_classes"] = 2
    kw.update(extra)
    return kw


def run_attack(name, f, x, y, key, eps, norm, **extra):
    return attacks.ATTACKS[name](f, x, y, key=key, **attack_kwargs(name, eps, norm, **extra))


TINY = mlp_logits(init_mlp(jax.random.PRNGKey(0), 12, 16, 5, scale=3.0))  # 12 -> 16 -> 5, random


# ------------------------------------------------------------------------------------------------
# Contract: inside the ball and the box, same shape and dtype (property-based)
# ------------------------------------------------------------------------------------------------

_JITTED = {}


def _jitted_attack(name, norm):
    """One jitted attack per (name, norm) with eps traced, so hypothesis examples reuse compilations."""
    if (name, norm) not in _JITTED:
        _JITTED[name, norm] = fast_jit(
            lambda x, y, key, eps: run_attack(name, TINY, x, y, key, eps, norm))
    return _JITTED[name, norm]


@pytest.mark.parametrize("name", sorted(NORMS))
@settings(max_examples=10, deadline=None, derandomize=True)
@given(data=st.data())
def test_attack_output_stays_in_ball_and_box(name, data):
    norm = data.draw(st.sampled_from(NORMS[name]), label="norm")
    shape = data.draw(st.sampled_from([(1, 12), (4, 3, 2, 2)]), label="shape")
    eps = RADIUS[norm] * data.draw(st.sampled_from([0.0, 0.1, 1.0, 3.0]), label="eps / radius")
    binary = data.draw(st.booleans(), label="inputs on the box corners")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    kx, kk = jax.random.split(jax.random.PRNGKey(seed))
    x, y = random_batch(kx, shape, 5)
    if binary:
        x = jnp.round(x)
    x_adv = _jitted_attack(name, norm)(x, y, kk, eps)
    chex.assert_equal_shape((x_adv, x))
    chex.assert_trees_all_equal_dtypes(x_adv, x)
    assert_in_threat_model(x_adv, x, eps, norm)
    if eps == 0.0:
        chex.assert_trees_all_equal(x_adv, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NORMS))
def test_attack_output_stays_in_ball_and_box_exhaustive(name):
    """The same contract on a full grid: every norm, three shapes, radii up to 10x, two input kinds."""
    for norm in NORMS[name]:
        for shape in [(1, 12), (4, 3, 2, 2), (7, 12)]:
            for factor in (0.0, 0.01, 0.1, 1.0, 3.0, 10.0):
                for binary in (False, True):
                    kx, kk = jax.random.split(jax.random.PRNGKey(int(1000 * factor) + len(shape)))
                    x, y = random_batch(kx, shape, 5)
                    x = jnp.round(x) if binary else x
                    eps = RADIUS[norm] * factor
                    x_adv = _jitted_attack(name, norm)(x, y, kk, eps)
                    chex.assert_trees_all_equal_dtypes(x_adv, x)
                    assert_in_threat_model(x_adv, x, eps, norm)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd"])
def test_low_precision_inputs_keep_their_dtype(name):
    x, y = random_batch(jax.random.PRNGKey(0), (3, 12), 5)
    x = x.astype(jnp.bfloat16)
    f = lambda z: TINY(z.astype(jnp.float32))
    x_adv = run_attack(name, f, x, y, jax.random.PRNGKey(1), jnp.float32(0.1), "linf")
    assert x_adv.dtype == jnp.bfloat16
    # x + delta is rounded to bfloat16: up to half an ulp (2^-9 on [0.5, 1)) outside the ball.
    assert_in_threat_model(x_adv, x, 0.1, "linf", atol=2.0 ** -8)


# ------------------------------------------------------------------------------------------------
# Closed forms on a binary linear model
# ------------------------------------------------------------------------------------------------

D = 20


@pytest.fixture(scope="module")
def linear_problem():
    """Logits (10, x.w): for the true class 0 the CE and margin gradients are positive multiples of w.

    The bias keeps class 0 ahead for every input in the box (|x.w| <= ||w||_1 < 10), so no attack can
    succeed and every attack maximizes the loss; x lies in [0.3, 0.7], so for the radii below the box
    is inactive and the maximizer over the ball is the closed form.
    """
    kw, kx = jax.random.split(jax.random.PRNGKey(42))
    w = jax.random.normal(kw, (D,))
    w = w / jnp.sum(jnp.abs(w)) * 5.0
    f = linear_logits(jnp.stack([jnp.zeros(D), w], axis=1), jnp.array([10.0, 0.0]))
    x = jax.random.uniform(kx, (4, D), minval=0.3, maxval=0.7)
    y = jnp.zeros(4, jnp.int32)
    return f, np.asarray(w), x, y


def _maximizer(x, w, eps, norm):
    """argmax_{||d||_p <= eps} <w, d> added to x."""
    if norm == "linf":
        d = eps * np.sign(w)
    elif norm == "l2":
        d = eps * w / np.linalg.norm(w)
    else:
        d = np.zeros_like(w)
        i = np.argmax(np.abs(w))
        d[i] = eps * np.sign(w[i])
    return np.asarray(x) + d[None]


EPS_CF = {"linf": 0.05, "l2": 0.2, "l1": 0.2}


@pytest.mark.parametrize("norm", ALL_NORMS)
def test_fast_gradient_method_is_the_analytic_maximizer(linear_problem, norm):
    f, w, x, y = linear_problem
    eps = EPS_CF[norm]
    x_adv = attacks.fgm(f, x, y, eps=eps, norm=norm)
    np.testing.assert_allclose(x_adv, _maximizer(x, w, eps, norm), atol=1e-6)
    if norm == "linf":
        chex.assert_trees_all_equal(attacks.fgsm(f, x, y, eps=eps), x_adv)
    if norm == "l1":  # exactly one coordinate changes, by eps
        changed = np.abs(np.asarray(x_adv) - np.asarray(x)) > 1e-7
        np.testing.assert_array_equal(changed.sum(axis=1), 1)


def test_fgsm_clips_to_the_box(linear_problem):
    f, w, x, y = linear_problem
    x = jnp.round(x * 0 + jnp.arange(D) % 2)  # pixels at 0 and 1
    x_adv = attacks.fgsm(f, x, y, eps=0.1)
    np.testing.assert_allclose(x_adv, np.clip(np.asarray(x) + 0.1 * np.sign(w), 0, 1), atol=1e-7)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_targeted_fgsm_towards_the_other_class_is_untargeted_fgsm(linear_problem, loss):
    f, _, x, y = linear_problem
    chex.assert_trees_all_equal(attacks.fgsm(f, x, 1 - y, eps=0.05, loss=loss, targeted=True),
                                attacks.fgsm(f, x, y, eps=0.05, loss=loss))


ITERATIVE_CF = [
    ("bim", {}), ("pgd", dict(random_start=False)), ("mim", {}), ("cw_pgd", dict(random_start=False)),
    ("multitargeted_pgd", dict(random_start=False, num_targets=1)),
]


@pytest.mark.parametrize("norm", ALL_NORMS)
@pytest.mark.parametrize("name,extra", ITERATIVE_CF, ids=[n for n, _ in ITERATIVE_CF])
def test_iterative_attacks_reach_the_analytic_maximizer(linear_problem, name, extra, norm):
    f, w, x, y = linear_problem
    eps = EPS_CF[norm]
    kw = attack_kwargs(name, eps, norm, steps=10, **extra)  # 10 steps of eps / 4
    x_adv = attacks.ATTACKS[name](f, x, y, key=jax.random.PRNGKey(0), **kw)
    np.testing.assert_allclose(x_adv, _maximizer(x, w, eps, norm), atol=1e-6)


def test_pgd_from_a_random_start_reaches_the_linf_maximizer(linear_problem):
    f, w, x, y = linear_problem
    x_adv = attacks.pgd(f, x, y, key=jax.random.PRNGKey(3), eps=0.05, step_size=0.0125, steps=10,
                        restarts=2)
    np.testing.assert_allclose(x_adv, _maximizer(x, w, 0.05, "linf"), atol=1e-6)


@pytest.mark.parametrize("name", ["apgd", "apgd_t"])
def test_apgd_reaches_the_analytic_maximizer(linear_problem, name):
    f, w, x, _ = linear_problem
    # APGD-T needs >= 4 classes: pad the binary model with two classes far below the others.
    g = lambda z: jnp.concatenate([f(z), jnp.full((z.shape[0], 2), -50.0)], axis=1)
    y = jnp.zeros(4, jnp.int32)
    kw = dict(num_target_classes=1) if name == "apgd_t" else {}
    x_adv = attacks.ATTACKS[name](g, x, y, key=jax.random.PRNGKey(0), eps=0.05, steps=20, **kw)
    np.testing.assert_allclose(x_adv, _maximizer(x, w, 0.05, "linf"), atol=1e-6)
    # l2: the best iterate attains (almost) the maximum eps ||w||_2 of the linear objective.
    x_adv = attacks.ATTACKS[name](g, x, y, key=jax.random.PRNGKey(0), eps=0.2, steps=50, norm="l2",
                                  **kw)
    gain = (np.asarray(x_adv) - np.asarray(x)) @ w
    np.testing.assert_array_less(0.99 * 0.2 * np.linalg.norm(w), gain)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.3)])
def test_apgd_step_size_schedule_converges_to_an_interior_maximum(linear_problem, norm, eps):
    """Loss -(100 (z_1 - t))^2 peaks on the hyperplane u.delta = t inside the ball. APGD's first step
    (2 eps) overshoots it; only the step-size halving at the checkpoints lets the iterates settle, so
    100 steps must land much closer than 10 (a fixed step size stalls at the 10-step error)."""
    f, w, x, y = linear_problem
    u = w / np.abs(w).sum()
    reach = eps * (1.0 if norm == "linf" else np.linalg.norm(u))  # max of u.delta over the ball
    t = np.asarray(x) @ u + 0.37 * reach
    g = lambda z: f(z) / 5.0  # logit 1 is x.u
    loss = lambda logits, yy: -(100 * (logits[:, 1] - t)) ** 2

    def error(steps):
        x_adv = attacks.apgd(g, x, y, key=jax.random.PRNGKey(0), eps=eps, steps=steps, norm=norm,
                             loss=loss)
        assert_in_threat_model(x_adv, x, eps, norm)
        return np.abs(np.asarray(x_adv) @ u - t) / reach

    err10, err100 = error(10), error(100)
    assert err100.max() < 5e-3, err100
    assert err100.mean() < err10.mean() / 5, (err10, err100)


def test_rfgsm_closed_form(linear_problem):
    """alpha = eps / 2: each coordinate ends at x (noise against w) or x + eps sign(w) (with w)."""
    f, w, x, y = linear_problem
    d = np.asarray(attacks.rfgsm(f, x, y, key=jax.random.PRNGKey(5), eps=0.05)) - np.asarray(x)
    moved = np.abs(d) > 1e-7
    np.testing.assert_allclose(np.abs(d[moved]), 0.05, atol=1e-6)
    np.testing.assert_array_equal(np.sign(d[moved]), np.broadcast_to(np.sign(w), d.shape)[moved])
    assert 0.25 < moved.mean() < 0.75  # the random step agrees with sign(w) about half the time


def test_pgd_x_init_is_the_start(linear_problem):
    f, _, x, y = linear_problem
    x_init = x + 0.3 * jax.random.normal(jax.random.PRNGKey(0), x.shape)
    out = attacks.pgd(f, x, y, eps=0.05, step_size=0.0, steps=1, random_start=False, x_init=x_init)
    np.testing.assert_allclose(out, np.clip(np.clip(x_init - x, -0.05, 0.05) + x, 0, 1), atol=1e-6)


def test_mim_momentum_matches_a_direct_implementation():
    """Two MIM steps (Dong et al. 2018, Alg. 1) written out by hand on a nonlinear model."""
    x, y = random_batch(jax.random.PRNGKey(1), (3, 12), 5)
    eps, alpha, mu = 0.2, 0.04, 0.7

    def grad(z):
        return jax.grad(lambda z: jnp.sum(losses.cross_entropy(TINY(z), y)))(z)

    g, z = jnp.zeros_like(x), x
    for _ in range(3):
        gr = grad(z)
        g = mu * g + gr / jnp.sum(jnp.abs(gr), axis=1, keepdims=True)
        z = jnp.clip(jnp.clip(z + alpha * jnp.sign(g) - x, -eps, eps) + x, 0, 1)
    out = attacks.mim(TINY, x, y, eps=eps, step_size=alpha, steps=3, decay=mu)
    np.testing.assert_allclose(out, z, atol=1e-6)


@pytest.mark.parametrize("norm", ALL_NORMS)
def test_mim_without_momentum_is_bim(norm):
    x, y = random_batch(jax.random.PRNGKey(2), (4, 12), 5)
    kw = attack_kwargs("bim", RADIUS[norm], norm, steps=4)
    chex.assert_trees_all_close(attacks.mim(TINY, x, y, decay=0.0, **kw),
                                attacks.bim(TINY, x, y, **kw), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# jit == eager; batched == vmap over single examples; determinism in the key
# ------------------------------------------------------------------------------------------------

CONFIGS = [  # one or two configurations per code path (each costs three compilations)
    ("fgsm", "fgsm", dict(eps=0.1)),
    ("fgm_l1_top2", "fgm", dict(eps=1.0, norm="l1", l1_k=2)),
    ("rfgsm", "rfgsm", dict(eps=0.1)),
    ("bim_l1", "bim", dict(eps=1.0, step_size=0.25, steps=5, norm="l1")),
    ("pgd_l2_restarts", "pgd", dict(eps=0.5, step_size=0.125, steps=5, norm="l2", restarts=2)),
    ("mim_targeted", "mim", dict(eps=0.1, step_size=0.025, steps=5, targeted=True)),
    ("multitargeted_pgd", "multitargeted_pgd", dict(eps=0.1, step_size=0.025, steps=5,
                                                     num_targets=2)),
    ("apgd_dlr_l2", "apgd", dict(eps=0.5, steps=10, norm="l2", loss="dlr")),
    ("apgd_t", "apgd_t", dict(eps=0.1, steps=10, num_target_classes=2)),
]


class JitTest(chex.TestCase):
    """The jitted attack (eps traced) and the eager attack give the same adversarial examples."""

    _eager = {}  # eager result per config, shared by the two variants (saves a compilation)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CONFIGS)
    def test_jit_matches_eager(self, name, kwargs):
        fn = attacks.ATTACKS[name]
        x, y = random_batch(jax.random.PRNGKey(7), (6, 12), 5)
        key = jax.random.PRNGKey(8)
        kw = dict(kwargs)
        eps = kw.pop("eps")
        variant = self.variant(lambda x, y, key, eps: fn(TINY, x, y, key=key, eps=eps, **kw))
        out = variant(x, y, key, eps)
        assert_in_threat_model(out, x, eps, kw.get("norm", "linf"))
        cache_key = (name, tuple(sorted(kwargs.items())))
        if cache_key not in self._eager:
            eager = self.variant.type == chex.ChexVariantType.WITHOUT_JIT
            self._eager[cache_key] = out if eager else fn(TINY, x, y, key=key, eps=eps, **kw)
        chex.assert_trees_all_close(out, self._eager[cache_key], atol=1e-5)


DETERMINISTIC = [
    ("fgsm", dict(eps=0.1)),
    ("fgm", dict(eps=0.5, norm="l2")),
    ("fgm", dict(eps=1.0, norm="l1", l1_k=3)),
    ("bim", dict(eps=0.1, step_size=0.025, steps=5)),
    ("bim", dict(eps=1.0, step_size=0.25, steps=5, norm="l1")),
    ("pgd", dict(eps=0.5, step_size=0.125, steps=5, norm="l2", random_start=False)),
    ("pgd", dict(eps=0.1, step_size=0.025, steps=5, random_start=False, loss="dlr")),
    ("mim", dict(eps=0.1, step_size=0.025, steps=5)),
    ("mim", dict(eps=0.5, step_size=0.125, steps=5, norm="l2")),
    ("cw_pgd", dict(eps=0.1, step_size=0.025, steps=5, random_start=False)),
    ("multitargeted_pgd", dict(eps=0.1, step_size=0.025, steps=5, random_start=False)),
]


@pytest.mark.parametrize("name,kwargs", DETERMINISTIC,
                         ids=[f"{n}-{k.get('norm', 'linf')}" for n, k in DETERMINISTIC])
def test_batched_equals_vmap_over_single_examples(name, kwargs):
    fn = attacks.ATTACKS[name]
    x, y = random_batch(jax.random.PRNGKey(9), (6, 3, 4), 5)
    batched = fast_jit(lambda x, y: fn(TINY, x, y, **kwargs))(x, y)
    single = fast_jit(jax.vmap(lambda xi, yi: fn(TINY, xi[None], yi[None], **kwargs)[0]))(x, y)
    chex.assert_trees_all_close(batched, single, atol=1e-5)
    assert not np.allclose(batched, x)  # the attack did something


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_deterministic_given_the_key(name):
    x, y = random_batch(jax.random.PRNGKey(10), (5, 12), 5)
    attack = fast_jit(lambda key: run_attack(name, TINY, x, y, key, 0.1, "linf"))
    a, b, c = attack(jax.random.PRNGKey(0)), attack(jax.random.PRNGKey(0)), attack(jax.random.PRNGKey(1))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a, c), "the key has no effect"


def test_key_is_required_for_random_starts():
    x, y = random_batch(jax.random.PRNGKey(0), (2, 12), 5)
    with pytest.raises(ValueError, match="key"):
        attacks.pgd(TINY, x, y, eps=0.1, step_size=0.01, steps=2)
    with pytest.raises(ValueError, match="key"):
        attacks.apgd(TINY, x, y, key=None, eps=0.1)


# ------------------------------------------------------------------------------------------------
# Restarts never weaken the attack
# ------------------------------------------------------------------------------------------------

def _success_and_ce(f, x_adv, y):
    logits = f(x_adv)
    return np.asarray(jnp.argmax(logits, -1) != y), np.asarray(losses.cross_entropy(logits, y))


def test_pgd_restarts_keep_the_best_run_per_example(digits_mlp):
    """pgd(restarts=R, key) runs R times with keys split(key, R) (restarts=1 uses key itself): its
    result must be, per example, a successful run if any run succeeded, else the run of highest loss."""
    f, x, y = digits_mlp
    x, y = x[:200], y[:200]
    key, R = jax.random.PRNGKey(11), 4
    kw = dict(eps=0.06, step_size=0.015, steps=5)
    best = attacks.pgd(f, x, y, key=key, restarts=R, **kw)
    single = fast_jit(lambda k: attacks.pgd(f, x, y, key=k, **kw))
    runs = [single(k) for k in jax.random.split(key, R)]
    succ_best, ce_best = _success_and_ce(f, best, y)
    succ, ce = zip(*[_success_and_ce(f, r, y) for r in runs])
    succ, ce = np.stack(succ), np.stack(ce)
    assert 0 < succ[0].mean() < 1, "pick eps so that a single run succeeds on some examples only"
    np.testing.assert_array_equal(succ_best, succ.any(axis=0))
    failed = ~succ_best
    np.testing.assert_allclose(ce_best[failed], ce[:, failed].max(axis=0), rtol=1e-5, atol=1e-6)
    assert succ_best.sum() >= succ[0].sum()


def test_apgd_restarts_never_weaken(digits_mlp):
    f, x, y = digits_mlp
    x, y = x[:200], y[:200]
    key, R = jax.random.PRNGKey(12), 3
    if not np.array_equal(jax.random.split(key, 1)[0], jax.random.split(key, R)[0]):
        pytest.skip("jax.random.split is not prefix-consistent here (jax_threefry_partitionable off), "
                    "so restarts=1 is not the first of the R runs")
    one = attacks.apgd(f, x, y, key=key, eps=0.05, steps=10)
    many = attacks.apgd(f, x, y, key=key, eps=0.05, steps=10, restarts=R)
    s1, ce1 = _success_and_ce(f, one, y)
    sR, ceR = _success_and_ce(f, many, y)
    assert 0 < s1.mean() < 1
    assert np.all(sR >= s1)
    both_failed = ~s1 & ~sR
    assert np.all(ceR[both_failed] >= ce1[both_failed] - 1e-5)


# ------------------------------------------------------------------------------------------------
# Program size (and memory) do not grow with the number of steps
# ------------------------------------------------------------------------------------------------

def _count_eqns(jaxpr) -> int:
    """Equations in a jaxpr, counting those of nested jaxprs (loop bodies, cond branches)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                if hasattr(sub, "eqns"):
                    n += _count_eqns(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    n += _count_eqns(sub.jaxpr)
    return n


@pytest.mark.parametrize("name,extra", [
    ("bim", {}), ("pgd", dict(restarts=3)), ("mim", {}), ("cw_pgd", {}),
    ("multitargeted_pgd", {}), ("apgd", {}), ("apgd_t", {})], ids=lambda v: str(v) if v else "")
def test_program_size_does_not_grow_with_steps(name, extra):
    x, y = random_batch(jax.random.PRNGKey(0), (4, 12), 5)
    key = jax.random.PRNGKey(1)

    def program(steps):
        fn = lambda x: run_attack(name, TINY, x, y, key, 0.1, "linf", steps=steps, **extra)
        return jax.make_jaxpr(fn)(x).jaxpr, fn

    small, fn_small = program(5)
    large, fn_large = program(500)
    assert _count_eqns(small) == _count_eqns(large) > 0
    if name in ("pgd", "apgd"):  # compiled scratch memory, where XLA reports it
        mem = [jax.jit(fn).lower(x).compile().memory_analysis() for fn in (fn_small, fn_large)]
        if all(m is not None for m in mem):
            assert mem[0].temp_size_in_bytes == mem[1].temp_size_in_bytes


# ------------------------------------------------------------------------------------------------
# Targeted attacks move towards the target
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fgsm", "pgd", "mim", "cw_pgd"])
def test_targeted_attack_hits_the_target_more_often_than_untargeted(digits_mlp, name):
    f, x, y = digits_mlp
    x, y = x[:200], y[:200]
    target = (y + 1 + jax.random.randint(jax.random.PRNGKey(0), y.shape, 0, 9)) % 10
    kw = attack_kwargs(name, 0.15, "linf", steps=20)
    key = jax.random.PRNGKey(2)
    x_t = attacks.ATTACKS[name](f, x, target, key=key, targeted=True, **kw)
    x_u = attacks.ATTACKS[name](f, x, y, key=key, **kw)
    hit_t = np.mean(np.asarray(jnp.argmax(f(x_t), -1)) == np.asarray(target))
    hit_u = np.mean(np.asarray(jnp.argmax(f(x_u), -1)) == np.asarray(target))
    assert hit_t > hit_u + 0.1, (hit_t, hit_u)
    # The targeted loss decreased: the target became more likely on average.
    assert np.mean(losses.cross_entropy(f(x_t), target)) < np.mean(losses.cross_entropy(f(x), target))


# ------------------------------------------------------------------------------------------------
# APGD: checkpoint schedule (Croce & Hein 2020, Sec. 3.2) and strength
# ------------------------------------------------------------------------------------------------

def _paper_checkpoints(n):
    """w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    in exact rational arithmetic (0.22 + 0.19 = 0.41000000000000003 in floating point)."""
    p_prev, p = Fraction(0), Fraction(22, 100)
    w = [0]
    while True:
        wj = math.ceil(p * n)
        if wj > n:
            return w
        if wj > w[-1]:
            w.append(wj)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))


def test_paper_checkpoints_for_100_steps():
    # p_j = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Sec. 3.2 of the paper).
    assert _paper_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("n", [1, 5, 10, 37, 50, 100, 150, 250, 1000])
def test_apgd_checkpoint_schedule_matches_the_paper(n):
    """After iteration i (0-based, producing x^(i+1)) a checkpoint falls iff i + 1 = w_j; its window
    is w_j - w_{j-1} iterations."""
    is_check, window = apgd_lib.checkpoint_schedule(n)
    w = _paper_checkpoints(n)
    assert len(is_check) == len(window) == n
    np.testing.assert_array_equal(np.flatnonzero(is_check) + 1, w[1:])
    np.testing.assert_array_equal(window[is_check], np.diff(w))


def test_apgd_ce_is_at_least_as_strong_as_pgd_at_equal_budget(digits_mlp):
    f, x, y = digits_mlp
    eps, steps = 0.05, 50
    acc = lambda xa: float(np.mean(np.asarray(jnp.argmax(f(xa), -1)) == np.asarray(y)))
    a_pgd = acc(attacks.pgd(f, x, y, key=jax.random.PRNGKey(0), eps=eps, step_size=eps / 4,
                            steps=steps))
    a_apgd = acc(attacks.apgd_ce(f, x, y, key=jax.random.PRNGKey(0), eps=eps, steps=steps))
    assert 0.05 < a_pgd < acc(x) - 0.1, "eps should make PGD partially successful"
    assert a_apgd <= a_pgd + 0.01, (a_apgd, a_pgd)


# ------------------------------------------------------------------------------------------------
# Input validation: every bad input fails with a ValueError naming the argument
# ------------------------------------------------------------------------------------------------

def _bad_inputs(name):
    x, y = random_batch(jax.random.PRNGKey(0), (3, 12), 5)
    norm = "linf"
    cases = {
        "x": [x.at[0, 0].set(jnp.nan), x.at[1, 2].set(jnp.inf), x.at[0, 0].set(1.5),
              x.at[0, 0].set(-0.1), x.astype(jnp.int32)],
        "y": [y.at[0].set(5), y.at[0].set(-1), y.astype(jnp.float32), y[:2], y[:, None]],
        "eps": [-0.1, float("nan"), jnp.ones(3)],
    }
    good = attack_kwargs(name, 0.1, norm)
    out = []
    for arg, values in cases.items():
        for value in values:
            xx, yy, kw = x, y, dict(good)
            if arg == "x":
                xx = value
            elif arg == "y":
                yy = value
            else:
                kw["eps"] = value
            out.append((arg, xx, yy, kw))
    if name in ITERATIVE:
        for bad in (0, -3, 2.5, True):
            out.append(("steps", x, y, dict(good, steps=bad)))
    if "step_size" in good:
        out.append(("step_size", x, y, dict(good, step_size=-0.01)))
    if name in TAKES_NORM:
        for bad in ("l3", "Linf", "inf"):
            out.append(("norm", x, y, dict(good, norm=bad)))
    if name.startswith("apgd"):
        out.append(("norm", x, y, dict(good, norm="l1")))
    if name in {"pgd", "apgd", "apgd_ce", "apgd_t"}:
        out.append(("restarts", x, y, dict(good, restarts=0)))
    return out


@pytest.mark.parametrize("name", sorted(NORMS))
def test_bad_inputs_raise_value_errors_naming_the_argument(name):
    fn = attacks.ATTACKS[name]
    for arg, x, y, kw in _bad_inputs(name):
        with pytest.raises(ValueError, match=rf"\b{arg}\b"):
            fn(TINY, x, y, key=jax.random.PRNGKey(0), **kw)


def test_batch_size_mismatch_is_caught_under_jit():
    x, y = random_batch(jax.random.PRNGKey(0), (3, 12), 5)
    with pytest.raises(ValueError, match=r"\by\b.*batch size"):
        jax.jit(lambda x, y: attacks.pgd(TINY, x, y, eps=0.1, step_size=0.01, steps=2,
                                         random_start=False))(x, y[:2])


def test_too_many_targets_are_rejected():
    x, y = random_batch(jax.random.PRNGKey(0), (3, 12), 5)
    with pytest.raises(ValueError, match="num_target_classes"):
        attacks.apgd_t(TINY, x, y, key=jax.random.PRNGKey(0), eps=0.1, num_target_classes=5)
    with pytest.raises(ValueError, match="num_targets"):
        attacks.multitargeted_pgd(TINY, x, y, eps=0.1, step_size=0.01, steps=2, num_targets=5,
                                  random_start=False)
    with pytest.raises(ValueError, match="alpha"):
        attacks.rfgsm(TINY, x, y, key=jax.random.PRNGKey(0), eps=0.1, alpha=0.2)
