"""APGD's runs after the first attack only the examples not fooled yet (AutoAttack's practice), in
chunks on CPU: the results equal whole-batch runs exactly, and the work shrinks."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, models

apgd_lib = importlib.import_module("advjax.attacks.apgd")
targets_lib = importlib.import_module("advjax.attacks.targets")


@pytest.fixture(scope="module")
def small_cnn():
    model = models.get_model("cnn4c3f", widths=(4, 8), fc_widths=(16,))
    variables = models.init_variables(model, jax.random.PRNGKey(3), (16, 16, 1))
    x = jax.random.uniform(jax.random.PRNGKey(0), (40, 16, 16, 1))
    y = jnp.argmax(model.apply(variables, x), -1)  # clean-correct, so the attacks have work to do
    return model, variables, x, y


def _counting_logits_fn(model, variables, log):
    """The model's logits, logging each evaluated batch size (the attack's work) from inside jit."""
    def logits_fn(z):
        jax.debug.callback(lambda n: log.append(int(n)), z.shape[0])
        return model.apply(variables, z)
    return logits_fn


@pytest.mark.parametrize("targeted", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["ranked_targets", "given_targets"])
def test_active_set_runs_equal_whole_batch_runs(monkeypatch, small_cnn, targeted):
    """APGD-T over 2 ranked targets x 2 restarts, and targeted APGD-T towards given classes over 3
    restarts (success: the target is predicted); `apgd` restarts take the same path, `_runs`."""
    model, variables, x, y = small_cnn
    if targeted:
        goal = targets_lib.ranked_targets(model.apply(variables, x), y, 1)[:, 0]
        kw, n_runs, clean = dict(restarts=3, targets=goal), 3, 0
    else:
        kw, n_runs, clean = dict(num_target_classes=2, restarts=2), 4, len(y)  # ranks targets once
    steps = 8

    def run(chunked):
        monkeypatch.setattr(apgd_lib, "MIN_CHUNK", 4)
        if not chunked:
            monkeypatch.setattr(apgd_lib, "_chunk_size", lambda n, norm: n)
        log = []
        f = _counting_logits_fn(model, variables, log)
        x_adv = jax.jit(lambda x, y: attacks.apgd_t(f, x, y, key=jax.random.PRNGKey(1), eps=0.01,
                                                    steps=steps, **kw))(x, y)
        x_adv.block_until_ready()
        jax.effects_barrier()
        monkeypatch.undo()
        return np.asarray(x_adv), sum(log)

    whole, work_whole = run(chunked=False)
    chunked, work_chunked = run(chunked=True)
    pred = np.asarray(jnp.argmax(model.apply(variables, whole), -1))
    fooled = (pred == np.asarray(goal)) if targeted else (pred != np.asarray(y))
    assert 0.2 < fooled.mean() < 1  # some examples are fooled by an early run, some never
    assert work_whole == n_runs * (steps + 1) * len(y) + clean
    assert work_chunked < 0.9 * work_whole  # fooled examples were not attacked again
    np.testing.assert_array_equal(chunked, whole)


def test_keep_prefers_the_first_success():
    """Per example: an earlier success stays (even if a later run succeeds with a higher loss), a
    new success replaces a failure, and between failures the higher loss wins."""
    x = jnp.arange(4.0)[:, None]
    best = (x, jnp.array([1.0, 1.0, 1.0, -jnp.inf]), jnp.array([True, False, False, False]))
    new = (x + 10, jnp.array([5.0, 0.0, 2.0, 0.5]), jnp.array([True, True, False, False]))
    kx, kf, ks = apgd_lib._keep(best, new)
    np.testing.assert_array_equal(kx[:, 0], [0.0, 11.0, 12.0, 13.0])
    np.testing.assert_array_equal(kf, [1.0, 0.0, 2.0, 0.5])
    np.testing.assert_array_equal(ks, [True, True, False, False])
