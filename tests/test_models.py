"""The model zoo: shapes, features, batch norm / dropout modes, in-model normalization, the fast
max-pool and first-conv implementations, the registry, and parameter counts of the paper configs.

Big models are only traced abstractly (jax.eval_shape); everything that runs uses narrow, shallow
versions of the architectures on small inputs.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import models
from advjax.models import layers

KEY = jax.random.PRNGKey(0)


def _images(shape, n=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *shape)), jnp.float32)


def _variables(model, shape, seed=0):
    """Variables with exactly the structure of ``models.init_variables``, filled from NumPy.

    JAX's random initializers compile slowly on XLA:CPU (seconds per parameter shape), so the tests
    take the tree from ``jax.eval_shape`` and fill it here: kernels ~ N(0, 1 / fan_in), small random
    biases, batch-norm scales near 1 and running statistics away from their (0, 1) init, so that
    eval and train modes differ measurably.
    """
    abstract = jax.eval_shape(lambda k: models.init_variables(model, k, shape), KEY)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, size = path[-1].key, leaf.shape
        if name == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(size[:-1])), size)
        elif name == "scale":
            value = rng.uniform(0.8, 1.2, size)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, size)
        else:  # bias, mean
            value = rng.normal(0, 0.1, size)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


# name, small fields, input shape (no batch), feature dimension
SMALL = [
    ("mlp", dict(hidden=(16, 8)), (6, 6, 1), 8),
    ("mlp", dict(hidden=(10, 10, 10), num_classes=2), (2,), 10),
    ("cnn4c3f", dict(widths=(4, 8), fc_widths=(16, 16)), (16, 16, 1), 1 * 1 * 8),  # VALID convs
    ("cnn4c3f", dict(widths=(4, 8), convs_per_block=3, fc_widths=(8, 8, 8), num_classes=7,
                     padding="SAME"), (8, 8, 3), 2 * 2 * 8),
    ("madry_cnn", dict(widths=(4, 8), fc_width=16), (8, 8, 1), 2 * 2 * 8),
    ("daa_cnn", dict(widths=(4, 4, 8, 8)), (8, 8, 1), 2 * 2 * 8),
    ("dra_cnn", dict(stages=((4,), (8, 8)), fc_widths=(16, 16)), (8, 8, 3), 2 * 2 * 8),
    ("resnet20", dict(blocks_per_stage=1, widths=(4, 8, 16)), (8, 8, 3), 16),
    ("resnet20", dict(blocks_per_stage=1, widths=(4, 8, 16), shortcut="B"), (8, 8, 3), 16),
    ("preact_resnet18", dict(blocks_per_stage=(1, 1, 1, 1), widths=(4, 8, 8, 16)), (8, 8, 3), 16),
    ("wrn", dict(depth=10, widen_factor=1), (8, 8, 3), 64),
]
IDS = [f"{n}-{i}" for i, (n, *_) in enumerate(SMALL)]
BATCH = 3


@functools.lru_cache(maxsize=None)
def _run_small(index: int):
    """Everything the shape / feature / batch-norm tests look at, from one compiled program."""
    name, fields, shape, _ = SMALL[index]
    model = models.get_model(name, **fields)
    x = _images(shape, n=BATCH)

    @jax.jit
    def run(key, other_key, variables, x):
        mutable = [c for c in variables if c != "params"]
        out = dict(logits=model.apply(variables, x),
                   logits_and_features=model.apply(variables, x, return_features=True),
                   first_alone=model.apply(variables, x[:1]))
        out["eval_update"] = model.apply(variables, x, mutable=mutable)[1]
        out["train"], out["train_update"] = model.apply(
            variables, x, train=True, rngs={"dropout": key}, mutable=mutable, return_features=True)
        out["train_other_key"] = model.apply(variables, x, train=True, rngs={"dropout": other_key},
                                             mutable=mutable)[0]
        return out

    variables = _variables(model, shape, seed=index)
    return model, x, dict(run(KEY, jax.random.PRNGKey(9), variables, x), variables=variables)


@pytest.mark.parametrize("index", range(len(SMALL)), ids=IDS)
def test_logits_and_features_shapes(index):
    name, fields, shape, feat_dim = SMALL[index]
    _, _, r = _run_small(index)
    k = fields.get("num_classes", 10)
    assert r["logits"].shape == (BATCH, k) and r["logits"].dtype == jnp.float32
    assert np.all(np.isfinite(r["logits"]))
    logits, feats = r["logits_and_features"]
    assert feats.shape == (BATCH, feat_dim)
    np.testing.assert_array_equal(logits, r["logits"])
    # Training mode (batch statistics, dropout) keeps the shapes.
    assert r["train"][0].shape == (BATCH, k) and r["train"][1].shape == (BATCH, feat_dim)


def test_init_variables():
    model = models.MLP(hidden=(3,), num_classes=2)
    variables = models.init_variables(model, KEY, (2,))
    assert set(variables) == {"params"}
    assert jax.tree_util.tree_map(jnp.shape, variables["params"]) == {
        "fc1": {"kernel": (2, 3), "bias": (3,)}, "fc2": {"kernel": (3, 2), "bias": (2,)}}
    assert np.all(np.asarray(variables["params"]["fc1"]["kernel"]) != 0)
    # Batch-norm models also get their running statistics, initialized to mean 0 / variance 1.
    bn = jax.eval_shape(lambda k: models.init_variables(models.DAACNN(widths=(2, 2, 2, 2)), k,
                                                        (4, 4, 1)), KEY)
    assert set(bn) == {"params", "batch_stats"}
    assert set(bn["batch_stats"]) == {"bn1", "bn2", "bn3", "bn4"}


def test_features_are_the_head_input():
    """Where the features feed the final dense layer ("fc") directly, they give the logits."""
    for index, (name, *_) in enumerate(SMALL):
        if name not in ("daa_cnn", "resnet20", "preact_resnet18", "wrn"):
            continue  # the other models have hidden dense layers between features and logits
        _, _, r = _run_small(index)
        logits, feats = r["logits_and_features"]
        head = r["variables"]["params"]["fc"]
        np.testing.assert_allclose(feats @ head["kernel"] + head["bias"], logits, rtol=1e-5,
                                   atol=1e-5, err_msg=name)


def test_mlp_features_are_last_hidden_layer():
    model = models.MLP(hidden=(5, 3), num_classes=2)
    variables = _variables(model, (2,))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 2)), jnp.float32)
    logits, feats = model.apply(variables, x, return_features=True)
    p = variables["params"]
    h = jax.nn.relu(jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"]
                    + p["fc2"]["bias"])
    np.testing.assert_allclose(feats, h, rtol=1e-6)
    np.testing.assert_allclose(logits, h @ p["fc3"]["kernel"] + p["fc3"]["bias"], rtol=1e-5)


BN_INDICES = [i for i, (name, *_) in enumerate(SMALL)
              if name in ("daa_cnn", "dra_cnn", "resnet20", "preact_resnet18", "wrn")]


@pytest.mark.parametrize("index", BN_INDICES, ids=[IDS[i] for i in BN_INDICES])
def test_batch_norm_eval_uses_running_stats_and_mutates_nothing(index):
    model, x, r = _run_small(index)
    stats = r["variables"]["batch_stats"]
    # Eval mode ran without a mutable collection ("first_alone": flax raises on a write to an
    # immutable one), and, even when allowed to, writes nothing.
    jax.tree_util.tree_map(np.testing.assert_array_equal, r["eval_update"]["batch_stats"], stats)
    # Eval is per-example: one example alone gets the same logits as inside the batch.
    np.testing.assert_allclose(r["first_alone"], r["logits"][:1], rtol=1e-5, atol=1e-5)
    # Train mode normalizes with batch statistics and updates every running average.
    assert not np.allclose(r["train"][0], r["logits"], atol=1e-4)
    changed = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), r["train_update"]["batch_stats"],
        stats))
    assert changed and all(changed), "every batch-norm layer must update in train mode"


def test_bn_axis_name_pools_statistics_across_the_named_axis():
    """Two shards under vmap(axis_name) in train mode act like one batch (pmap relies on it)."""
    fields = dict(widths=(2, 2, 4, 4))
    local, pooled = models.DAACNN(**fields), models.DAACNN(**fields, bn_axis_name="shards")
    variables = _variables(local, (4, 4, 1))
    x = _images((4, 4, 1), n=6)

    @jax.jit
    def run(variables, x):
        def train(model, x):
            return model.apply(variables, x, train=True, mutable=["batch_stats"])

        shards = x.reshape(2, 3, *x.shape[1:])
        sharded = jax.vmap(lambda xs: train(pooled, xs), axis_name="shards")(shards)
        return train(local, x), sharded

    (logits, upd), (sharded_logits, sharded_upd) = run(variables, x)
    np.testing.assert_allclose(sharded_logits.reshape(logits.shape), logits, rtol=1e-4, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6),
                           sharded_upd["batch_stats"], upd["batch_stats"])


def test_batch_norm_momentum_and_epsilon_are_torch_defaults():
    class OneBN(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return layers.batch_norm(train)(x)

    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (32, 5)), jnp.float32)
    m = OneBN()
    v = m.init(KEY, x, False)
    y, upd = m.apply(v, x, True, mutable=["batch_stats"])
    np.testing.assert_allclose(upd["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * x.mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["BatchNorm_0"]["var"],
                               0.9 + 0.1 * x.var(0), rtol=1e-4)  # flax: biased batch variance
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-4,
                               atol=1e-5)


def test_dropout_only_in_train_mode():
    model = models.CNN4C3F(widths=(4, 4), fc_widths=(32, 32))
    no_drop = models.CNN4C3F(widths=(4, 4), fc_widths=(32, 32), dropout_rate=0.0)
    x = _images((16, 16, 1))
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)

    @jax.jit
    def run(variables, x):
        train = lambda m, k: m.apply(variables, x, train=True, rngs={"dropout": k})  # noqa: E731
        # Eval mode is deterministic and needs no rng.
        return (train(model, k1), train(model, k2), train(model, k1), model.apply(variables, x),
                train(no_drop, k1))

    a, b, a2, e, e_no_drop = run(_variables(model, (16, 16, 1)), x)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, e)
    # With dropout 0, train mode equals eval mode (no batch norm in this model).
    np.testing.assert_allclose(e_no_drop, e, rtol=1e-6)


def test_dra_cnn_dropout_in_train_mode():
    index = next(i for i, (name, *_) in enumerate(SMALL) if name == "dra_cnn")
    _, _, r = _run_small(index)
    assert not np.allclose(r["train_other_key"], r["train"][0], atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Normalization inside the model
# ------------------------------------------------------------------------------------------------

def test_normalization_happens_inside_the_model():
    fields = dict(blocks_per_stage=1, widths=(4, 8, 16))
    with_norm = models.ResNet20(**fields)  # CIFAR-10 mean / std by default
    without = models.ResNet20(**fields, mean=None, std=None)
    x = _images((8, 8, 3))
    mean, std = np.array(models.CIFAR10_MEAN), np.array(models.CIFAR10_STD)

    @jax.jit
    def run(variables, x):
        return (with_norm.apply(variables, x), without.apply(variables, (x - mean) / std),
                without.apply(variables, x))

    normalized_inside, normalized_outside, raw = run(_variables(with_norm, (8, 8, 3)), x)
    np.testing.assert_allclose(normalized_inside, normalized_outside, rtol=1e-4, atol=1e-5)
    assert not np.allclose(normalized_inside, raw, atol=1e-3)


@pytest.mark.parametrize("name", ["mlp", "cnn4c3f", "madry_cnn", "daa_cnn"])
def test_mnist_models_do_not_normalize_by_default(name):
    model = models.get_model(name)
    assert model.mean is None and model.std is None


@pytest.mark.parametrize("name", ["dra_cnn", "resnet20", "preact_resnet18", "wrn"])
def test_cifar_models_normalize_with_cifar_stats_by_default(name):
    model = models.get_model(name)
    assert tuple(model.mean) == models.CIFAR10_MEAN and tuple(model.std) == models.CIFAR10_STD


def test_scalar_normalization_and_channel_mismatch_error():
    model = models.MLP(hidden=(4,), mean=0.5, std=0.25)
    plain = models.MLP(hidden=(4,))
    variables = _variables(model, (3, 3, 1))
    x = _images((3, 3, 1))
    np.testing.assert_allclose(model.apply(variables, x), plain.apply(variables, (x - 0.5) / 0.25),
                               rtol=1e-5, atol=1e-5)
    cifar_on_mnist = models.ResNet20(blocks_per_stage=1, widths=(4, 8, 16))
    with pytest.raises(ValueError, match="3 values but the input has 1 channels"):
        jax.eval_shape(lambda k: models.init_variables(cifar_on_mnist, k, (8, 8, 1)), KEY)


# ------------------------------------------------------------------------------------------------
# Fast layers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 6, 6, 2), (2, 7, 5, 3), (1, 1, 1, 1)])
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_max_pool_2x2_matches_nn_max_pool(shape, padding):
    if padding == "VALID" and min(shape[1:3]) < 2:
        pytest.skip("empty output")
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=shape) * 2) / 2  # coarse values: many ties inside windows
    x[0, :2, :2, 0] = 0.0  # an all-tied window
    x, t = jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=shape), jnp.float32)
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2), padding=padding)  # noqa: E731
    fast = lambda v: layers.max_pool_2x2(v, padding=padding)  # noqa: E731

    @jax.jit
    def run(x, t):
        g = jnp.cos(jnp.arange(ref(x).size, dtype=x.dtype)).reshape(ref(x).shape)
        return dict(out=(fast(x), ref(x)),
                    grad=(jax.grad(lambda v: jnp.sum(g * fast(v)))(x),
                          jax.grad(lambda v: jnp.sum(g * ref(v)))(x)),
                    # Forward mode works (no custom_vjp) and agrees with reverse mode.
                    jvp=(jnp.sum(g * jax.jvp(fast, (x,), (t,))[1]),
                         jnp.sum(jax.grad(lambda v: jnp.sum(g * fast(v)))(x) * t)))

    r = run(x, t)
    np.testing.assert_array_equal(*r["out"])
    # Even with ties: both give the whole gradient to the first maximal entry of the window.
    np.testing.assert_array_equal(*r["grad"])
    np.testing.assert_allclose(*r["jvp"], rtol=1e-5, atol=1e-5)


def test_max_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="NHWC"):
        layers.max_pool_2x2(jnp.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="padding"):
        layers.max_pool_2x2(jnp.zeros((1, 4, 4, 2)), padding="FULL")
    with pytest.raises(ValueError, match="impl"):
        layers.max_pool(jnp.zeros((1, 4, 4, 2)), impl="fast")


# Every `layers.Conv` implementation against XLA's convolution: tests/test_layers.py.


def test_fast_implementations_do_not_change_the_model():
    shape = (16, 16, 1)
    x, y = _images(shape, n=5), jnp.arange(5) % 10

    @functools.partial(jax.jit, static_argnums=0)
    def logits_and_input_grad(model, variables, x):
        def loss(v):
            return jnp.sum(jax.nn.log_softmax(model.apply(variables, v))[jnp.arange(5), y])

        return model.apply(variables, x), jax.grad(loss)(x)

    fast = models.MadryCNN(widths=(4, 8))
    plain = models.MadryCNN(widths=(4, 8), pool_impl="nn", first_conv_impl="xla")
    # The fast paths are the CPU defaults of MadryCNN and CNN4C3F (layers: tests/test_layers.py).
    for model in (fast, models.CNN4C3F()):
        assert model.pool_impl == "reshape" and model.first_conv_impl == model.conv_impl == "auto"
    assert layers.resolve_conv_impl("auto", 1) == "patches_grad"
    variables = _variables(fast, shape)
    for a, b in zip(logits_and_input_grad(fast, variables, x),
                    logits_and_input_grad(plain, variables, x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Registry and helpers
# ------------------------------------------------------------------------------------------------

def test_registry_names_and_num_classes_field():
    assert set(models.MODELS) == {"mlp", "cnn4c3f", "madry_cnn", "daa_cnn", "daa_release_cnn",
                                  "ro_cnn", "dra_cnn", "resnet20", "preact_resnet18", "wrn",
                                  "ensemble"}
    for name in models.MODELS:
        fields = models.model_fields(name)
        assert "num_classes" in fields and "parent" not in fields and "name" not in fields
        assert models.get_model(name).num_classes == 10
        assert models.get_model(name, num_classes=3).num_classes == 3


def test_registry_errors_name_the_valid_options():
    with pytest.raises(ValueError) as e:
        models.get_model("resnet50")
    for name in models.MODELS:
        assert name in str(e.value)
    with pytest.raises(ValueError) as e:
        models.get_model("wrn", depth=16, width=4)
    msg = str(e.value)
    assert "width" in msg and "widen_factor" in msg and "depth" in msg and "num_classes" in msg
    with pytest.raises(ValueError, match="valid names"):
        models.model_fields("vgg")


def test_get_model_turns_lists_into_tuples():
    model = models.get_model("dra_cnn", stages=[[4], [8]], fc_widths=[8, 8])
    assert model.stages == ((4,), (8,)) and model.fc_widths == (8, 8)
    hash(model)  # usable as a static jit argument


def test_bn_axis_name_field_on_batch_norm_models():
    for name in models.MODELS:
        has_bn = name in ("daa_cnn", "dra_cnn", "resnet20", "preact_resnet18", "wrn")
        assert ("bn_axis_name" in models.model_fields(name)) == has_bn, name


def test_logits_fn():
    index = next(i for i, (name, *_) in enumerate(SMALL) if name == "daa_cnn")
    model, x, r = _run_small(index)
    variables = r["variables"]

    @jax.jit
    def run(x):
        f = models.logits_fn(model, variables)
        g = models.logits_fn(model, variables, train=True)
        # Input gradients flow through it (what the attacks need).
        return f(x), g(x), jax.grad(lambda v: jnp.sum(f(v)[:, 0]))(x)

    eval_logits, train_logits, grad = run(x)
    np.testing.assert_allclose(eval_logits, r["logits"], rtol=1e-5, atol=1e-6)
    # train=True: the batch's statistics (what "train" in r used), the update discarded.
    np.testing.assert_allclose(train_logits, r["train"][0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(train_logits, eval_logits, atol=1e-4)
    assert grad.shape == x.shape and np.any(grad != 0)


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.param_count(models.WideResNet(depth=12, widen_factor=1), (8, 8, 3))


def test_parameter_names_for_weight_transfer():
    v = jax.eval_shape(lambda k: models.init_variables(models.MadryCNN(), k, (28, 28, 1)), KEY)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, v["params"])
    assert shapes == {"conv1": {"kernel": (5, 5, 1, 32), "bias": (32,)},
                      "conv2": {"kernel": (5, 5, 32, 64), "bias": (64,)},
                      "fc1": {"kernel": (3136, 1024), "bias": (1024,)},
                      "fc2": {"kernel": (1024, 10), "bias": (10,)}}
    v = jax.eval_shape(lambda k: models.init_variables(models.CNN4C3F(widths=(32, 64)), k,
                                                       (28, 28, 1)), KEY)
    assert sorted(v["params"]) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "fc3"]
    assert v["params"]["conv3"]["kernel"].shape == (3, 3, 32, 64)
    assert v["params"]["fc1"]["kernel"].shape == (4 * 4 * 64, 200)


# ------------------------------------------------------------------------------------------------
# The paper configurations, abstractly
# ------------------------------------------------------------------------------------------------

PAPER_CONFIGS = [
    # name, fields, input shape, parameters, feature dimension
    ("madry_cnn", {}, (28, 28, 1), 3_274_634, 7 * 7 * 64),
    ("cnn4c3f", dict(widths=(32, 64)), (28, 28, 1), 312_202, 4 * 4 * 64),   # C&W MNIST
    ("cnn4c3f", {}, (28, 28, 1), 172_874, 4 * 4 * 32),                      # ADR CNN-4C3F(32)
    ("cnn4c3f", dict(widths=(64, 64), fc_widths=(256, 256)), (32, 32, 3), 590_794, 5 * 5 * 64),
    ("daa_cnn", {}, (28, 28, 1), 96_554, 7 * 7 * 64),
    # DAA's release, fashion-mnist-master/model.py: 832 + 25,632 + 18,496 + 36,928 (convs)
    # + 3,212,288 (fc1) + 2,048 (inference-mode batch norm) + 10,250 (fc2).
    ("daa_release_cnn", {}, (28, 28, 1), 3_306_474, 7 * 7 * 64),
    ("dra_cnn", {}, (32, 32, 3), 9_938_378, 512),
    ("resnet20", {}, (32, 32, 3), 269_722, 64),
    ("preact_resnet18", {}, (32, 32, 3), 11_172_170, 512),
    ("wrn", dict(depth=28, widen_factor=10), (32, 32, 3), 36_479_194, 640),
    ("wrn", dict(depth=34, widen_factor=10), (32, 32, 3), 46_160_474, 640),
    ("mlp", dict(hidden=(10, 10, 10), num_classes=2), (2,), 272, 10),
]


@pytest.mark.parametrize("name,fields,shape,n_params,feat_dim", PAPER_CONFIGS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(PAPER_CONFIGS)])
def test_paper_configurations_abstractly(name, fields, shape, n_params, feat_dim):
    """Parameter counts (WRN-28-10 ~36.5M, WRN-34-10 ~46.2M, ResNet-20 ~0.27M, PreAct ResNet-18
    ~11.2M, Madry CNN ~3.27M, C&W MNIST 312k) and feature sizes, from shapes only."""
    model = models.get_model(name, **fields)
    assert models.param_count(model, shape) == n_params

    def forward(k):
        variables = models.init_variables(model, k, shape)
        return model.apply(variables, jnp.zeros((2, *shape)), return_features=True)

    logits, feats = jax.eval_shape(forward, KEY)
    assert logits.shape == (2, fields.get("num_classes", 10))
    assert feats.shape == (2, feat_dim)


# ------------------------------------------------------------------------------------------------
# PyTorch twins: the documented weight layout
# ------------------------------------------------------------------------------------------------

@pytest.mark.peers
def test_madry_cnn_and_cnn4c3f_match_torch_twins_with_copied_weights():
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def conv_w(p):  # HWIO -> OIHW
        return torch.tensor(np.asarray(p["kernel"]).transpose(3, 2, 0, 1)), \
            torch.tensor(np.asarray(p["bias"]))

    def dense_w(p):  # (in, out) -> (out, in)
        return torch.tensor(np.asarray(p["kernel"]).T), torch.tensor(np.asarray(p["bias"]))

    def load(layer, wb):
        with torch.no_grad():
            layer.weight.copy_(wb[0])
            layer.bias.copy_(wb[1])
        return layer

    x = np.asarray(_images((28, 28, 1), n=6, seed=3))
    y = np.arange(6) % 10

    # Madry CNN, small widths.
    flax_model = models.MadryCNN(widths=(4, 8), fc_width=16)
    p = _variables(flax_model, (28, 28, 1))["params"]
    twin = tnn.Sequential(
        load(tnn.Conv2d(1, 4, 5, padding=2), conv_w(p["conv1"])), tnn.ReLU(), tnn.MaxPool2d(2),
        load(tnn.Conv2d(4, 8, 5, padding=2), conv_w(p["conv2"])), tnn.ReLU(), tnn.MaxPool2d(2),
        # NHWC flatten order, as documented.
        _Permute(torch), tnn.Flatten(),
        load(tnn.Linear(7 * 7 * 8, 16), dense_w(p["fc1"])), tnn.ReLU(),
        load(tnn.Linear(16, 10), dense_w(p["fc2"])))
    _compare_with_twin(torch, flax_model, {"params": p}, twin, x, y)

    # CNN-4C3F, small widths, eval mode (dropout off in both).
    flax_model = models.CNN4C3F(widths=(4, 8), fc_widths=(16, 16))
    p = _variables(flax_model, (28, 28, 1))["params"]
    twin = tnn.Sequential(
        load(tnn.Conv2d(1, 4, 3), conv_w(p["conv1"])), tnn.ReLU(),
        load(tnn.Conv2d(4, 4, 3), conv_w(p["conv2"])), tnn.ReLU(), tnn.MaxPool2d(2),
        load(tnn.Conv2d(4, 8, 3), conv_w(p["conv3"])), tnn.ReLU(),
        load(tnn.Conv2d(8, 8, 3), conv_w(p["conv4"])), tnn.ReLU(), tnn.MaxPool2d(2),
        _Permute(torch), tnn.Flatten(),
        load(tnn.Linear(4 * 4 * 8, 16), dense_w(p["fc1"])), tnn.ReLU(), tnn.Dropout(0.5),
        load(tnn.Linear(16, 16), dense_w(p["fc2"])), tnn.ReLU(),
        load(tnn.Linear(16, 10), dense_w(p["fc3"])))
    _compare_with_twin(torch, flax_model, {"params": p}, twin, x, y)


def _Permute(torch):
    class Permute(torch.nn.Module):
        def forward(self, t):  # NCHW -> NHWC
            return t.permute(0, 2, 3, 1)

    return Permute()


def _compare_with_twin(torch, flax_model, variables, twin, x, y):
    twin.eval()
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    logits_t = twin(xt)
    torch.nn.functional.cross_entropy(logits_t, torch.tensor(y), reduction="sum").backward()

    def loss(v):
        logits = flax_model.apply(variables, v)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y]), logits

    grad, logits = jax.jit(jax.grad(loss, has_aux=True))(jnp.asarray(x))
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-6)


def test_explicit_grad_conv_inside_fori_loop_matches_xla():
    """Inside lax.fori_loop (where the speed-up matters) the iterates are the same."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 2))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 3))

    def run(conv):
        g = jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, w, "SAME"))))
        return jax.jit(lambda z: jax.lax.fori_loop(0, 3, lambda i, a: a + 0.1 * jnp.sign(g(a)), z))(x)

    np.testing.assert_allclose(run(layers._conv_explicit_grad), run(layers._conv_xla), atol=1e-6)


def test_daa_release_cnn_follows_the_release():
    """DAA's released Fashion-MNIST model: kernels truncated normal (stddev 0.1, cut at 2 sd),
    biases 0.1, and `tf.layers.batch_normalization` in inference mode = gamma h / sqrt(1.001) + beta
    on the ReLU of fc1 (its moving statistics never leave mean 0 / variance 1)."""
    model = models.get_model("daa_release_cnn")
    variables = models.init_variables(model, KEY, (28, 28, 1))
    params = variables["params"]
    assert set(variables) == {"params"}  # no batch_stats: the batch norm never uses batch statistics
    fc1 = np.asarray(params["fc1"]["kernel"])
    assert np.abs(fc1).max() <= 0.2 + 1e-6 and 0.08 < fc1.std() < 0.095  # truncated N(0, 0.1)
    for layer in ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2"):
        np.testing.assert_array_equal(np.asarray(params[layer]["bias"]), np.float32(0.1))
    # The batch norm is the documented affine map: perturb gamma and beta and compare.
    params = jax.tree_util.tree_map(lambda a: a, params)
    params["bn"] = {"scale": jnp.linspace(0.5, 2.0, 1024), "bias": jnp.linspace(-1.0, 1.0, 1024)}
    x = jax.random.uniform(KEY, (3, 28, 28, 1))
    logits, feats = model.apply({"params": params}, x, return_features=True)
    h = jax.nn.relu(feats @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    h = params["bn"]["scale"] * h / np.sqrt(1.001) + params["bn"]["bias"]
    expected = h @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-4, atol=1e-4)
    flax_init = models.init_variables(models.get_model("daa_release_cnn", initializer="flax"), KEY,
                                      (28, 28, 1))["params"]
    np.testing.assert_array_equal(np.asarray(flax_init["fc1"]["bias"]), 0.0)
    with pytest.raises(ValueError, match="initializer"):
        models.init_variables(models.get_model("daa_release_cnn", initializer="tf"), KEY, (28, 28, 1))
