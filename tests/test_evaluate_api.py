"""robust_accuracy for people who bring their own model (issue 17, items 2, 3, 4, 7): eps sweeps in
one call and one compilation per attack, adversarial examples kept, saved and reloaded bit-identical,
targeted success rates, evaluation sharded over every local device, and the progress bar."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, evaluate
from conftest import init_mlp, mlp_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = [0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def model():
    """A 3-class MLP on 12 features and 21 inputs labelled by the model (clean accuracy 1)."""
    params = init_mlp(jax.random.PRNGKey(0), 12, 16, 3, scale=3.0)
    f = mlp_logits(params)
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (21, 12)))
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
    return params, f, x, y


def counting(fn, traces, name):
    """`fn` with a Python side effect at trace time: traces[name] counts its traces (compilations
    of the jitted evaluation program; a retrace for a new eps would add one)."""

    def attack(logits_fn, x, y, *, key, **kw):
        traces[name] = traces.get(name, 0) + 1
        return fn(logits_fn, x, y, key=key, **kw)

    return attack


def test_eps_sweep_compiles_each_attack_once_and_equals_single_eps_calls(model):
    _, f, x, y = model
    traces = {}
    atks = {"pgd": functools.partial(counting(attacks.pgd, traces, "pgd"), eps=0.1, step_size=0.025,
                                     steps=5),
            "apgd": functools.partial(counting(attacks.apgd, traces, "apgd"), eps=0.1, steps=5)}
    key = jax.random.PRNGKey(3)
    sweep = evaluate.robust_accuracy(f, (x, y), atks, key=key, batch_size=8, eps=EPS,
                                     return_examples=True)
    # Three batches (the last one padded) and three eps values: one trace per attack.
    assert traces == {"pgd": 1, "apgd": 1}
    assert isinstance(sweep, evaluate.EpsSweep) and sweep.eps == EPS and len(sweep) == 3
    curve = sweep.curve("pgd")
    assert curve[0] >= curve[-1] and curve[-1] < 1.0, curve   # the sweep is not flat
    # Equal to a call at one eps (the middle one; PGD keeps its position, so its keys are the same).
    single = evaluate.robust_accuracy(f, (x, y), {"pgd": atks["pgd"]}, key=key, batch_size=8,
                                      eps=EPS[1], return_examples=True)
    assert single.attacks["pgd"] == sweep[1].attacks["pgd"]
    np.testing.assert_array_equal(single.correct["pgd"], sweep[1].correct["pgd"])
    np.testing.assert_array_equal(single.examples.x_adv["pgd"], sweep[1].examples.x_adv["pgd"])
    assert [r.eps for r in sweep] == [{"pgd": e, "apgd": e} for e in EPS]
    # The sweep runs the attack it was given: PGD at 0.2 with the step scaled to 0.05, from the
    # keys robust_accuracy documents (batch b, attack j: fold_in(fold_in(key, b), j)).
    xa = sweep[2].examples.x_adv["pgd"]
    kb = jax.random.fold_in(jax.random.fold_in(key, 2), 0)        # the last (padded) batch
    ref = attacks.pgd(f, jnp.asarray(x[16:]), jnp.asarray(y[16:]), key=kb, eps=0.2, step_size=0.05,
                      steps=5)
    np.testing.assert_allclose(xa[16:], ref, atol=1e-6)
    assert sweep[2].examples.specs["pgd"]["step_size"] == pytest.approx(0.05)
    assert np.max(np.abs(xa - x)) <= 0.2 + 1e-6 and np.max(np.abs(xa - x)) > 0.1


def test_traced_eps_keeps_the_input_dtype(model):
    """eps is passed weakly typed, like the Python float it replaces, so arithmetic with it keeps
    the inputs' dtype (a strongly typed float32 eps would turn bfloat16 inputs into float32)."""
    _, f, x, y = model

    def zero_step(logits_fn, x, y, *, key, eps):
        return x + 0 * eps

    g = lambda z: f(z.astype(jnp.float32))
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16))
    res = evaluate.robust_accuracy(g, (xb, y), {"z": zero_step}, eps=[0.1, 0.2],
                                   key=jax.random.PRNGKey(0), batch_size=21, return_examples=True)
    assert res[1].examples.x_adv["z"].dtype == jnp.bfloat16


def test_accuracy_vs_eps_takes_a_callable_and_a_spec(model):
    _, f, x, y = model
    traces = {}
    attack = functools.partial(counting(attacks.pgd, traces, "pgd"), eps=0.1, step_size=0.025,
                               steps=5)
    key = jax.random.PRNGKey(4)
    accs = evaluate.accuracy_vs_eps(f, x, y, attack, EPS, key=key, batch_size=8)
    assert traces == {"pgd": 1}
    spec = {"name": "pgd", "eps": 0.1, "step_size": 0.025, "steps": 5}
    assert evaluate.accuracy_vs_eps(f, x, y, spec, EPS, key=key, batch_size=8) == accs
    with pytest.raises(ValueError, match="takes no eps"):
        evaluate.accuracy_vs_eps(f, x, y, lambda logits_fn, x, y, *, key: x, EPS, key=key)


def test_attacks_that_need_a_concrete_eps_compile_once_per_eps(model):
    """An attack with Python control flow on eps cannot take it traced: it is compiled per eps,
    with the same numbers, and a genuine error still surfaces."""
    _, f, x, y = model
    traces = {}

    def concrete_pgd(logits_fn, x, y, *, key, eps):
        steps = 2 if float(eps) < 0.1 else 4    # needs a concrete eps
        return attacks.pgd(logits_fn, x, y, key=key, eps=eps, step_size=eps / 2, steps=steps)

    atk = {"c": counting(concrete_pgd, traces, "c")}
    sweep = evaluate.robust_accuracy(f, (x, y), atk, key=jax.random.PRNGKey(5), batch_size=8,
                                     eps=EPS[:2])
    assert traces["c"] == 1 + 2                    # the failed traced attempt, then one per eps
    single = evaluate.robust_accuracy(f, (x, y), atk, key=jax.random.PRNGKey(5), batch_size=8,
                                      eps=0.05)
    assert single.attacks == sweep[0].attacks
    with pytest.raises(ValueError, match="eps"):
        evaluate.robust_accuracy(f, (x, y), atk, key=jax.random.PRNGKey(5), eps=[0.1, -1.0])


def test_examples_save_and_load_bit_identical(model, tmp_path):
    params, f, x, y = model
    key = jax.random.PRNGKey(6)
    res = evaluate.robust_accuracy(
        f, (x, y), [{"name": "pgd", "eps": 0.2, "step_size": 0.05, "steps": 5},
                    {"name": "fgsm", "eps": 0.1, "label": "FGSM"}],
        key=key, batch_size=8, return_examples=True)
    ex = res.examples
    assert ex.n == len(x) and set(ex.x_adv) == {"pgd", "FGSM"}
    for name in ex.x_adv:   # per-example success is misclassification at the stored x_adv
        pred = np.asarray(jnp.argmax(f(jnp.asarray(ex.x_adv[name])), -1))
        np.testing.assert_array_equal(ex.success[name], pred != y)
        np.testing.assert_array_equal(res.correct[name], pred == y)
    path = evaluate.save_examples(str(tmp_path / "adv"), res, params=params)
    back = evaluate.load_examples(path)
    for name in ex.x_adv:
        for a, b in ((ex.x_adv[name], back.x_adv[name]), (ex.success[name], back.success[name])):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert back.y.tobytes() == ex.y.tobytes() and back.y.dtype == ex.y.dtype
    np.testing.assert_array_equal(back.key_data, np.asarray(key))
    assert back.specs["pgd"] == {"name": "pgd", "eps": 0.2, "step_size": 0.05, "steps": 5}
    assert back.eps == {"pgd": 0.2, "FGSM": 0.1}
    assert back.model_hash == evaluate.model_hash(params) and len(back.model_hash) == 64
    changed = dict(params, b2=params["b2"].at[0].add(1e-7))
    assert evaluate.model_hash(changed) != back.model_hash
    # A sweep's examples: one column per attack and eps.
    sweep = evaluate.robust_accuracy(f, (x, y), {"fgsm": functools.partial(attacks.fgsm, eps=0.1)},
                                     key=key, batch_size=8, eps=[0.1, 0.3], return_examples=True)
    back = evaluate.load_examples(evaluate.save_examples(str(tmp_path / "sweep.npz"), sweep))
    assert set(back.x_adv) == {"fgsm@0.1", "fgsm@0.3"} and back.model_hash is None
    assert back.eps == {"fgsm@0.1": 0.1, "fgsm@0.3": 0.3}
    with pytest.raises(ValueError, match="return_examples"):
        evaluate.save_examples(str(tmp_path / "none"), evaluate.robust_accuracy(
            f, (x, y), {"fgsm": functools.partial(attacks.fgsm, eps=0.1)}, key=key))


def next_class_targeted(attack):
    """A targeted mode with the interface of `advjax.attacks.targeted`: targets (y + 1) mod 3,
    exposed as `.targets(logits_fn, x, y, key)`."""

    def targets(logits_fn, x, y, key=None):
        return ((y + 1) % 3).astype(jnp.int32)

    def run(logits_fn, x, y, *, key=None, **kw):
        return attack(logits_fn, x, targets(logits_fn, x, y, key), key=key, targeted=True, **kw)

    run.targets = targets
    return run


def test_targeted_success_rate(model):
    _, f, x, y = model
    atks = {"t": functools.partial(next_class_targeted(attacks.pgd), eps=0.3, step_size=0.05,
                                   steps=10),
            "u": functools.partial(attacks.fgsm, eps=0.3)}
    res = evaluate.robust_accuracy(f, (x, y), atks, key=jax.random.PRNGKey(7), batch_size=8,
                                   targeted=True, return_examples=True)
    t = (y + 1) % 3
    pred = np.asarray(jnp.argmax(f(jnp.asarray(res.examples.x_adv["t"])), -1))
    assert res.targeted["t"] == pytest.approx(np.mean(pred == t)) and 0 < res.targeted["t"]
    assert set(res.targeted) == {"t"} and res.as_dict()["targeted/t"] == res.targeted["t"]
    np.testing.assert_array_equal(res.examples.targets["t"], t)
    np.testing.assert_array_equal(res.examples.success["t"], pred == t)
    assert "targeted success" in res.markdown()
    with pytest.raises(ValueError, match="target rule"):
        evaluate.robust_accuracy(f, (x, y), {"u": atks["u"]}, key=jax.random.PRNGKey(7),
                                 targeted=True)


def test_targeted_success_with_advjax_targeted(model):
    """`advjax.attacks.targeted` with random targets: the success rate is scored against the
    targets the attack drew from its key (recomputed here from the stored examples)."""
    if not hasattr(attacks, "targeted"):
        pytest.skip("advjax.attacks.targeted is not on this branch")
    _, f, x, y = model
    atk = attacks.targeted(attacks.pgd, attacks.targets.random())
    res = evaluate.robust_accuracy(
        f, (x, y), {"pgd_t": functools.partial(atk, eps=0.3, step_size=0.05, steps=10)},
        key=jax.random.PRNGKey(8), batch_size=8, targeted=True, return_examples=True)
    ex = res.examples
    pred = np.asarray(jnp.argmax(f(jnp.asarray(ex.x_adv["pgd_t"])), -1))
    assert res.targeted["pgd_t"] == pytest.approx(np.mean(pred == ex.targets["pgd_t"]))
    assert np.all(ex.targets["pgd_t"] != y) and res.targeted["pgd_t"] > 0.5
    # The targets are the ones the attack used: batch b's key, split as `targeted` splits it.
    for b in range(3):
        kb = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(8), b), 0)
        rows = slice(8 * b, min(8 * b + 8, len(x)))
        xb, yb = evaluate._pad(x[rows], 8), evaluate._pad(y[rows], 8)   # as robust_accuracy pads
        t = np.asarray(atk.targets(f, jnp.asarray(xb), jnp.asarray(yb), kb))
        np.testing.assert_array_equal(ex.targets["pgd_t"][rows], t[:len(x[rows])])
    # The same attack from a config spec ("target": a rule of advjax.attacks.targets).
    spec = {"name": "pgd", "label": "pgd_t", "eps": 0.3, "step_size": 0.05, "steps": 10,
            "target": "random"}
    res2 = evaluate.robust_accuracy(f, (x, y), [spec], key=jax.random.PRNGKey(8), batch_size=8,
                                    targeted=True)
    assert res2.targeted == res.targeted and res2.attacks == res.attacks
    _, most = evaluate.attack_from_spec(dict(spec, target={"rule": "most_likely", "k": 2}))
    np.testing.assert_array_equal(
        most.func.targets(f, jnp.asarray(x), jnp.asarray(y), None),
        attacks.targets.most_likely(2)(f, jnp.asarray(x), jnp.asarray(y), None))
    with pytest.raises(ValueError, match="must name a rule"):
        evaluate.attack_from_spec(dict(spec, target="nearest"))
    with pytest.raises(ValueError, match="bad arguments"):
        evaluate.attack_from_spec(dict(spec, target={"rule": "most_likely", "j": 1}))
    with pytest.raises(ValueError, match="targeted"):   # set by the targeted mode
        evaluate.attack_from_spec(dict(spec, targeted=True))


def test_progress_bar_shows_images_per_second_and_accuracies(model, capsys):
    _, f, x, y = model
    evaluate.robust_accuracy(f, (x, y), {"fgsm": functools.partial(attacks.fgsm, eps=0.1)},
                             key=jax.random.PRNGKey(0), batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "img/s" in err and "clean=" in err and "fgsm=" in err, err
    evaluate.robust_accuracy(f, (x, y), {"fgsm": functools.partial(attacks.fgsm, eps=0.1)},
                             key=jax.random.PRNGKey(0), batch_size=8)
    assert capsys.readouterr().err == ""


def test_two_devices_equal_one_device():
    """Batches split over 2 forced CPU devices (padded to a multiple of 2) give the 1-device result:
    accuracies, per-example results and adversarial examples, for a sweep of per-example attacks
    with random starts and a batch-level one (DAA, which sees the valid-row mask)."""
    code = """
        import functools, jax, jax.numpy as jnp, numpy as np
        from advjax import attacks, evaluate
        from conftest import init_mlp, mlp_logits
        assert jax.local_device_count() == 2
        f = mlp_logits(init_mlp(jax.random.PRNGKey(0), 12, 16, 3, scale=3.0))
        x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (13, 12)))
        y = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)).astype(np.int32)
        seen = []   # the devices of the attack's input, recorded at compile time

        def pgd(logits_fn, x, y, **kw):
            jax.debug.inspect_array_sharding(x, callback=lambda s: seen.append(len(s.device_set)))
            return attacks.pgd(logits_fn, x, y, **kw)

        atks = {"pgd": functools.partial(pgd, eps=0.1, step_size=0.025, steps=5),
                "daa": functools.partial(attacks.daa_blob, eps=0.1, step_size=0.025, steps=3, c=1.5)}
        run = lambda devices: evaluate.robust_accuracy(
            f, (x, y), atks, key=jax.random.PRNGKey(2), batch_size=5, eps=[0.05, 0.2],
            return_examples=True, devices=devices)
        one = run(jax.local_devices()[:1])
        assert seen == [1], seen
        two = run(None)
        assert seen == [1, 2], seen
        for a, b in zip(one, two):
            assert a.attacks == b.attacks and a.a_rob == b.a_rob, (a.attacks, b.attacks)
            for k in a.correct:
                np.testing.assert_array_equal(a.correct[k], b.correct[k])
            for k in a.examples.x_adv:
                np.testing.assert_array_equal(a.examples.x_adv[k], b.examples.x_adv[k])
        print("ok", one.curve("pgd"), one.curve("daa"))
        """
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(
        ROOT, "tests")]), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-4000:]
