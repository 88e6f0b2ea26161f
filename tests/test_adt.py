"""ADT (Dong et al., NeurIPS 2020): the tanh-Gaussian density of Eq. (11), the reparameterized
gradients of Eq. (10), the EXP inner problem's deterministic limit, the threat model of every sample,
and the four objectives (one step each, and a short training run with a checkpointed generator).

Independent references: the density by the inverse map and its Jacobian (NumPy, float64), the entropy
and expected loss by Gauss-Hermite quadrature, gradients by central finite differences in float64.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, objectives
from advjax.attacks import adt
from advjax.models.generator import ResidualGenerator

FAST = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **kw):
    return jax.jit(fn, compiler_options=FAST, **kw)


def assert_in_ball_and_box(x_adv, x, eps):
    x_adv, x = np.asarray(x_adv, np.float64), np.asarray(x, np.float64)
    assert np.all(np.isfinite(x_adv))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, (x_adv.min(), x_adv.max())
    assert np.max(np.abs(x_adv - x)) <= eps * (1 + 1e-6) + 1e-7, np.max(np.abs(x_adv - x))


def np_neg_log_density(delta, mu, sigma, eps):
    """-log p(delta) from the inverse map u = artanh(delta / eps) and |d delta / du| (float64)."""
    delta, mu, sigma = (np.asarray(a, np.float64) for a in (delta, mu, sigma))
    u = np.arctanh(delta / eps)
    log_normal = -0.5 * ((u - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    log_jac = np.log(eps) + np.log1p(-(delta / eps) ** 2)
    return -np.sum(log_normal - log_jac, axis=-1)


def gauss_hermite(n=80):
    """Nodes and weights for E_{r ~ N(0, 1)}[g(r)] = sum_i w_i g(t_i)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)
    return t, w / np.sqrt(2 * np.pi)


# ------------------------------------------------------------------------------------------------
# Eq. (11): density and entropy
# ------------------------------------------------------------------------------------------------

def test_eq11_matches_change_of_variables_density():
    rng = np.random.default_rng(0)
    eps = 0.3
    mu = rng.normal(0, 1, (50, 2))
    sigma = rng.uniform(0.1, 1.5, (50, 2))
    r = rng.normal(0, 1, (50, 2))
    delta = np.asarray(adt.tanh_gaussian_delta(mu, sigma, r, eps), np.float64)
    assert np.all(np.abs(delta) < eps)
    ours = np.asarray(adt.neg_log_density(jnp.asarray(r, jnp.float32), jnp.asarray(mu, jnp.float32),
                                          jnp.asarray(sigma, jnp.float32), eps))
    ref = np_neg_log_density(delta, mu, sigma, eps)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-4)
    # Stable for saturated tanh (|u| ~ 20), where log(1 - tanh(u)^2) computed naively is -inf.
    big = adt.tanh_gaussian_nll_terms(jnp.zeros(3), jnp.array([-20.0, 0.0, 20.0]), jnp.ones(3), eps)
    assert np.all(np.isfinite(np.asarray(big)))
    np.testing.assert_allclose(np.asarray(adt.log1m_tanh_sq(jnp.array([20.0, -20.0]))),
                               2 * (np.log(2) - 20), rtol=1e-6)


def test_histogram_of_samples_matches_the_density():
    eps, mu, sigma = 0.5, 0.4, 0.6
    r = jax.random.normal(jax.random.PRNGKey(0), (400_000,))
    delta = np.asarray(adt.tanh_gaussian_delta(mu, sigma, r, eps), np.float64)
    edges = np.linspace(-0.95 * eps, 0.95 * eps, 31)
    counts, _ = np.histogram(delta, edges)
    # Expected bin probabilities by integrating exp(-Eq. 11) over each bin (midpoint rule, 50 points).
    fine = np.linspace(0, 1, 51)[:-1] + 0.01
    probs = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        d = lo + (hi - lo) * fine
        u = np.arctanh(d / eps)
        rr = (u - mu) / sigma
        nll = np.asarray(adt.neg_log_density(jnp.asarray(rr[:, None]), jnp.full((50, 1), mu),
                                             jnp.full((50, 1), sigma), eps), np.float64)
        probs.append(np.mean(np.exp(-nll)) * (hi - lo))
    expected = len(delta) * np.array(probs)
    z = (counts - expected) / np.sqrt(expected + 1.0)
    assert np.max(np.abs(z)) < 5.0, z


@pytest.mark.parametrize("mu,sigma", [((0.0, 1.2), (0.7, 0.3)), ((-2.0, 0.5), (1.5, 0.05))])
def test_monte_carlo_entropy_matches_quadrature(mu, sigma):
    """H(delta) = H(u) + E[log |d delta / du|] = sum_j 1/2 log(2 pi e sigma_j^2) + E[log eps (1 - tanh^2 u_j)]."""
    eps = 0.2
    mu, sigma = np.array(mu), np.array(sigma)
    t, w = gauss_hermite()
    exact = 0.0
    for m, s in zip(mu, sigma):
        u = m + s * t
        exact += 0.5 * np.log(2 * np.pi * np.e * s * s) + np.sum(
            w * (np.log(eps) + np.log(4.0) - 2 * np.logaddexp(u, -u)))
    n = 200_000
    r = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
    m32, s32 = jnp.asarray(mu, jnp.float32), jnp.asarray(sigma, jnp.float32)
    samples = np.asarray(adt.neg_log_density(r, jnp.broadcast_to(m32, (n, 2)),
                                             jnp.broadcast_to(s32, (n, 2)), eps), np.float64)
    se = samples.std() / np.sqrt(n)
    assert abs(samples.mean() - exact) < 4 * se + 1e-3, (samples.mean(), exact, se)
    per_dim = np.asarray(adt.entropy_per_dim(r, jnp.broadcast_to(m32, (n, 2)),
                                             jnp.broadcast_to(s32, (n, 2)), eps))
    np.testing.assert_allclose(per_dim, samples / 2, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Eq. (10): reparameterized gradients
# ------------------------------------------------------------------------------------------------

def _small_model(key, d, classes=3):
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (d, 5), jnp.float64)
    w2 = jax.random.normal(k2, (5, classes), jnp.float64)
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def test_reparameterized_gradient_matches_finite_differences():
    """With r fixed, grad of the MC objective of Eq. (10) (loss + lam * Eq. 11) = central differences."""
    with jax.enable_x64(True):
        d, b, k, eps, lam = 4, 3, 5, 0.1, 0.3
        f = _small_model(jax.random.PRNGKey(0), d)
        kx, kr, km = jax.random.split(jax.random.PRNGKey(1), 3)
        x = jax.random.uniform(kx, (b, d), jnp.float64, 0.3, 0.7)  # the box never clips
        y = jnp.array([0, 1, 2])
        r = jax.random.normal(kr, (k, b, d), jnp.float64)
        mu = 0.5 * jax.random.normal(km, (b, d), jnp.float64)
        rho = jnp.full((b, d), 0.2, jnp.float64)
        from advjax.losses import cross_entropy

        def total(mu, rho):
            j, _ = adt.exp_mc_objective(f, cross_entropy, x, y, mu, rho, r, eps=eps, lam=lam)
            return jnp.sum(j)

        g_mu, g_rho = fast_jit(jax.grad(total, argnums=(0, 1)))(mu, rho)
        total = fast_jit(total)
        h = 1e-6
        for (i, j) in [(0, 0), (1, 2), (2, 3)]:
            e = jnp.zeros_like(mu).at[i, j].set(h)
            fd_mu = (total(mu + e, rho) - total(mu - e, rho)) / (2 * h)
            fd_rho = (total(mu, rho + e) - total(mu, rho - e)) / (2 * h)
            np.testing.assert_allclose(float(g_mu[i, j]), float(fd_mu), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(float(g_rho[i, j]), float(fd_rho), rtol=1e-6, atol=1e-9)


def test_reparameterized_gradient_is_unbiased_for_the_exact_objective():
    """d = 1, L = softplus(a delta + c) (a two-class CE): the MC pathwise gradient of E[L] + lam H
    over many fixed draws matches the derivative of the exact objective computed by quadrature."""
    a, c, eps, lam = 8.0, -0.5, 0.4, 0.5
    t, w = gauss_hermite()

    def exact(mu, rho):
        s = np.log1p(np.exp(rho))
        u = mu + s * t
        loss = np.sum(w * np.logaddexp(0.0, a * eps * np.tanh(u) + c))
        ent = 0.5 * np.log(2 * np.pi * np.e * s * s) + np.sum(
            w * (np.log(eps) + np.log(4.0) - 2 * np.logaddexp(u, -u)))
        return loss + lam * ent

    mu0, rho0 = 0.3, -0.4
    h = 1e-5
    fd = ((exact(mu0 + h, rho0) - exact(mu0 - h, rho0)) / (2 * h),
          (exact(mu0, rho0 + h) - exact(mu0, rho0 - h)) / (2 * h))
    with jax.enable_x64(True):
        n = 400_000
        r = jax.random.normal(jax.random.PRNGKey(3), (n, 1, 1), jnp.float64)
        x = jnp.full((1, 1), 0.5, jnp.float64)
        y = jnp.zeros((1,), jnp.int32)
        f = lambda xa: jnp.concatenate([jnp.zeros_like(xa), a * (xa - 0.5) + c], axis=-1)
        from advjax.losses import cross_entropy

        def one_draw(mu, rho, r1):
            j, _ = adt.exp_mc_objective(f, cross_entropy, x, y, mu, rho, r1[None], eps=eps,
                                        lam=lam)
            return j[0]

        grads = fast_jit(jax.vmap(jax.grad(one_draw, argnums=(0, 1)), in_axes=(None, None, 0)))(
            jnp.full((1, 1), mu0), jnp.full((1, 1), rho0), r)
        g = np.stack([np.asarray(grads[0]).ravel(), np.asarray(grads[1]).ravel()])
    mean, se = g.mean(axis=1), g.std(axis=1) / np.sqrt(n)
    assert np.all(np.abs(mean - np.array(fd)) < 4 * se + 1e-4), (mean, fd, se)


# ------------------------------------------------------------------------------------------------
# The inner problem and the EXP attack
# ------------------------------------------------------------------------------------------------

def _linear_two_class(d, key=0):
    w = jax.random.normal(jax.random.PRNGKey(key), (d, 2))
    return w, lambda x: x.reshape(x.shape[0], -1) @ w


def test_lam_zero_small_sigma_reaches_the_fgsm_vertex():
    """lam = 0, sigma -> 0 on a linear model: delta concentrates on eps * sign(grad), FGSM's vertex
    (the exact maximizer over the ball), and samples barely vary."""
    d, eps = 6, 0.1
    w, f = _linear_two_class(d)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, d), minval=0.2, maxval=0.8)
    y = jnp.array([0, 1, 0, 1])
    run = fast_jit(lambda x, y, k: adt.adt_exp_attack(f, x, y, key=k, eps=eps, steps=25, samples=2,
                                                      lam=0.0, init_sigma=1e-3))
    x_fgsm = fast_jit(lambda x, y: attacks.fgsm(f, x, y, eps=eps))(x, y)
    a1 = run(x, y, jax.random.PRNGKey(2))
    a2 = run(x, y, jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(a1), np.asarray(x_fgsm), atol=1e-3 * eps)
    assert float(jnp.max(jnp.abs(a1 - a2))) < 1e-3 * eps
    # Not a vacuous check: a distribution of the default width is far from the vertex.
    wide = fast_jit(lambda x, y, k: adt.adt_exp_attack(f, x, y, key=k, eps=eps, steps=1,
                                                       samples=1, lam=0.0))(
        x, y, jax.random.PRNGKey(2))
    assert float(jnp.max(jnp.abs(wide - x_fgsm))) > 0.1 * eps


def test_entropy_term_widens_the_distribution():
    d, eps = 6, 0.1
    _, f = _linear_two_class(d)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, d), minval=0.2, maxval=0.8)
    y = jnp.array([0, 1, 0, 1])
    inner = fast_jit(lambda lam: adt.adt_exp_inner(f, x, y, key=jax.random.PRNGKey(0), eps=eps,
                                                   steps=10, samples=4, lam=lam))
    narrow, wide = inner(0.0), inner(10.0)
    assert float(jnp.mean(wide.sigma)) > float(jnp.mean(narrow.sigma))
    assert float(jnp.mean(jnp.abs(jnp.tanh(wide.mu)))) < float(jnp.mean(jnp.abs(jnp.tanh(narrow.mu))))


def test_exp_inner_is_per_example():
    """Each example's distribution depends only on that example (one program for the batch)."""
    d, eps = 5, 0.1
    _, f = _linear_two_class(d)
    x = jax.random.uniform(jax.random.PRNGKey(4), (3, d))
    y = jnp.array([0, 1, 1])
    inner = fast_jit(lambda x, y: adt.adt_exp_inner(f, x, y, key=jax.random.PRNGKey(0), eps=eps,
                                                    steps=3, samples=2))
    full = inner(x, y)
    changed = inner(x.at[1:].set(0.5), y.at[1:].set(0))
    # Same noise for example 0 (the noise tensor has the batch's shape), so its result is identical.
    np.testing.assert_allclose(np.asarray(full.mu[0]), np.asarray(changed.mu[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(full.sigma[0]), np.asarray(changed.sigma[0]), rtol=1e-6)


def test_samples_and_generator_outputs_stay_in_ball_and_box():
    eps = 0.3
    # Images with many pixels on the faces of the box.
    x = jnp.round(jax.random.uniform(jax.random.PRNGKey(0), (6, 4, 4, 1)))
    x = x.at[:, 0].set(0.5)
    y = jnp.arange(6) % 3
    w = 5.0 * jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    f = lambda xa: xa.reshape(xa.shape[0], -1) @ w
    for select in ("sample", "best"):
        x_adv = fast_jit(lambda x, y, k: adt.adt_exp_attack(
            f, x, y, key=k, eps=eps, steps=3, samples=2, lr=5.0, select=select,
            final_samples=3))(x, y, jax.random.PRNGKey(2))
        assert_in_ball_and_box(x_adv, x, eps)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    # Generators with huge outputs saturate tanh: still inside the ball and the box.
    from advjax.losses import cross_entropy
    gen = ResidualGenerator(out_channels=2, width=4, num_blocks=1, zero_head=False)
    igen = ResidualGenerator(out_channels=1, width=4, num_blocks=1, zero_head=False)
    enc = ResidualGenerator(out_channels=2, width=4, num_blocks=1)

    def saturated(x, y, key):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        gp, gr = adt.split_variables(gen.init(k1, x, train=False))
        big = jax.tree_util.tree_map(lambda p: 100.0 * p, gp)
        _, exp_aux = adt.exp_am_objective(big, gr, generator=gen, logits_fn=f,
                                          loss_fn=cross_entropy, x=x, y=y, features=x, key=k2,
                                          eps=eps, lam=0.01)
        xz = jnp.concatenate([x, x], -1)
        ip, ir = adt.split_variables(igen.init(k3, xz, train=False))
        ep, er = adt.split_variables(enc.init(k4, xz, train=False))
        big = jax.tree_util.tree_map(lambda p: 100.0 * p, ip)
        _, imp_aux = adt.imp_am_objectives(big, ep, ir, er, generator=igen, encoder=enc,
                                           logits_fn=f, loss_fn=cross_entropy, x=x, y=y,
                                           features=x, key=k5, eps=eps, lam=0.01, z_channels=1)
        return exp_aux["x_adv"], imp_aux["x_adv"], jnp.mean(imp_aux["entropy"])

    exp_adv, imp_adv, bound = fast_jit(saturated)(x, y, jax.random.PRNGKey(3))
    for x_adv in (exp_adv, imp_adv):
        assert_in_ball_and_box(x_adv, x, eps)
        assert float(jnp.max(jnp.abs(x_adv - x))) > 0.9 * eps  # saturated: not a vacuous check
    assert np.isfinite(float(bound))
    # The registered amortized attacks (a freshly trained generator per batch).
    import advjax.objectives  # noqa: F401  (registers "adt_exp_am" / "adt_imp_am")
    for name in ("adt_exp_am", "adt_imp_am"):
        attack = attacks.get_attack(name)
        x_adv = fast_jit(lambda x, y, k: attack(f, x, y, key=k, eps=eps, train_steps=2, lr=0.1,
                                                generator_width=4, generator_blocks=1))(
            x, y, jax.random.PRNGKey(8))
        assert_in_ball_and_box(x_adv, x, eps)


# ------------------------------------------------------------------------------------------------
# Objectives
# ------------------------------------------------------------------------------------------------

class TinyBNNet(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dense (batch-norm state exercises the model-state contract)."""
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        h = nn.Dense(8)(x.reshape(x.shape[0], -1))
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        logits = nn.Dense(self.num_classes)(h)
        return (logits, h) if return_features else logits


# The AM objectives in their default variant "code" (the released scripts: raw gradient inputs;
# IMP-AM's 64-d noise vector, hinged entropy and delta-only conv encoder), with a one-block uniform
# generator to keep compilation short: the released generator's blocks are checked in
# test_released_generator_architecture_and_variant_defaults. The "paper" variant's parts: per-pixel
# noise and the [delta, x] encoder in test_samples_and_generator_outputs_stay_in_ball_and_box, the
# x-only input in test_train_and_evaluate_adt_exp_am_checkpoints_the_generator.
SMALL_GEN = dict(generator_width=4, generator_blocks=1, generator_arch="uniform")
OBJECTIVE_CASES = {
    "adt_exp": dict(eps=0.1, steps=2, samples=2),
    "adt_exp_trades": dict(eps=0.1, steps=2, samples=2, beta=1.0),
    "adt_exp_am": dict(eps=0.1, input_shape=(4, 4, 1), **SMALL_GEN),
    "adt_imp_am": dict(eps=0.1, input_shape=(4, 4, 1), z_dim=4, encoder_width=2, **SMALL_GEN),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVE_CASES))
def test_objective_step_contract(name):
    model = TinyBNNet()
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 1))
    y = jnp.arange(8) % 3
    variables = fast_jit(model.init)(jax.random.PRNGKey(1), x)
    obj = objectives.make_objective(name, model.apply, OBJECTIVE_CASES[name])
    state = {"model": {"batch_stats": variables["batch_stats"]},
             "method": obj.init_method_state(jax.random.PRNGKey(2))}
    batch = {"image": x, "label": y}
    step = fast_jit(jax.value_and_grad(obj, has_aux=True))
    (loss, aux), grads = step(variables["params"], state, batch, jax.random.PRNGKey(3))
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(grads))
    metrics = aux["metrics"]
    assert {"loss", "adv_acc", "entropy"} <= set(metrics)
    assert all(np.ndim(m) == 0 and np.isfinite(float(m)) for m in metrics.values())
    if name != "adt_imp_am":
        assert "sigma" in metrics and float(metrics["sigma"]) > 0
    # The new state has the old one's structure; batch norm statistics moved.
    assert (jax.tree_util.tree_structure(aux["state"]) == jax.tree_util.tree_structure(state))
    old_bn = jax.tree_util.tree_leaves(state["model"])
    new_bn = jax.tree_util.tree_leaves(aux["state"]["model"])
    assert any(not np.allclose(a, b) for a, b in zip(old_bn, new_bn))
    method_old = jax.tree_util.tree_leaves(state["method"])
    method_new = jax.tree_util.tree_leaves(aux["state"]["method"])
    if name.endswith("_am"):
        # The generator (and its Adam state) took a step.
        changed = [not np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(method_old, method_new)]
        assert any(changed)
        gen_old = state["method"]["generator"]["params"]
        gen_new = aux["state"]["method"]["generator"]["params"]
        assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                   zip(jax.tree_util.tree_leaves(gen_old), jax.tree_util.tree_leaves(gen_new)))
    else:
        assert method_new == [] and method_old == []


def test_adt_exp_trains_on_a_sample_of_the_learned_distribution():
    """The ADT_EXP loss is CE at clip(x + delta) with delta from adt_exp_inner under the same keys."""
    model = TinyBNNet()
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 1))
    y = jnp.arange(8) % 3
    variables = fast_jit(model.init)(jax.random.PRNGKey(1), x)
    params, ms = variables["params"], {"batch_stats": variables["batch_stats"]}
    hp = dict(eps=0.1, steps=2, samples=2)
    obj = objectives.make_objective("adt_exp", model.apply, hp)
    from advjax.losses import cross_entropy

    def both(params, ms, x, y, key):
        loss, _ = obj(params, {"model": ms, "method": {}}, {"image": x, "label": y}, key)
        k_inner, k_draw, _, _, k_adv = jax.random.split(key, 5)
        f = lambda xa: model.apply({"params": params, **ms}, xa, train=False)
        dist = adt.adt_exp_inner(f, x, y, key=k_inner, **hp)
        delta, _ = adt.sample_tanh_gaussian(k_draw, dist, 0.1)
        logits, _ = model.apply({"params": params, **ms}, adt.perturb(x, delta), train=True,
                                mutable=["batch_stats"])
        return loss, jnp.mean(cross_entropy(logits, y))

    loss, direct = fast_jit(both)(params, ms, x, y, jax.random.PRNGKey(5))
    np.testing.assert_allclose(float(loss), float(direct), rtol=1e-5)


def test_am_objectives_require_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        objectives.make_objective("adt_exp_am", TinyBNNet().apply, {"eps": 0.1})
    with pytest.raises(ValueError, match="generator_input"):
        objectives.make_objective("adt_exp_am", TinyBNNet().apply,
                                  {"eps": 0.1, "input_shape": (4, 4, 1), "generator_input": "x"})


# Slow (16 s): a full train/evaluate run; the method-state checkpoint path is covered by default in
# tests/test_multi_seed.py and tests/test_dro.py.
@pytest.mark.slow
def test_train_and_evaluate_adt_exp_am_checkpoints_the_generator(tmp_path):
    from advjax import train
    from advjax.config import default_config
    c = default_config()
    c.data.name = "digits"
    c.data.train_limit = 128
    c.model.name = "mlp"
    c.model.hidden = (32,)
    c.objective.name = "adt_exp_am"
    c.objective.eps = 0.1
    c.objective.input_shape = (8, 8, 1)
    c.objective.generator_width = 8
    c.objective.generator_blocks = 1
    c.objective.generator_arch = "uniform"
    c.objective.generator_input = "image"  # a smaller program to compile
    c.optim.lr = 0.05
    c.train.epochs = 1
    c.train.batch_size = 64
    c.train.num_devices = 1
    c.train.log_every = 1
    c.train.progress = False
    c.train.checkpoint_every_steps = 0
    c.eval.limit = 32
    c.eval.batch_size = 32
    c.eval.attacks = [dict(name="adt_exp", eps=0.1, steps=2, samples=2)]
    workdir = str(tmp_path / "run")
    out = train.train_and_evaluate(c, workdir)
    assert 0.0 <= out["attack/adt_exp"] <= 1.0 and "a_rob" in out
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        logged = fh.read()
    assert '"entropy"' in logged and '"sigma"' in logged and '"adv_acc"' in logged
    state, _ = train.restore_state(c, workdir)
    assert int(state.step) == 2
    obj = objectives.make_objective("adt_exp_am", TinyBNNet().apply,
                                    {k: val for k, val in c.objective.items() if k != "name"})
    init = jax.eval_shape(obj.init_method_state, jax.random.PRNGKey(0))
    restored = state.method_state
    assert set(restored) == {"generator", "generator_opt"}
    assert (jax.tree_util.tree_structure(restored["generator"])
            == jax.tree_util.tree_structure(init["generator"]))
    # The generator's Adam count is the number of steps taken.
    counts = [int(l) for l in jax.tree_util.tree_leaves(restored["generator_opt"])
              if np.ndim(l) == 0]
    assert counts == [2]


# ------------------------------------------------------------------------------------------------
# Table 5's TRADES loss, and the released code's variants of the amortized methods
# ------------------------------------------------------------------------------------------------

def test_adt_trades_inner_problem_is_beta_kl_plus_entropy():
    """Eq. (5) with the TRADES loss: the inner problem is max_p beta E[KL] + lam H
    (`trades_inner_loss`). (a) The objective's loss is rebuilt from adt_exp_inner with that loss
    under the objective's keys (the former defect, loss="kl", i.e. E[KL] + lam H, fails this at
    beta = 4). (b) With the released Adam (b1 = b2 = 0, a per-coordinate sign step) beta E[KL] +
    lam H has the maximizer of E[KL] + (lam / beta) H, and beta = 1 is ADT_EXP's problem with KL;
    the entropy weight matters (lam vs lam / beta give other distributions)."""
    from advjax.objectives.adt import trades_inner_loss
    from advjax.objectives.trades import trades_loss
    model = TinyBNNet()
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 1))
    y = jnp.arange(8) % 3
    variables = fast_jit(model.init)(jax.random.PRNGKey(1), x)
    params, ms = variables["params"], {"batch_stats": variables["batch_stats"]}
    hp = dict(eps=0.3, steps=3, samples=2)
    beta, lam = 4.0, 1.0
    obj = objectives.make_objective("adt_exp_trades", model.apply, dict(hp, beta=beta, lam=lam))

    def run(params, ms, key):
        loss, _ = obj(params, {"model": ms, "method": {}}, {"image": x, "label": y}, key)
        k_inner, k_draw, _, _, _ = jax.random.split(key, 5)
        f = lambda xa: model.apply({"params": params, **ms}, xa, train=False)
        inner = lambda l, **kw: adt.adt_exp_inner(f, x, y, key=k_inner, loss=l, **kw, **hp)
        dist = inner(trades_inner_loss(f(x), beta), lam=lam)
        delta, _ = adt.sample_tanh_gaussian(k_draw, dist, 0.3)
        ln, s = model.apply({"params": params, **ms}, x, train=True, mutable=["batch_stats"])
        la, _ = model.apply({"params": params, **s}, adt.perturb(x, delta), train=True,
                            mutable=["batch_stats"])
        scaled = inner("kl", lam=lam / beta)
        beta_one = inner(trades_inner_loss(f(x), 1.0), lam=lam)
        return (loss, trades_loss(ln, la, y, beta)[0], dist, scaled, inner("kl", lam=lam),
                beta_one)

    loss, rebuilt, dist, scaled, unscaled, beta_one = fast_jit(run)(params, ms,
                                                                   jax.random.PRNGKey(5))
    np.testing.assert_allclose(float(loss), float(rebuilt), rtol=1e-5)
    # Equal up to Adam's epsilon (1e-8 next to |gradients| that are tiny on a few coordinates).
    np.testing.assert_allclose(dist.mu, scaled.mu, atol=1e-3)
    np.testing.assert_allclose(dist.sigma, scaled.sigma, atol=1e-3)
    np.testing.assert_allclose(beta_one.sigma, unscaled.sigma, atol=1e-6)
    np.testing.assert_allclose(beta_one.mu, unscaled.mu, atol=1e-6)
    assert float(jnp.mean(jnp.abs(unscaled.mu - dist.mu))) > 0.01


def test_generator_inputs_raw_gradients_are_the_released_batch_mean():
    """"image_and_raw_gradients": the gradient of the batch-mean CE (the released adt_expam.py's
    F.cross_entropy default), i.e. per-example gradient / batch size, at x and at the FGSM point;
    "image_and_gradients" rescales the same gradients to unit linf per example."""
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    f = lambda xa: xa.reshape(xa.shape[0], -1) @ w
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 4, 4, 1))
    y = jnp.arange(6) % 3
    from advjax.losses import cross_entropy
    per_example = jax.grad(lambda z: jnp.sum(cross_entropy(f(z), y)))
    g0 = per_example(x)
    g1 = per_example(jnp.clip(x + 0.1 * jnp.sign(g0), 0, 1))
    raw = adt.generator_inputs(f, x, y, eps=0.1, mode="image_and_raw_gradients")
    np.testing.assert_allclose(raw, jnp.concatenate([x, g0 / 6, g1 / 6], -1), rtol=1e-5,
                               atol=1e-8)
    # The global batch: features do not depend on how the batch is split over devices.
    raw_global = adt.generator_inputs(f, x, y, eps=0.1, mode="image_and_raw_gradients",
                                      batch_size=24)
    np.testing.assert_allclose(raw_global[..., 1:], raw[..., 1:] / 4, rtol=1e-5, atol=1e-9)
    unit = adt.generator_inputs(f, x, y, eps=0.1, mode="image_and_gradients")
    m = np.abs(np.asarray(g0).reshape(6, -1)).max(1).reshape(6, 1, 1)
    np.testing.assert_allclose(unit[..., 1], np.asarray(g0)[..., 0] / m, rtol=1e-5, atol=1e-7)
    assert adt.generator_input_channels(1, "image_and_raw_gradients") == 3


def test_released_generator_architecture_and_variant_defaults():
    """generator_arch="released": stem w, blocks 2w, 2w, w with 1x1 shortcuts where the width
    changes, bias-free random head (the released ResnetGenerator); "uniform": zero head, so the
    paper variant's EXP-AM starts at ADT_EXP's mu = 0, sigma = log 2. The variants set the inputs."""
    apply = TinyBNNet().apply
    shapes = lambda obj: jax.tree_util.tree_map(
        lambda a: a.shape, jax.eval_shape(obj.init_method_state, jax.random.PRNGKey(0)))
    code = shapes(objectives.make_objective(
        "adt_exp_am", apply, dict(eps=0.1, input_shape=(4, 4, 1), generator_width=3)))
    p = code["generator"]["params"]
    assert p["stem"]["kernel"] == (3, 3, 3, 3)          # [x, g0, g1] -> w
    assert p["block1"]["conv1"]["kernel"] == (3, 3, 3, 6) and "shortcut" in p["block1"]
    assert p["block2"]["conv2"]["kernel"] == (3, 3, 6, 6) and "shortcut" not in p["block2"]
    assert p["block3"]["shortcut"]["kernel"] == (1, 1, 6, 3)
    assert p["head"] == {"kernel": (3, 3, 3, 2)}       # no bias
    paper = objectives.make_objective("adt_exp_am", apply, dict(
        eps=0.1, input_shape=(4, 4, 1), variant="paper", generator_width=3, generator_blocks=1))
    state = paper.init_method_state(jax.random.PRNGKey(0))
    assert state["generator"]["params"]["stem"]["kernel"].shape == (3, 3, 1, 3)   # x only
    assert float(jnp.abs(state["generator"]["params"]["head"]["kernel"]).max()) == 0.0
    imp = shapes(objectives.make_objective(
        "adt_imp_am", apply, dict(eps=0.1, input_shape=(4, 4, 1), generator_width=2, z_dim=5)))
    assert imp["generator"]["params"]["z_fc1"]["kernel"] == (5, 256)   # the 64-d z's MLP
    assert imp["encoder"]["params"]["conv1"]["kernel"] == (5, 5, 1, 32)  # sees delta only
    assert imp["encoder"]["params"]["fc"]["kernel"] == (256, 10)
    with pytest.raises(ValueError, match="variant"):
        objectives.make_objective("adt_exp_am", apply, dict(eps=0.1, input_shape=(4, 4, 1),
                                                            variant="other"))
    with pytest.raises(ValueError, match="3 blocks"):
        objectives.make_objective("adt_exp_am", apply, dict(eps=0.1, input_shape=(4, 4, 1),
                                                            generator_blocks=2))


def test_imp_am_released_hinge():
    """The released entropy term lam * -relu(-E log q - 0.9): zero (and no gradient) once the bound
    log 2 + E log q exceeds log 2 - 0.9; below it, the bound itself (shifted)."""
    high = jnp.array([0.0, 0.1])          # -E log q = log 2 - 0.05 < 0.9
    low = jnp.array([-1.0, -2.0])
    assert float(adt.entropy_term(high, 0.9)) == 0.0
    assert float(jnp.abs(jax.grad(lambda b: adt.entropy_term(b, 0.9))(high)).max()) == 0.0
    np.testing.assert_allclose(adt.entropy_term(low, 0.9), -(np.log(2) + 1.5 - 0.9), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda b: adt.entropy_term(b, 0.9))(low), [0.5, 0.5])
    np.testing.assert_allclose(adt.entropy_term(low, None), -1.5)
