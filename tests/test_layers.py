"""The fast layer implementations of `advjax.models.layers`: every `Conv` impl gives XLA's values and
derivatives (reverse and forward mode, vmap, second order), "auto" picks XLA's own convolution off
CPU, and PGD adversarial training of CNN-4C3F follows the same trajectory with the fast layers as
with plain Flax layers."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import models, objectives
from advjax.models import layers

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("impl,kernel,padding,c_in,crop", [
    ("patches_grad", (3, 3), "VALID", 1, False),  # forward by multiply-adds (`_conv_thin`)
    ("patches_grad", (3, 3), "SAME", 3, False),
    ("patches_grad", (5, 5), "SAME", 1, False),  # XLA's forward convolution
    ("explicit_grad", (4, 3), "SAME", 6, False),  # even kernel: asymmetric SAME padding
    ("explicit_grad", (3, 3), "VALID", 6, False),
    ("explicit_grad", (4, 3), "VALID", 6, True),  # VALID as full padding and a crop
])
def test_conv_impls_match_xla(monkeypatch, impl, kernel, padding, c_in, crop):
    """Values, input and kernel gradients, per-example gradients under vmap, JVPs in both arguments
    and a Hessian-vector product agree with XLA's convolution. The batch (10) is larger than the
    kernel-gradient chunk (set to 4, so 3 chunks, the last one short). With `crop`, the thresholds
    of `_conv_forward` are lowered so that this small VALID convolution runs with full padding and a
    crop."""
    monkeypatch.setattr(layers, "KERNEL_GRAD_CHUNK", 4)
    if crop:
        monkeypatch.setattr(layers, "CROP_MIN_CHANNELS", 1)
        monkeypatch.setattr(layers, "CROP_MIN_SIZE", 1)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(10, 9, 8, c_in)), jnp.float32)
    t = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    variables = {"params": {"kernel": jnp.asarray(rng.normal(size=(*kernel, c_in, 5)), jnp.float32),
                            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}}
    t_params = jax.tree_util.tree_map(jnp.cos, variables)

    @functools.partial(jax.jit, static_argnums=0)
    def derivatives(impl, variables, x, t):
        conv = layers.Conv(5, kernel, padding=padding, impl=impl)
        y = conv.apply(variables, x)
        g = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)

        def loss(p, v):
            return jnp.sum(g[: v.shape[0]] * jnp.tanh(conv.apply(p, v)))

        return dict(
            y=y,
            grads=jax.grad(loss, argnums=(0, 1))(variables, x),
            per_example=jax.vmap(jax.grad(lambda v: loss(variables, v[None])))(x),
            jvp=jax.jvp(conv.apply, (variables, x), (t_params, t))[1],
            jvp_x=jax.jvp(lambda v: conv.apply(variables, v), (x,), (t,))[1],
            hvp=jax.grad(lambda v: jnp.vdot(jax.grad(loss, argnums=1)(variables, v), t))(x),
        )

    # The same parameters (names, shapes, dtypes), and up to rounding the same values everywhere.
    inits = [jax.eval_shape(layers.Conv(5, kernel, padding=padding, impl=i).init, KEY, x)
             for i in ("xla", impl)]
    assert inits[0] == inits[1] == jax.eval_shape(lambda: variables)
    ref = derivatives("xla", variables, x, t)
    got = derivatives(impl, variables, x, t)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                           got, ref)


def test_valid_conv_runs_padded_and_cropped_only_above_the_thresholds():
    """CNN-4C3F(32)'s 26x26x32 -> 32 VALID layer runs with full padding (2) and a crop on CPU, with
    the values of XLA's VALID convolution; a 16-channel or a 12x12 input keeps XLA's VALID
    convolution (there it is as fast or faster)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the crop is an XLA:CPU workaround")
    rng = np.random.default_rng(0)

    def paddings(x, k):
        jaxpr = jax.make_jaxpr(lambda a, b: layers._conv_forward(a, b, "VALID"))(x, k)
        return [e.params["padding"] for e in jaxpr.jaxpr.eqns
                if e.primitive.name == "conv_general_dilated"]

    x = jnp.asarray(rng.normal(size=(4, 26, 26, 32)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 32, 32)), jnp.float32)
    assert paddings(x, k) == [((2, 2), (2, 2))]
    np.testing.assert_allclose(layers._conv_forward(x, k, "VALID"),
                               layers._conv_xla(x, k, "VALID"), rtol=1e-5, atol=1e-4)
    assert paddings(x[..., :16], k[:, :, :16]) == [((0, 0), (0, 0))]
    assert paddings(x[:, :12, :12], k) == [((0, 0), (0, 0))]


def test_auto_is_xla_off_cpu_and_the_workarounds_on_cpu(monkeypatch):
    """On CPU "auto" takes the custom-derivative convolutions (patches for the thin first layer);
    with any other default backend (a monkeypatched backend name) XLA's plain convolution, so a GPU
    or TPU run traces no custom derivative at all."""
    assert jax.default_backend() == "cpu"
    assert layers.resolve_conv_impl("auto", 1) == "patches_grad"
    assert layers.resolve_conv_impl("auto", 16) == "explicit_grad"
    for backend in ("gpu", "tpu"):
        assert layers.resolve_conv_impl("auto", 1, backend=backend) == "xla"
    assert layers.resolve_conv_impl("explicit_grad", 1, backend="gpu") == "explicit_grad"
    with pytest.raises(ValueError, match="impl"):
        layers.resolve_conv_impl("fast", 1)

    model = models.get_model("cnn4c3f", widths=(8, 8), fc_widths=(16,))
    variables = models.init_variables(model, KEY, (16, 16, 1))
    x = jnp.zeros((2, 16, 16, 1))

    def custom_jvps_and_convs():
        text = str(jax.make_jaxpr(lambda v: model.apply(variables, v))(x))
        return (re.findall(r"custom_jvp_call\[\s*name=(\w+)", text),
                text.count("conv_general_dilated["))

    names, _ = custom_jvps_and_convs()
    # The 1-channel first layer by patches, the other three with explicit gradients.
    assert sorted(n for n in names if n.startswith("_conv")) == (
        ["_conv_explicit_grad"] * 3 + ["_conv_patches_grad"])
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.resolve_conv_impl("auto", 1) == "xla"
    names, n_convs = custom_jvps_and_convs()
    assert set(names) == {"relu"} and n_convs == 4


@pytest.mark.parametrize("name,fields", [
    ("cnn4c3f", dict(widths=(4, 8), fc_widths=(16,))),
    ("madry_cnn", dict(widths=(4, 8), fc_width=16)),
])
def test_forward_mode_through_default_models(name, fields):
    """jax.jvp and jax.jacfwd run through the default (CPU) layers and equal the plain-XLA model's."""
    fast = models.get_model(name, **fields)
    plain = models.get_model(name, **fields, first_conv_impl="xla", conv_impl="xla",
                             pool_impl="nn")
    variables = models.init_variables(fast, KEY, (16, 16, 1))
    x = jax.random.uniform(KEY, (3, 16, 16, 1))
    t = jax.random.normal(jax.random.PRNGKey(1), x.shape)

    @functools.partial(jax.jit, static_argnums=0)
    def forward_mode(model, x, t):
        f = lambda v: model.apply(variables, v)  # noqa: E731
        # The Jacobian of the first image's logits with respect to its top-left 3x3 patch.
        patch_to_logits = lambda v: f(x[:1].at[0, :3, :3].set(v))[0]  # noqa: E731
        return jax.jvp(f, (x,), (t,)), jax.jacfwd(patch_to_logits)(x[0, :3, :3])

    (y, dy), jac = forward_mode(fast, x, t)
    (y_ref, dy_ref), jac_ref = forward_mode(plain, x, t)
    scale = float(jnp.max(jnp.abs(dy_ref)))
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(jac, jac_ref, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(jac_ref))))


@pytest.mark.parametrize("crop", [False, True])
def test_pgd_at_training_matches_plain_layers(monkeypatch, crop):
    """Four PGD-AT steps (PGD-3 from a random start, SGD with momentum) of CNN-4C3F with the default
    fast layers and with plain Flax layers (XLA convolutions, nn.max_pool) from the same initial
    parameters on the same batches end at the same parameters, up to float rounding. Batch 40 > the
    kernel-gradient chunk, so the chunked kernel gradient is exercised. With `crop`, the thresholds
    of `layers._conv_forward` are lowered so that every VALID convolution after the first runs with
    full padding and a crop (as CNN-4C3F(32)'s 26x26x32 layer does at full size)."""
    if crop:
        monkeypatch.setattr(layers, "CROP_MIN_CHANNELS", 1)
        monkeypatch.setattr(layers, "CROP_MIN_SIZE", 1)
    fields = dict(widths=(8, 8), fc_widths=(16,), dropout_rate=0.0)
    fast = models.get_model("cnn4c3f", **fields)
    plain = models.get_model("cnn4c3f", **fields, first_conv_impl="xla", conv_impl="xla",
                             pool_impl="nn")
    params = models.init_variables(fast, KEY, (16, 16, 1))["params"]
    rng = np.random.default_rng(0)
    batches = {"image": jnp.asarray(rng.uniform(size=(4, 40, 16, 16, 1)), jnp.float32),
               "label": jnp.asarray(rng.integers(0, 10, (4, 40)), jnp.int32)}
    tx = optax.sgd(0.05, momentum=0.9)

    @functools.partial(jax.jit, static_argnums=0)
    def train(model, params):
        objective = objectives.make_objective("pgd_at", model.apply,
                                              dict(eps=0.1, step_size=0.03, steps=3))

        def step(carry, batch_and_key):
            params, opt_state = carry
            batch, key = batch_and_key
            grads = jax.grad(lambda p: objective(p, {"model": {}, "method": {}}, batch, key)[0])(
                params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        keys = jax.random.split(KEY, 4)
        return jax.lax.scan(step, (params, tx.init(params)), (batches, keys))[0][0]

    got, ref = train(fast, params), train(plain, params)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref, params)
    assert min(jax.tree_util.tree_leaves(moved)) > 1e-3  # training changed every parameter
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           got, ref)
