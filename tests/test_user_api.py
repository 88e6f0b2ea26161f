"""A user who brings their own model: a Flax CNN of plain nn.Conv / nn.Dense (no advjax layers) and a
plain jnp model, used through `import advjax` alone (issue 17): targeted APGD-T reaching its targets,
bounds other than [0, 1], TRADES training through advjax.objectives, and `advjax train` of a
registered user model from a config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import advjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = W = 8


class UserCNN(nn.Module):
    """What a user writes: plain Flax layers, __call__(x) -> logits, no train / return_features."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        x = x.reshape((x.shape[0], -1))
        h = nn.Dense(16, name="hidden")(x)
        return nn.Dense(self.num_classes)(nn.relu(h))


def plain_apply(variables, x):
    """A plain jnp model: apply(variables, x) -> logits."""
    p = variables["params"]
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"]


def plain_init(key, classes=10):
    k1, k2 = jax.random.split(key)
    return {"params": {"w1": jax.random.normal(k1, (H * W, 32)) / 8.0, "b1": jnp.zeros(32),
                       "w2": jax.random.normal(k2, (32, classes)) / 4.0}}


@pytest.fixture(scope="module", params=["flax_cnn", "plain_jnp"])
def user_model(request):
    """(apply, variables, logits_fn) for each kind of user model."""
    key = jax.random.PRNGKey(0)
    if request.param == "flax_cnn":
        model = UserCNN()
        variables = model.init(key, jnp.zeros((1, H, W, 1)))
        return model.apply, variables, lambda x: model.apply(variables, x)
    variables = plain_init(key)
    return plain_apply, variables, lambda x: plain_apply(variables, x)


def batch(n=8, lo=0.0, hi=1.0, seed=1):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, H, W, 1), jnp.float32, lo, hi)


def test_import_advjax_is_enough_and_lazy():
    """`import advjax` loads only the jax-only layers; the rest comes on first attribute access."""
    code = textwrap.dedent("""
        import sys, advjax
        heavy = ["flax", "tensorflow_datasets", "matplotlib", "orbax", "advjax.models",
                 "advjax.evaluate", "advjax.train", "advjax.data", "advjax.objectives"]
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        assert callable(advjax.pgd) and callable(advjax.apgd_t) and callable(advjax.normalized)
        assert callable(advjax.evaluate.robust_accuracy) and "advjax.evaluate" in sys.modules
        assert advjax.register_model is advjax.models.register_model and "flax" in sys.modules
        for name in ("objectives", "train", "data"):
            getattr(advjax, name)
        print("ok")
        """)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        advjax.nonexistent  # noqa: B018


def test_targeted_apgd_t_reaches_targets(user_model):
    _, _, f = user_model
    x = batch()
    y = jnp.argmax(f(x), -1)
    # The runner-up class of each example (APGD-T's first target); test_targets.py covers the other
    # rules on a model where every class is reachable.
    attack = advjax.targeted(advjax.apgd_t, advjax.targets.most_likely(1))
    key = jax.random.PRNGKey(2)
    x_adv = attack(f, x, y, key=key, eps=0.5, steps=25)
    t = attack.targets(f, x, y, key)
    assert np.all(np.asarray(t) != np.asarray(y))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(f(x_adv), -1)), np.asarray(t))
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.5 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_bounds_other_than_unit_box(user_model):
    """The model reads pixels in [0, 255]; the attack works in that box and eps is in pixels."""
    _, _, g = user_model
    f = lambda x: g(x / 255.0)
    x = jnp.round(batch(lo=0.0, hi=255.0))
    x = x.at[:, :2].set(255.0).at[:, -2:].set(0.0)           # pixels at both faces of the box
    y = jnp.argmax(f(x), -1)
    x_adv = advjax.pgd(f, x, y, key=jax.random.PRNGKey(3), eps=32.0, steps=5, bounds=(0.0, 255.0))
    xa = np.asarray(x_adv)
    assert xa.min() >= 0.0 and xa.max() <= 255.0
    assert np.abs(xa - np.asarray(x)).max() <= 32.0 + 1e-3
    assert np.abs(xa - np.asarray(x)).max() > 1.0            # moved in pixel units, not [0, 1] ones
    assert np.mean((xa == 0.0) | (xa == 255.0)) > 0.1       # and the faces of [0, 255] bind
    with pytest.raises(ValueError, match=r"x must lie in the box bounds=\[0, 1\]"):
        advjax.pgd(f, x, y, key=jax.random.PRNGKey(3), eps=32.0, steps=5)


def test_trades_training_of_user_models(user_model):
    apply, variables, _ = user_model
    objective = advjax.objectives.make_objective("trades", apply,
                                                 dict(eps=0.1, step_size=0.05, steps=3, beta=1.0))
    x = batch(n=32, seed=4)
    y = jnp.arange(32) % 10
    params, tx = variables["params"], optax.adam(1e-2)
    opt_state = tx.init(params)
    state = {"model": {}, "method": {}}

    @jax.jit
    def step(params, opt_state, key):
        (loss, aux), g = jax.value_and_grad(objective, has_aux=True)(
            params, state, {"image": x, "label": y}, key)
        updates, opt_state = tx.update(g, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, aux["metrics"]

    losses = []
    for i in range(6):
        params, opt_state, loss, metrics = step(params, opt_state, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert set(metrics) >= {"ce", "kl", "acc", "adv_acc"}
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_features_from_named_intermediate_and_features_fn():
    model = UserCNN()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, H, W, 1)))
    x = batch(n=4)
    p = variables["params"]
    # Reference: the "hidden" Dense layer's output computed from its parameters.
    act = nn.relu(nn.Conv(4, (3, 3)).apply({"params": p["conv"]}, x)).reshape(4, -1)
    ref = act @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    adapted = advjax.objectives.as_objective_apply(model.apply, features="hidden")
    (logits, feats), new_state = adapted(variables, x, train=True, mutable=[], return_features=True)
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-6)
    assert new_state == {}
    # The registered class gives the same features, through nn.intercept_methods.
    cls = advjax.models.register_model("_test_user_cnn_features", UserCNN, features="hidden")
    try:
        _, feats2 = cls().apply(variables, x, train=False, return_features=True)
        np.testing.assert_allclose(feats2, ref, rtol=1e-5, atol=1e-6)
    finally:
        advjax.models.MODELS.pop("_test_user_cnn_features")
    # A plain function needs features_fn; without it the error says what to do.
    pv = plain_init(jax.random.PRNGKey(1))
    hidden = lambda v, z: jnp.tanh(z.reshape(z.shape[0], -1) @ v["params"]["w1"] + v["params"]["b1"])
    a2 = advjax.objectives.as_objective_apply(plain_apply, features_fn=hidden)
    (_, f2), _ = a2(pv, x, train=True, mutable=[], return_features=True)
    np.testing.assert_allclose(f2, hidden(pv, x), rtol=1e-6)
    with pytest.raises(ValueError, match="needs features"):
        advjax.objectives.as_objective_apply(plain_apply)(pv, x, return_features=True)
    with pytest.raises(ValueError, match="plain function"):
        advjax.objectives.as_objective_apply(plain_apply, features="hidden")


def test_register_model_errors():
    with pytest.raises(ValueError, match="built-in model"):
        advjax.models.register_model("mlp", UserCNN)

    class NoClasses(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    with pytest.raises(ValueError, match="must have a num_classes field"):
        advjax.models.register_model("_test_no_classes", NoClasses)
    with pytest.raises(ValueError, match="flax.linen.Module subclass"):
        advjax.models.register_model("_test_not_a_module", dict)
    advjax.models.register_model("_test_user_cnn_twice", UserCNN)
    try:
        class Other(UserCNN):
            pass

        with pytest.raises(ValueError, match="already registered"):
            advjax.models.register_model("_test_user_cnn_twice", Other)
        advjax.models.register_model("_test_user_cnn_twice", Other, overwrite=True)
    finally:
        advjax.models.MODELS.pop("_test_user_cnn_twice")


USER_CONFIG = '''
import flax.linen as nn

import advjax
from advjax.config import default_config


class MyNet(nn.Module):
    num_classes: int = 10
    width: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3), name="conv")(x))
        return nn.Dense(self.num_classes, name="head")(x.reshape((x.shape[0], -1)))


advjax.register_model("_test_my_net", MyNet)


def get_config():
    c = default_config()
    c.data.name = "digits"
    c.data.train_limit = 256
    c.model.name = "_test_my_net"
    c.model.width = 4
    c.objective.name = "fgsm_at"
    c.objective.eps = 0.1
    c.optim.lr = 0.05
    c.train.epochs = 1
    c.train.batch_size = 64
    c.train.progress = False
    c.train.checkpoint_every_steps = 0
    c.eval.limit = 64
    c.eval.batch_size = 64
    c.eval.attacks = [dict(name="fgsm", eps=0.1)]
    return c
'''


def test_advjax_train_runs_a_registered_user_model(tmp_path, capsys):
    cfg = tmp_path / "my_net.py"
    cfg.write_text(USER_CONFIG)
    workdir = tmp_path / "run"
    try:
        advjax.cli.main(["advjax", "train", "--config", str(cfg), "--workdir", str(workdir)])
    finally:
        advjax.models.MODELS.pop("_test_my_net", None)
    result = json.loads((workdir / "eval.json").read_text())
    assert result["n"] == 64 and 0.0 <= result["attack/fgsm"] <= result["clean"] <= 1.0
    with open(workdir / "metrics.jsonl") as fh:
        steps = [json.loads(line)["step"] for line in fh]
    assert steps and max(steps) == 4                  # 256 examples / batch 64, one epoch
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["name"] == "_test_my_net" and saved["model"]["width"] == 4
