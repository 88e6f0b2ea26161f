"""experiments/daa_fmnist: the Table-3 study's evaluation machinery and the committed-weights loader
(issue 14, Part B), on tiny models so that they run in seconds."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, models
from conftest import init_mlp, mlp_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "experiments", "daa_fmnist")


def _module(name):
    for p in (STUDY, os.path.dirname(STUDY)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = importlib.util.spec_from_file_location(f"daa_study_{name}",
                                                  os.path.join(STUDY, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their annotations through it
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True, scope="module")
def _cheap_compilation():
    """These tests compile many small programs once each (the attacks run eagerly, as in the
    study); XLA's optimizations cost more than they save here (about half the time)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def run():
    return _module("run")


@pytest.fixture(scope="module")
def weights():
    return _module("weights")


def _tiny(n=13, seed=0):
    f = mlp_logits(init_mlp(jax.random.PRNGKey(seed), 16, 12, 10, scale=3.0))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed + 1), (n, 4, 4, 1)))
    y = np.asarray(jax.random.randint(jax.random.PRNGKey(seed + 2), (n,), 0, 10))
    return f, x, y


def test_pgd_and_algorithm1_share_the_random_start(run):
    """The study's PGD starts where daa_algorithm1 starts (same key): with c = 0 the two are the
    same attack, so a PGD / DAA pair differs only by the interaction term. Several rounds and a
    padded last minibatch (13 = 5 + 5 + 3) do not change that."""
    f, x, y = _tiny()
    key = run.restart_key(3)
    it = dict(eps=0.2, step_size=0.01, steps=4)
    start = run.shared_start(key, x, 0.2)
    x_pgd = attacks.pgd(f, jnp.asarray(x), jnp.asarray(y), key=key, x_init=start, **it)
    x_alg = attacks.daa_algorithm1(f, x, y, key=key, method="blob", c=0.0, rounds=3,
                                   batch_size=5, **it)
    np.testing.assert_allclose(np.asarray(x_alg), np.asarray(x_pgd), atol=1e-6)
    # ... and the start is a real random start: another restart's differs.
    assert not np.allclose(np.asarray(run.shared_start(run.restart_key(4), x, 0.2)),
                           np.asarray(start))


def test_released_cw_values(run):
    """The CW column uses what the released scripts apply (c = 1.1, coef = 0.001: their CW-branch
    values are locals of __init__ that perturb never reads), not Table 2's CW ranges."""
    r = run
    cw = {a.kind: a.value for a in r.attack_list(["cw"]) if a.value is not None}
    assert cw == {"daa_blob": 1.1, "daa_dgf": 0.001}
    ce = sorted((a.kind, a.value) for a in r.attack_list(["ce"]) if a.value is not None)
    assert ce == [("daa_blob", 1.1), ("daa_blob", 1.5), ("daa_blob", 2.0), ("daa_dgf", 0.001),
                  ("daa_dgf", 0.01)]


class _Killed(Exception):
    pass


class _Counting:
    """An Evaluator that counts attack runs and can die before the k-th."""

    def __init__(self, inner, die_at=None):
        self.inner, self.die_at, self.calls = inner, die_at, []

    def clean(self):
        return self.inner.clean()

    def run(self, att, r):
        if self.die_at is not None and len(self.calls) == self.die_at:
            raise _Killed(att.key)
        self.calls.append((r, att.key))
        return self.inner.run(att, r)


def test_evaluation_resumes_attack_by_attack(run, tmp_path):
    f, x, y = _tiny()
    protocol = run.Protocol(steps=3, rounds=1, particles=6, batch_size=8)
    atts = [run.Attack("mim", "ce"), run.Attack("pgd", "ce"), run.Attack("daa_dgf", "cw", 0.001)]
    ident = {"source": "tiny", "step": 0, "params_digest": "abc"}

    evaluator = run.Evaluator(f, x, y, protocol)  # one compilation per attack for all runs
    ref_store = run.Store(str(tmp_path / "ref"), ident, len(x))
    run.evaluate(evaluator, ref_store, atts, 2, protocol=protocol, log=lambda s: None)

    out = str(tmp_path / "out")
    killed = _Counting(evaluator, die_at=2)
    with pytest.raises(_Killed):
        run.evaluate(killed, run.Store(out, ident, len(x)), atts, 2, protocol=protocol,
                     log=lambda s: None)
    resumed = _Counting(evaluator)
    store = run.Store(out, ident, len(x))
    assert sorted(store.data) == ["clean", "r0|ce/mim", "r0|ce/pgd"]
    run.evaluate(resumed, store, atts, 2, protocol=protocol, log=lambda s: None)
    # Only what was missing ran again: the last attack of restart 0, then all of restart 1.
    assert resumed.calls == [(0, "cw/daa_dgf_0.001")] + [(1, a.key) for a in atts]
    final = dict(np.load(os.path.join(out, "per_example.npz")))
    assert sorted(final) == sorted(ref_store.data)
    for k in final:
        np.testing.assert_array_equal(final[k], ref_store.data[k], err_msg=k)
    # Other weights or another n in the same folder are refused, not mixed.
    with pytest.raises(ValueError, match="another model"):
        run.Store(out, {**ident, "params_digest": "def"}, len(x))
    with pytest.raises(ValueError, match="another model or n"):
        run.Store(out, ident, len(x) - 1)
    # A changed protocol is an unsaved attack: it runs again.
    assert not store.has("r0|ce/pgd", run.attack_spec(atts[1], run.Protocol(steps=4)))

    report = run.stage_report(out)
    md = open(os.path.join(out, "results.md")).read()
    assert "| PGD | 2 |" in md and "per seed (2 seeds)" in md
    assert report["ce"]["ce/pgd"]["restarts"] == [0, 1]
    worst = np.all(np.stack([final["r0|ce/pgd"], final["r1|ce/pgd"]]), axis=0)
    assert report["ce"]["ce/pgd"]["all_restarts"] == pytest.approx(worst.mean())
    json.loads(open(os.path.join(out, "results.json")).read())


def test_committed_weights_roundtrip_and_checks(weights, tmp_path):
    fields = {"hidden": (16,)}  # the loader is model-agnostic; a small model keeps this fast
    model = models.get_model("mlp", num_classes=10, **fields)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
    variables = jax.tree_util.tree_map(np.asarray, variables)
    path, manifest = str(tmp_path / "w.npz"), str(tmp_path / "MANIFEST.json")
    entry = weights.save(path, variables, info={"step": 7}, model="mlp", model_fields=fields,
                         manifest=manifest)
    assert entry["num_parameters"] == models.param_count(model, (28, 28, 1))
    assert json.load(open(manifest))["w.npz"]["sha256"] == weights.file_sha256(path)

    f = weights.load_logits_fn(path, manifest=manifest)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(model.apply(variables, x)),
                               rtol=1e-6, atol=1e-6)
    loaded, _ = weights.load(path, manifest=manifest)
    assert weights.params_digest(loaded) == entry["params_digest"]

    with open(path, "ab") as fh:  # a changed file fails its hash
        fh.write(b"\0")
    with pytest.raises(ValueError, match="differs from the expected"):
        weights.load(path, manifest=manifest)
    with pytest.raises(ValueError, match="no sha256"):
        weights.load(path, manifest=str(tmp_path / "none.json"))

    bad = jax.tree_util.tree_map(lambda a: a, variables)
    bad["params"]["fc2"]["kernel"] = np.zeros((16, 7), np.float32)
    weights.save(path, bad, info={}, model="mlp", model_fields=fields, manifest=manifest)
    with pytest.raises(ValueError, match="wrong shapes.*fc2/kernel"):
        weights.load(path, manifest=manifest)


@pytest.mark.slow
def test_train_stage_cuts_at_a_checkpoint_and_continues(run, tmp_path):
    """--stage train stops the `advjax train` child at the first checkpoint at or after the cut
    (SIGINT; the checkpoints stay), and a larger cut continues the same run from there. On the
    tiny config (a checkpoint every 20 steps), not the released one."""
    workdir = str(tmp_path / "w")
    common = ["--config", "tiny", "--train-override", "train.epochs=40", "--stage", "train",
              "--poll-seconds", "0.2", "--workdir", workdir]
    run.main(common + ["--max-iterations", "20"])
    info = json.load(open(os.path.join(workdir, "study_train_info.json")))
    first = info["stopped_at_iteration"]
    assert info["reason"] == "iteration budget 20" and first >= 20
    assert first < 40 * 22  # stopped long before the end (40 epochs of 22 steps)
    run.main(common + ["--max-iterations", str(first + 1)])
    log = open(os.path.join(workdir, "train_child.log")).read()
    assert "Resumed from checkpoint at step" in log
    assert run.checkpoint_steps(workdir)[-1] > first
