"""robust_accuracy and attack specs: counts against hand-computed ones, A_rob as the per-example worst
case, batching/padding invariance, and spec validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, evaluate
from conftest import linear_logits


def first_three_logits(x):
    """Logits are the first three features: predictions are easy to set by hand."""
    return x.reshape(x.shape[0], -1)[:, :3]


def forcing_attack(cls):
    """An 'attack' that makes the model predict `cls` on every example it is given."""

    def attack(logits_fn, x, y, *, key):
        del logits_fn, y, key
        flat = x.reshape(x.shape[0], -1)
        flat = flat.at[:, :3].set(0.0).at[:, cls].set(1.0)
        return flat.reshape(x.shape)

    return attack


def identity_attack(logits_fn, x, y, *, key):
    return x


@pytest.fixture(scope="module")
def toy_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (23, 5)).astype(np.float32)
    y = rng.integers(0, 3, 23).astype(np.int32)
    return x, y


def test_counts_and_a_rob_against_hand_computed_values(toy_data):
    x, y = toy_data
    clean_pred = np.argmax(x[:, :3], axis=1)
    atks = {"to0": forcing_attack(0), "to1": forcing_attack(1), "none": identity_attack}
    res = evaluate.robust_accuracy(first_three_logits, (x, y), atks, key=jax.random.PRNGKey(0),
                                   batch_size=8)
    assert res.n == len(x)
    assert res.clean == pytest.approx(np.mean(clean_pred == y))
    assert res.attacks["to0"] == pytest.approx(np.mean(y == 0))
    assert res.attacks["to1"] == pytest.approx(np.mean(y == 1))
    assert res.attacks["none"] == pytest.approx(res.clean)
    np.testing.assert_array_equal(res.correct["to1"], y == 1)
    # A_rob: an example counts only if it is classified correctly under every attack, and on x
    # itself (x lies in every eps-ball). Here no example survives both forcing attacks.
    assert res.a_rob == 0.0
    res2 = evaluate.robust_accuracy(first_three_logits, (x, y),
                                    {"to1": atks["to1"], "none": identity_attack},
                                    key=jax.random.PRNGKey(0), batch_size=8)
    assert res2.a_rob == pytest.approx(np.mean((y == 1) & (clean_pred == y)))


def test_a_rob_is_the_per_example_minimum_and_never_exceeds_clean_accuracy(toy_data):
    x, y = toy_data
    # "to2" makes some clean mistakes correct (y == 2): the worst case must still count them wrong.
    assert np.any((y == 2) & (np.argmax(x[:, :3], axis=1) != 2))
    atks = {"to2": forcing_attack(2), "to2_again": forcing_attack(2)}
    res = evaluate.robust_accuracy(first_three_logits, (x, y), atks, key=jax.random.PRNGKey(0),
                                   batch_size=10)
    per_example = np.min(np.stack([res.correct[k] for k in ("clean", "to2", "to2_again")]), axis=0)
    assert res.a_rob == pytest.approx(per_example.mean())
    assert res.a_rob <= min(res.clean, *res.attacks.values())


def test_padding_of_the_last_batch_does_not_change_counts(digits_mlp):
    f, x, y = digits_mlp
    x, y = np.asarray(x[:50]), np.asarray(y[:50])
    specs = [{"name": "fgsm", "eps": 0.1},
             {"name": "multitargeted_pgd", "eps": 0.1, "step_size": 0.025, "steps": 3,
              "random_start": False, "num_targets": 2, "label": "mt"}]
    results = [evaluate.robust_accuracy(f, (x, y), specs, key=jax.random.PRNGKey(0), batch_size=b)
               for b in (25, 16, 64)]  # divides; leaves 2 (padded to 16); one padded batch
    ref = results[0]
    assert 0 < ref.attacks["fgsm"] < ref.clean, "the attacks should flip some predictions"
    for res in results[1:]:
        assert res.n == 50
        for k in ref.correct:
            np.testing.assert_array_equal(res.correct[k], ref.correct[k], err_msg=k)
        assert res.a_rob == ref.a_rob
    # The counts are those of the attacks applied directly to the whole set.
    direct = np.argmax(f(attacks.fgsm(f, jnp.asarray(x), jnp.asarray(y), eps=0.1)), -1)
    np.testing.assert_array_equal(ref.correct["fgsm"], np.asarray(direct) == y)


def test_iterable_of_batches_and_limit(toy_data):
    x, y = toy_data
    batches = [{"image": x[i:i + 6], "label": y[i:i + 6]} for i in range(0, len(x), 6)]
    atks = {"to1": forcing_attack(1)}
    res = evaluate.robust_accuracy(first_three_logits, batches, atks, key=jax.random.PRNGKey(0),
                                   batch_size=6)
    assert res.n == len(x)
    assert res.attacks["to1"] == pytest.approx(np.mean(y == 1))
    res = evaluate.robust_accuracy(first_three_logits, (x, y), atks, key=jax.random.PRNGKey(0),
                                   batch_size=6, limit=10)
    assert res.n == 10
    np.testing.assert_array_equal(res.correct["to1"], y[:10] == 1)


def test_random_attacks_get_distinct_keys_per_batch():
    """Batches must not reuse one key: the seen keys differ across batches and attacks."""
    seen = []

    def recording(name):
        def attack(logits_fn, x, y, *, key):
            jax.debug.callback(lambda k: seen.append((name, tuple(np.asarray(k).ravel()))), key)
            return x
        return attack

    x = np.zeros((8, 3), np.float32)
    y = np.zeros(8, np.int32)
    evaluate.robust_accuracy(first_three_logits, (x, y), {"a": recording("a"), "b": recording("b")},
                             key=jax.random.PRNGKey(0), batch_size=4)
    assert len(seen) == 4
    assert len({k for _, k in seen}) == 4


def test_bad_data_is_rejected(toy_data):
    x, y = toy_data
    atks = {"none": identity_attack}
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"\bx\b.*non-finite"):
        evaluate.robust_accuracy(first_three_logits, (np.where(x > 0.9, np.nan, x), y), atks, key=key)
    with pytest.raises(ValueError, match=r"\by\b"):
        evaluate.robust_accuracy(first_three_logits, (x, y + 3), atks, key=key)
    with pytest.raises(ValueError, match="labels"):
        evaluate.robust_accuracy(first_three_logits, (x, y[:-1]), atks, key=key)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.robust_accuracy(first_three_logits, (x, y), atks, key=key, batch_size=0)
    with pytest.raises(ValueError, match="no examples"):
        evaluate.robust_accuracy(first_three_logits, (x[:0], y[:0]), atks, key=key)


def test_attack_from_spec():
    label, fn = evaluate.attack_from_spec({"name": "pgd", "eps": 0.1, "steps": 3, "step_size": 0.05})
    assert label == "pgd"
    assert isinstance(fn, functools.partial) and fn.func is attacks.pgd
    assert fn.keywords == {"eps": 0.1, "steps": 3, "step_size": 0.05}
    label, _ = evaluate.attack_from_spec({"name": "fgsm", "eps": 0.1, "label": "FGSM 0.1"})
    assert label == "FGSM 0.1"


@pytest.mark.parametrize("spec,match", [
    ({"name": "pgd", "eps": 0.1, "stepsize": 0.01}, "stepsize"),
    ({"name": "fgsm", "eps": 0.1, "norm": "l2"}, "norm"),   # fgsm is linf only
    ({"name": "apgd", "eps": 0.1, "key": 3}, "key"),         # the key comes from robust_accuracy
    ({"name": "nope", "eps": 0.1}, "unknown attack"),
    ({"eps": 0.1}, "name"),
])
def test_attack_from_spec_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        evaluate.attack_from_spec(spec)


def test_accuracy_vs_eps_on_a_linear_model():
    """FGSM is the exact worst case for a binary linear model, so accuracy cannot increase with eps,
    and eps = 0 gives the clean accuracy."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8,)).astype(np.float32)
    f = linear_logits(jnp.stack([jnp.zeros(8), jnp.asarray(w)], axis=1), jnp.array([2.0, 0.0]))
    x = rng.uniform(0, 1, (40, 8)).astype(np.float32)
    y = (x @ w > 2.0).astype(np.int32)
    accs = evaluate.accuracy_vs_eps(f, x, y, {"name": "fgsm", "eps": 0.1}, [0.0, 0.05, 0.1, 0.2, 0.4],
                                    key=jax.random.PRNGKey(0), batch_size=16)
    assert accs[0] == 1.0
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < 1.0
