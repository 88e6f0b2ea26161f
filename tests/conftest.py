"""Shared test setup: JAX on CPU, the `slow`/`peers` markers, tiny models for the attack tests, and
the config file of a seconds-long training run (`write_small_config`) for the workdir tests.

The models are deliberately small (linear maps and a two-layer MLP on a handful of features) so that
property-based tests over shapes, radii and norms stay fast; the closed-form tests use the linear
models, whose loss gradients are known exactly.
"""

from __future__ import annotations

import os

# Before JAX is imported anywhere: CPU only, and no pre-allocation games on shared machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    # Also declared in pytest.ini; repeated here so the markers exist if the file is run from elsewhere.
    config.addinivalue_line("markers", "slow: long-running checks, excluded by default (-m slow)")
    config.addinivalue_line("markers", "peers: cross-checks against torchattacks / foolbox")


# ------------------------------------------------------------------------------------------------
# Compilation
# ------------------------------------------------------------------------------------------------

# The tests run many small programs once each, so XLA's compile time dominates their run time; its
# backend optimizations are not worth it for them (about half the compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **kwargs):
    """jax.jit with cheap compilation, for small test programs that run once or a few times."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


# ------------------------------------------------------------------------------------------------
# Tiny logits functions
# ------------------------------------------------------------------------------------------------

def linear_logits(w: jax.Array, b: jax.Array | None = None):
    """logits = flatten(x) @ w + b: every loss gradient is a closed form in w."""

    def f(x):
        z = x.reshape(x.shape[0], -1) @ w
        return z if b is None else z + b

    return f


def init_mlp(key, d_in: int, hidden: int, classes: int, scale: float = 1.0):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "w1": scale * jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
        "b1": 0.1 * jax.random.normal(k2, (hidden,)),
        "w2": scale * jax.random.normal(k3, (hidden, classes)) / np.sqrt(hidden),
        "b2": 0.1 * jax.random.normal(k4, (classes,)),
    }


def mlp_apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def mlp_logits(params):
    return lambda x: mlp_apply(params, x)


def random_batch(key, shape, classes: int, lo: float = 0.0, hi: float = 1.0):
    """Inputs uniform in [lo, hi] and labels uniform in [0, classes)."""
    kx, ky = jax.random.split(key)
    x = jax.random.uniform(kx, shape, jnp.float32, lo, hi)
    y = jax.random.randint(ky, (shape[0],), 0, classes)
    return x, y


def per_example_norm(delta, norm: str) -> np.ndarray:
    """Reference l_p norms in NumPy (float64), independent of advjax.threat."""
    flat = np.asarray(delta, np.float64).reshape(np.shape(delta)[0], -1)
    if norm == "linf":
        return np.max(np.abs(flat), axis=1)
    if norm == "l2":
        return np.sqrt(np.sum(flat ** 2, axis=1))
    return np.sum(np.abs(flat), axis=1)


def assert_in_threat_model(x_adv, x, eps, norm, rtol: float = 1e-5, atol: float = 1e-6):
    """x_adv inside B_p(x, eps) (relative tolerance for float32 rounding) and inside [0, 1]."""
    x_adv = np.asarray(x_adv, np.float64)
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x_adv)), "non-finite adversarial example"
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, (
        f"outside the [0, 1] box: [{x_adv.min()}, {x_adv.max()}]")
    n = per_example_norm(x_adv - x, norm)
    bound = eps * (1 + rtol) + atol
    assert np.all(n <= bound), f"{norm} norms {n.max()} exceed eps={eps}"


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_mlp():
    """A random (untrained) 12 -> 16 -> 5 MLP; enough to exercise every attack's code path."""
    params = init_mlp(jax.random.PRNGKey(0), 12, 16, 5, scale=3.0)
    return mlp_logits(params)


@pytest.fixture(scope="session")
def digits_mlp():
    """An MLP trained for a few seconds on sklearn's 8x8 digits (bundled, no download).

    Returns (logits_fn, x_test, y_test) with x in [0, 1], shape (n, 64); test accuracy is ~95%.
    """
    import optax
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    x_tr, y_tr, x_te, y_te = x[:1400], y[:1400], x[1400:], y[1400:]

    params = init_mlp(jax.random.PRNGKey(1), 64, 64, 10)
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, xb), yb).mean()
        g = jax.grad(loss)(params)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(1)
    for _ in range(600):
        idx = rng.integers(0, len(x_tr), 128)
        params, opt_state = step(params, opt_state, x_tr[idx], y_tr[idx])
    f = jax.jit(mlp_logits(params))
    acc = float(np.mean(np.argmax(f(x_te), -1) == y_te))
    assert acc > 0.9, f"digits MLP failed to train (test accuracy {acc:.3f})"
    return f, jnp.asarray(x_te), jnp.asarray(y_te)


# ------------------------------------------------------------------------------------------------
# A seconds-long training run (tests/test_faults.py, tests/test_multi_seed.py)
# ------------------------------------------------------------------------------------------------

# Standard training of a small MLP on 256 digits, 4 steps per epoch, a row and a checkpoint every 2
# steps, constant learning rate (so train.epochs only sets the end).
SMALL_CONFIG = """
from advjax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "digits"
    c.data.train_limit = 256
    c.model.name = "mlp"
    c.model.hidden = (16,)
    c.objective.name = "standard"
    c.optim.lr = 0.05
    c.train.epochs = {epochs}
    c.train.batch_size = 64
    c.train.log_every = 2
    c.train.checkpoint_every_steps = 2
    c.train.progress = False
    c.eval.limit = 64
    c.eval.batch_size = 64
    c.eval.attacks = []
    {extra}
    return c
"""


def write_small_config(path, *, epochs: int = 3, extra: str = "") -> str:
    """Writes the small run's config file to `path` (`extra`: more statements on `c`, one line, or
    several joined by newline + 4 spaces); returns the path as a str."""
    path = str(path)
    with open(path, "w") as f:
        f.write(SMALL_CONFIG.format(epochs=epochs, extra=extra))
    return path
