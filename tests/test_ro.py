"""Robust optimization (Shaham et al. 2018) as released, and the issue-15 study configs.

The RO baseline net's shapes and parameter count (the paper's Sec. 5.1 network), RO's single step with
and without the image box (the released Lua code does not clip), and every config of the ADT, DRO and
RO studies: it builds its model and objective, and states the authors' optimizer it cites.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, losses, models, objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ro_cnn_is_the_papers_baseline_net():
    model = models.get_model("ro_cnn")
    # conv 5x5x32 (832) + conv 5x5x64 (51,264) + FC 256->200 (51,400) + FC 200->10 (2,010)
    assert models.param_count(model, (28, 28, 1)) == 105506
    variables = jax.jit(lambda k: models.init_variables(model, k, (28, 28, 1)))(
        jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
    logits, feats = jax.jit(lambda v, z: model.apply(v, z, return_features=True))(variables, x)
    assert logits.shape == (3, 10) and feats.shape == (3, 2 * 2 * 64)
    # The 3x3 / stride-3 pool is a max over disjoint windows: compare with reduce_window.
    import flax.linen as nn
    h = jax.random.normal(jax.random.PRNGKey(2), (2, 24, 24, 5))
    ref = nn.max_pool(h, (3, 3), strides=(3, 3))
    n, hh, ww, c = h.shape
    np.testing.assert_allclose(jnp.max(h.reshape(n, 8, 3, 8, 3, c), axis=(2, 4)), ref)


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_ro_step_with_and_without_the_box(norm):
    """box=True is attacks.fgm (clipped to [0, 1]); box=False (the released code) is the raw
    steepest-ascent step x + eps v*(g): for l1 exactly one pixel moves, by the whole radius, even out
    of [0, 1]."""
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    def apply(variables, x, *, train=False, rngs=None, mutable=None, return_features=False):
        out = x.reshape(x.shape[0], -1) @ variables["params"]
        return (out, {}) if mutable is not None else out

    x = jnp.round(jax.random.uniform(jax.random.PRNGKey(1), (6, 4, 4, 1)))   # pixels at 0 or 1
    y = jnp.arange(6) % 3
    state = {"model": {}, "method": {}}
    batch = {"image": x, "label": y}
    f = lambda z: z.reshape(z.shape[0], -1) @ w
    eps = 0.7
    boxed = objectives.make_objective("ro", apply, dict(eps=eps, norm=norm))
    loss_box, _ = jax.jit(boxed.fn)(w, state, batch, jax.random.PRNGKey(0))
    x_box = jax.jit(lambda z, t: attacks.fgm(f, z, t, eps=eps, norm=norm))(x, y)
    np.testing.assert_allclose(loss_box, losses.cross_entropy(f(x_box), y).mean(), rtol=1e-6)
    free = objectives.make_objective("ro", apply, dict(eps=eps, norm=norm, box=False))
    loss_free, _ = jax.jit(free.fn)(w, state, batch, jax.random.PRNGKey(0))
    g = jax.grad(lambda z: jnp.sum(losses.cross_entropy(f(z), y)))(x)
    if norm == "l1":
        flat = np.asarray(g).reshape(6, -1)
        delta = np.zeros_like(flat)
        idx = np.abs(flat).argmax(1)
        delta[np.arange(6), idx] = eps * np.sign(flat[np.arange(6), idx])
    else:
        delta = eps * np.sign(np.asarray(g)).reshape(6, -1)
    x_free = x + delta.reshape(x.shape)
    assert float(x_free.max()) > 1.0 or float(x_free.min()) < 0.0   # leaves the box
    np.testing.assert_allclose(loss_free, losses.cross_entropy(f(x_free), y).mean(), rtol=1e-5)
    assert abs(float(loss_free) - float(loss_box)) > 1e-4


def _configs():
    names = ["adt_standard_fmnist", "adt_at_pgd_fmnist", "adt_exp_fmnist", "adt_exp_am_fmnist",
             "adt_imp_am_fmnist", "pgd_at_fmnist", "udr_pgd_hardball_fmnist", "udr_pgd_fmnist",
             "trades_fmnist", "udr_trades_fmnist", "mart_fmnist", "udr_mart_fmnist",
             "awp_fmnist", "udr_awp_fmnist", "wrm_fmnist", "dra_inf_fmnist", "dra_multi_fmnist",
             "dra_mahalanobis_fmnist", "ro_standard_fmnist", "ro_linf_fmnist", "ro_l1_fmnist",
             "ro_l2_fmnist", "ro_fgsm_at_fmnist", "ro_pgd_at_fmnist"]
    return names


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("name", _configs())
def test_study_config_builds_with_the_authors_optimizer(name):
    c = _load(name)
    model = models.get_model(c.model.name, **{k: v for k, v in c.model.items() if k != "name"})
    objectives.make_objective(c.objective.name, model.apply,
                              {k: v for k, v in c.objective.items() if k != "name"})
    assert c.data.name == "fashion_mnist" and c.data.train_limit == 0 and c.eval.limit == 0
    assert c.optim.name == "sgd" and c.optim.lr == 0.01 and c.optim.momentum == 0.9
    assert c.optim.warmup_epochs == 0 and c.optim.grad_clip == 0   # no author uses them
    if name.startswith("ro_"):
        assert c.model.name == "ro_cnn" and c.train.batch_size == 100
        assert c.optim.weight_decay == 1e-3 and c.optim.schedule == "constant"
    else:
        assert c.model.name == "cnn4c3f" and c.optim.schedule == "piecewise"
        assert tuple(c.optim.decay_epochs) == (55, 75, 90) and c.train.epochs == 100
    if name.startswith("udr_") and name != "udr_pgd_hardball_fmnist":
        assert c.objective.lambda_schedule == "code" and c.objective.lambda_distance == "mean_abs"
