"""Training objectives: limits that reduce to simpler objectives, loss formulas against direct
computations, the state contract, and hyperparameter checking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, losses, objectives
from advjax.objectives import mart, trades


class TinyBNNet(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dense: enough to exercise the batch-norm state contract."""
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        h = nn.Dense(8)(x.reshape(x.shape[0], -1))
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        logits = nn.Dense(self.num_classes)(h)
        return (logits, h) if return_features else logits


@pytest.fixture(scope="module")
def setup():
    model = TinyBNNet()
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 4, 4, 1))
    y = jnp.arange(16) % 3
    variables = model.init(jax.random.PRNGKey(1), x)
    params = variables["params"]
    state = {"model": {"batch_stats": variables["batch_stats"]}, "method": {}}
    return model, params, state, {"image": x, "label": y}


def _loss(name, model, params, state, batch, **hp):
    obj = objectives.make_objective(name, model.apply, hp)
    return obj(params, state, batch, jax.random.PRNGKey(7))


def test_standard_is_mean_ce_and_updates_batch_stats(setup):
    model, params, state, batch = setup
    loss, aux = _loss("standard", model, params, state, batch)
    logits, _ = model.apply({"params": params, **state["model"]}, batch["image"], train=True,
                            mutable=["batch_stats"])
    np.testing.assert_allclose(loss, losses.cross_entropy(logits, batch["label"]).mean(), rtol=1e-6)
    before = jax.tree_util.tree_leaves(state["model"])
    after = jax.tree_util.tree_leaves(aux["state"]["model"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), "batch_stats not updated"
    assert set(aux["metrics"]) >= {"loss", "acc"}


def test_fgsm_at_alpha_one_is_standard(setup):
    model, params, state, batch = setup
    l_std, _ = _loss("standard", model, params, state, batch)
    l_fgsm, _ = _loss("fgsm_at", model, params, state, batch, eps=0.1, alpha=1.0)
    np.testing.assert_allclose(l_std, l_fgsm, rtol=1e-6)


def test_fgsm_at_is_alpha_mixture(setup):
    model, params, state, batch = setup
    l_half, _ = _loss("fgsm_at", model, params, state, batch, eps=0.1, alpha=0.5)
    l_clean, _ = _loss("fgsm_at", model, params, state, batch, eps=0.1, alpha=1.0)
    l_adv, _ = _loss("fgsm_at", model, params, state, batch, eps=0.1, alpha=0.0)
    # Batch-norm statistics of the adversarial pass depend on the clean pass only through the running
    # averages, which train mode does not use, so the mixture is exact.
    np.testing.assert_allclose(l_half, 0.5 * l_clean + 0.5 * l_adv, rtol=1e-5)
    assert l_adv > l_clean


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ro_trains_on_the_fgm_point(setup, norm):
    model, params, state, batch = setup
    loss, _ = _loss("ro", model, params, state, batch, eps=0.2, norm=norm)
    f = objectives.attack_logits_fn(model.apply, params, state["model"])
    x_adv = attacks.fgm(f, batch["image"], batch["label"], eps=0.2, norm=norm)
    logits, _ = model.apply({"params": params, **state["model"]}, x_adv, train=True,
                            mutable=["batch_stats"])
    np.testing.assert_allclose(loss, losses.cross_entropy(logits, batch["label"]).mean(), rtol=1e-5)


def test_pgd_at_mix_zero_is_standard_and_adversarial_loss_is_larger(setup):
    model, params, state, batch = setup
    hp = dict(eps=0.3, step_size=0.1, steps=5)
    l_std, _ = _loss("standard", model, params, state, batch)
    l_mix0, _ = _loss("pgd_at", model, params, state, batch, mix=0.0, **hp)
    l_adv, aux = _loss("pgd_at", model, params, state, batch, **hp)
    np.testing.assert_allclose(l_std, l_mix0, rtol=1e-6)
    assert l_adv > l_std
    assert "adv_acc" in aux["metrics"]


def test_trades_beta_zero_is_standard(setup):
    model, params, state, batch = setup
    l_std, _ = _loss("standard", model, params, state, batch)
    l_tr, aux = _loss("trades", model, params, state, batch, eps=0.1, step_size=0.05, steps=3,
                      beta=0.0)
    np.testing.assert_allclose(l_std, l_tr, rtol=1e-6)
    assert aux["metrics"]["kl"] >= 0


def test_trades_loss_formula():
    rng = np.random.default_rng(0)
    zn, za = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    y = np.array([0, 1, 2, 3, 0])
    total, ce, kl = trades.trades_loss(jnp.asarray(zn), jnp.asarray(za), jnp.asarray(y), 6.0)
    pn = np.exp(zn) / np.exp(zn).sum(1, keepdims=True)
    pa = np.exp(za) / np.exp(za).sum(1, keepdims=True)
    ce_ref = -np.log(pn[np.arange(5), y]).mean()
    kl_ref = (pn * np.log(pn / pa)).sum(1).mean()
    np.testing.assert_allclose([ce, kl, total], [ce_ref, kl_ref, ce_ref + 6 * kl_ref], rtol=1e-5)


def test_mart_loss_formula():
    rng = np.random.default_rng(1)
    zn, za = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    y = rng.integers(0, 5, size=6)
    total, bce, wkl = mart.mart_loss(jnp.asarray(zn), jnp.asarray(za), jnp.asarray(y), 5.0)
    pn = np.exp(zn) / np.exp(zn).sum(1, keepdims=True)
    pa = np.exp(za) / np.exp(za).sum(1, keepdims=True)
    other = np.where(np.eye(5, dtype=bool)[y], -1, pa).max(1)
    bce_ref = (-np.log(pa[np.arange(6), y] + 1e-12) - np.log(1.0001 - other)).mean()
    kl = (pn * (np.log(pn + 1e-12) - np.log(pa + 1e-12))).sum(1)
    wkl_ref = (kl * (1.0000001 - pn[np.arange(6), y])).mean()
    np.testing.assert_allclose([bce, wkl, total], [bce_ref, wkl_ref, bce_ref + 5 * wkl_ref],
                               rtol=1e-5)


def test_attack_never_updates_batch_stats(setup):
    model, params, state, batch = setup
    for mode in ("eval", "train"):
        f = objectives.attack_logits_fn(model.apply, params, state["model"], mode=mode,
                                        key=jax.random.PRNGKey(0))
        out = f(batch["image"])
        assert out.shape == (16, 3)
    # eval mode equals inference with running statistics; train mode uses batch statistics.
    f_eval = objectives.attack_logits_fn(model.apply, params, state["model"], mode="eval")
    np.testing.assert_allclose(
        f_eval(batch["image"]),
        model.apply({"params": params, **state["model"]}, batch["image"], train=False), rtol=1e-6)


def test_objective_gradient_ignores_attack_path(setup):
    """x_adv is a constant for the update: the gradient equals that of CE at a fixed x_adv."""
    model, params, state, batch = setup
    hp = dict(eps=0.3, step_size=0.1, steps=3, random_start=False)
    obj = objectives.make_objective("pgd_at", model.apply, hp)
    g = jax.grad(lambda p: obj(p, state, batch, jax.random.PRNGKey(0))[0])(params)
    f = objectives.attack_logits_fn(model.apply, params, state["model"])
    x_adv = attacks.pgd(f, batch["image"], batch["label"], random_start=False, eps=0.3,
                        step_size=0.1, steps=3)

    def ce_at(p):
        logits, _ = model.apply({"params": p, **state["model"]}, x_adv, train=True,
                                mutable=["batch_stats"])
        return losses.cross_entropy(logits, batch["label"]).mean()

    g_ref = jax.grad(ce_at)(params)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_hyperparameter_errors_list_valid_names(setup):
    model, *_ = setup
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['epss'\].*valid"):
        objectives.make_objective("pgd_at", model.apply, {"epss": 0.1})
    with pytest.raises(ValueError, match=r"needs hyperparameters"):
        objectives.make_objective("pgd_at", model.apply, {"eps": 0.1})
    with pytest.raises(ValueError, match=r"unknown objective 'pgdat'.*pgd_at"):
        objectives.make_objective("pgdat", model.apply, {})
    with pytest.raises(ValueError, match="attack_bn"):
        objectives.make_objective("pgd_at", model.apply,
                                  dict(eps=0.1, step_size=0.1, steps=1, attack_bn="bogus"))
    with pytest.raises(ValueError, match="mix"):
        objectives.make_objective("pgd_at", model.apply,
                                  dict(eps=0.1, step_size=0.1, steps=1, mix=1.5))
