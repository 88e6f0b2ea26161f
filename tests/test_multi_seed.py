"""Several seeds in one process (config.train.seeds = K; issue 18, item 5).

What must hold:
  * replica k is the single-seed run with seed config.seed + k: its own initialization, data order,
    attack and dropout keys, and method state; after N steps its parameters equal that run's
    (bit for bit in "sequential" mode, which runs the single-seed program; to float rounding in
    "vmap" mode, whose batched convolutions and matmuls sum in another order);
  * each seed's workdir holds what a single run's does (checkpoints, metrics.jsonl, tb/, config.json
    with that seed, eval.json / eval.md), and `advjax eval` works on it;
  * resumption: replicas killed between their saves resume from their common step and end as an
    uninterrupted run; a replica that went on alone is refused; train.seeds may not change;
  * a non-finite loss or a collapse in one replica stops the run with an error naming the seed.

Equivalence runs use a small CNN-4C3F on 8x8 digits (PGD-AT with random start and dropout); the
resumption runs a 4-steps-per-epoch MLP, as tests/test_faults.py does.
"""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import write_small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def small_config_file(tmp_path):
    """The small run of conftest (3 epochs, a row and a checkpoint every 2 steps) with 2 seeds and
    2 checkpoints kept."""
    return write_small_config(os.path.join(str(tmp_path), "small_config.py"), epochs=3,
                              extra="c.train.keep_checkpoints = 2\n    c.train.seeds = 2")


def load_config(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_multi_seed_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def small_config(tmp_path, **overrides):
    return with_overrides(load_config(small_config_file(tmp_path)), overrides)


def with_overrides(config, overrides):
    for key, value in overrides.items():
        node, *path, leaf = [config] + key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


def cnn_config(**overrides):
    """PGD-AT (linf, random start) of a CNN-4C3F with dropout on 8x8 digits: 8 steps of batch 64."""
    import ml_collections

    from advjax.config import default_config
    c = default_config()
    c.data.name = "digits"
    c.data.train_limit = 256
    c.model = ml_collections.ConfigDict(dict(name="cnn4c3f", widths=(4, 8), fc_widths=(16,),
                                             padding="SAME", dropout_rate=0.3))
    c.objective.name = "pgd_at"
    c.objective.eps = 0.1
    c.objective.step_size = 0.03
    c.objective.steps = 3
    c.objective.random_start = True
    c.optim.lr = 0.05
    c.train.epochs = 2
    c.train.batch_size = 64
    c.train.log_every = 2
    c.train.checkpoint_every_steps = 0
    c.train.progress = False
    c.train.collapse_guard = False  # 8 steps are too few to get off chance level reliably
    c.eval.limit = 64
    c.eval.batch_size = 64
    return with_overrides(c, overrides)


def checkpoint(workdir, step=None):
    """(step, restored tree) of a checkpoint (the newest by default), read with orbax."""
    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(os.path.join(str(workdir), "checkpoints"))
    step = mngr.latest_step() if step is None else step
    tree = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    return step, tree


def flat(tree):
    import jax
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def checkpoint_steps(workdir):
    ckdir = os.path.join(str(workdir), "checkpoints")
    return sorted(int(d) for d in os.listdir(ckdir) if d.isdigit()) if os.path.isdir(ckdir) else []


def metrics_rows(workdir):
    with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_sec"}
                for line in f if line.strip()]


def assert_same_run(a, b, *, atol=0.0):
    """Same final step, parameters and optimizer state; the same metrics history (to atol)."""
    (sa, ta), (sb, tb) = checkpoint(a), checkpoint(b)
    assert sa == sb
    fa, fb = flat({k: ta[k] for k in ("params", "opt_state", "model_state", "method_state")}), \
        flat({k: tb[k] for k in ("params", "opt_state", "model_state", "method_state")})
    assert fa.keys() == fb.keys()
    for k in fa:
        if atol:
            np.testing.assert_allclose(fa[k], fb[k], atol=atol, rtol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    ra, rb = metrics_rows(a), metrics_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(x[k], y[k], atol=10 * atol, rtol=0, err_msg=k)


# ------------------------------------------------------------------------------------------------
# Each replica is its single-seed run
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn_single_runs(tmp_path_factory):
    """Single-seed runs of seeds 0 and 1 (the references of the replicas)."""
    from advjax import train
    tmp = tmp_path_factory.mktemp("single")
    runs = {}
    for seed in (0, 1):
        runs[seed] = str(tmp / f"seed{seed}")
        train.train_and_evaluate(cnn_config(seed=seed), runs[seed])
    return runs


@pytest.mark.parametrize("mode", ["sequential", "vmap"])
def test_each_replica_is_its_single_seed_run(cnn_single_runs, tmp_path, mode):
    """Two replicas in one process against two single runs: PGD-AT with random starts and dropout
    (keys per seed), data order per seed. vmap: to 1e-5 (measured: 3e-8 after 8 steps; a linf
    attack's sign() can turn float rounding into a whole step on one pixel over a long run)."""
    from advjax import train
    workdir = str(tmp_path / "group")
    result = train.train_and_evaluate(cnn_config(**{"train.seeds": 2, "train.seeds_mode": mode}),
                                      workdir)
    assert result["seeds"] == [0, 1]
    for seed in (0, 1):
        assert_same_run(os.path.join(workdir, f"seed{seed}"), cnn_single_runs[seed],
                        atol=0.0 if mode == "sequential" else 1e-5)
    # The replicas are independent runs, not copies of one another.
    p0 = flat(checkpoint(os.path.join(workdir, "seed0"))[1]["params"])
    p1 = flat(checkpoint(os.path.join(workdir, "seed1"))[1]["params"])
    assert all(np.abs(p0[k] - p1[k]).max() > 1e-3 for k in p0)


def test_replicas_with_method_state_match_their_single_runs(tmp_path):
    """DRA-Mahalanobis keeps a method state per replica (the cost matrix A, this epoch's scatter of
    its own adversarial perturbations, a step count) and replaces A at every epoch's end
    (`Objective.end_of_epoch`, run per replica on the host in vmap mode): over two epochs, replica 4
    of a vmapped group with base seed 3 is its single-seed run, and each replica learned its own A."""
    import ml_collections

    from advjax import train
    c = small_config(tmp_path, seed=3, **{"train.seeds_mode": "vmap"})
    c.objective = ml_collections.ConfigDict(dict(name="dra_mahalanobis", gamma=1.0, step_size=0.1,
                                                 steps=2, input_dim=64, r=2.0, psi_floor=1e-3))
    c.train.epochs = 2
    c.train.collapse_guard = False
    group = str(tmp_path / "group")
    train.train_and_evaluate(c, group)
    single = str(tmp_path / "single4")
    c4 = train.replica_config(c, 4)
    c4.train.seeds = 1
    train.train_and_evaluate(c4, single)
    assert_same_run(os.path.join(group, "seed4"), single, atol=1e-5)
    a3 = np.asarray(checkpoint(os.path.join(group, "seed3"))[1]["method_state"]["A"])
    a4 = np.asarray(checkpoint(os.path.join(group, "seed4"))[1]["method_state"]["A"])
    eye = np.eye(64, dtype=np.float32)
    # Updated at the end of epoch 1 and 2 (not the identity it starts from), and per replica.
    assert np.abs(a3 - eye).max() > 1e-3 and np.abs(a4 - eye).max() > 1e-3
    assert np.abs(a3 - a4).max() > 1e-4


# ------------------------------------------------------------------------------------------------
# One workdir per seed, with what a single run writes
# ------------------------------------------------------------------------------------------------

def run_cli(*argv):
    """(exit status, stdout, stderr) of `advjax <argv>` run in this process."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from advjax import cli
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = cli.main(["advjax", *argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """An uninterrupted 2-seed run of the small config (12 steps), sequential mode, trained by
    `advjax train` (the table it prints is the seeds' summary)."""
    tmp = tmp_path_factory.mktemp("group")
    workdir = str(tmp / "run")
    rc, out, err = run_cli("train", "--config", small_config_file(tmp), "--workdir", workdir,
                           "--config.train.seeds_mode=sequential")
    assert rc == 0, err
    assert "seeds 0-1" in out and "| mean +- std |" in out
    return workdir


def test_train_seeds_on_the_command_line_is_checked(tmp_path):
    """train.seeds is a config key like any other: accepted (the group above), range-checked with
    exit status 2 before any compute, and train.seeds_mode's values are named."""
    w = str(tmp_path / "w")
    rc, _, err = run_cli("train", "--config", small_config_file(tmp_path), "--workdir", w,
                         "--config.train.seeds=0")
    assert rc == 2 and "config.train.seeds must be >= 1" in err, err
    rc, _, err = run_cli("train", "--config", small_config_file(tmp_path), "--workdir", w,
                         "--config.train.seeds_mode=grouped")
    assert rc == 2 and "config.train.seeds_mode must be one of" in err, err
    assert not os.path.exists(os.path.join(w, "seed0"))


def test_each_seed_workdir_has_the_files_of_a_single_run(group, tmp_path):
    parent = json.load(open(os.path.join(group, "config.json")))
    assert parent["seed"] == 0 and parent["train"]["seeds"] == 2
    assert not os.path.exists(os.path.join(group, "checkpoints"))
    summary = json.load(open(os.path.join(group, "eval_seeds.json")))
    assert summary["seeds"] == [0, 1] and summary["step"] == 12
    for seed in (0, 1):
        w = os.path.join(group, f"seed{seed}")
        stored = json.load(open(os.path.join(w, "config.json")))
        assert stored["seed"] == seed and stored["train"]["seeds"] == 2
        assert checkpoint_steps(w) == [10, 12]  # keep_checkpoints = 2, pruned after every save
        assert [r["step"] for r in metrics_rows(w)] == [2, 4, 6, 8, 10, 12]
        assert os.listdir(os.path.join(w, "tb"))
        ev = json.load(open(os.path.join(w, "eval.json")))
        assert ev["step"] == 12 and ev["n"] == 64
        assert ev["clean"] == summary["per_seed"][str(seed)]["clean"]
        assert os.path.exists(os.path.join(w, "eval.md"))
    means = np.mean([summary["per_seed"][s]["clean"] for s in ("0", "1")])
    assert summary["mean"]["clean"] == pytest.approx(means)


def test_seeds_summary_averages_every_accuracy_column(tmp_path):
    """Mean and sample std over seeds of clean, attack/*, targeted/*, a_rob and AutoAttack's
    columns; other keys (counts, norms, files) are per seed only."""
    from advjax import train
    config = small_config(tmp_path, seed=4, **{"train.seeds": 3})
    results = [{"clean": c, "attack/pgd-20": a, "targeted/apgd-t": t, "a_rob": a - 0.01,
                "autoattack": a - 0.02, "autoattack/clean": c, "autoattack/norm": "Linf",
                "n": 64, "step": 12, "eval_file": "x", "table": "t"}
               for c, a, t in ((0.9, 0.5, 0.2), (0.8, 0.4, 0.1), (0.7, 0.3, 0.3))]
    out = train.seeds_summary(config, str(tmp_path), results, train_seconds=1.0)
    assert out["seeds"] == [4, 5, 6]
    assert sorted(out["mean"]) == sorted(["clean", "attack/pgd-20", "targeted/apgd-t", "a_rob",
                                          "autoattack", "autoattack/clean"])
    assert out["mean"]["attack/pgd-20"] == pytest.approx(0.4)
    assert out["std"]["clean"] == pytest.approx(0.1)  # ddof = 1
    assert out["mean"]["targeted/apgd-t"] == pytest.approx(0.2)
    assert out["per_seed"]["5"]["autoattack/norm"] == "Linf" and "table" not in out["per_seed"]["5"]
    header = out["table"].splitlines()[2]
    assert header == ("| seed | clean | pgd-20 | targeted/apgd-t | a_rob | autoattack | "
                      "autoattack/clean |")
    assert "| mean +- std | 80.00 +- 10.00 |" in out["table"]
    stored = json.load(open(tmp_path / "eval_seeds.json"))
    assert stored["mean"] == out["mean"]


def test_advjax_eval_works_on_a_seed_workdir_and_explains_the_parent(group, tmp_path):
    from advjax import train
    w = os.path.join(group, "seed1")
    rc, _, err = run_cli("eval", "--config", small_config_file(tmp_path), "--workdir", w,
                         "--config.seed=1", "--limit", "32")
    assert rc == 0, err
    assert "trained with another config" not in err  # the seed's own config
    assert json.load(open(os.path.join(w, "eval.n32.json")))["n"] == 32  # eval.json is fuller
    with pytest.raises(FileNotFoundError, match="multi-seed run"):
        train.restore_state(small_config(tmp_path), group)


# ------------------------------------------------------------------------------------------------
# Resumption and refusals
# ------------------------------------------------------------------------------------------------

class _Killed(Exception):
    """Stands for a kill -9 at a chosen moment (raised from inside the run)."""


def test_interrupted_replicas_resume_from_their_common_step(group, tmp_path, monkeypatch):
    """Preempted after step 3, then killed between the two replicas' saves of step 6 (with
    keep_checkpoints = 1, the hardest case): the resumed run ends as the uninterrupted one, bit for
    bit, with each metrics row once."""
    from advjax import preemption, train
    workdir = str(tmp_path / "run")
    config = small_config(tmp_path, **{"train.keep_checkpoints": 1})

    calls = {"n": 0}

    def agreed(self):
        calls["n"] += 1
        return "SIGTERM" if calls["n"] == 3 else None

    monkeypatch.setattr(preemption.StopSignal, "agreed", agreed)
    with pytest.raises(preemption.Preempted):
        train.train_and_evaluate(config, workdir)
    assert checkpoint_steps(os.path.join(workdir, "seed0")) == [3]
    assert checkpoint_steps(os.path.join(workdir, "seed1")) == [3]
    monkeypatch.undo()

    save = train.Checkpointer.save

    def dies_at_seed1_step6(self, state, **kw):
        if self.directory.endswith(os.path.join("seed1", "checkpoints")) and int(state.step) == 6:
            raise _Killed()
        return save(self, state, **kw)

    monkeypatch.setattr(train.Checkpointer, "save", dies_at_seed1_step6)
    with pytest.raises(_Killed):
        train.train_and_evaluate(config, workdir)
    monkeypatch.undo()
    # seed0 saved step 6 (and keeps one more until both have: the common step 4 stays on disk).
    assert checkpoint_steps(os.path.join(workdir, "seed0")) == [4, 6]
    assert checkpoint_steps(os.path.join(workdir, "seed1")) == [4]

    train.train_and_evaluate(config, workdir)
    for seed in (0, 1):
        w = os.path.join(workdir, f"seed{seed}")
        assert_same_run(w, os.path.join(group, f"seed{seed}"))
        assert checkpoint_steps(w) == [12]
    superseded = os.listdir(os.path.join(workdir, "seed0", "checkpoints.superseded"))
    assert [d.split("-")[0] for d in superseded] == ["6"]  # moved aside, never deleted


def test_a_replica_that_went_on_alone_is_refused(group, tmp_path):
    from advjax import train, workdir as workdir_lib
    w = str(tmp_path / "run")
    shutil.copytree(group, w)
    # seed 1 has lost its history: seed 0 is two checkpoints (10, 12) ahead of their common step 0,
    # which no interrupted save leaves.
    shutil.rmtree(os.path.join(w, "seed1", "checkpoints"))
    with pytest.raises(workdir_lib.WorkdirError, match=r"seed 0 has checkpoints \[10, 12\] after "
                                                       r"step 0"):
        train.train_and_evaluate(small_config(tmp_path), w)
    assert checkpoint_steps(os.path.join(w, "seed0")) == [10, 12]  # nothing moved or deleted


def test_train_seeds_may_not_change_on_resume(group, tmp_path):
    from advjax import train, workdir as workdir_lib
    with pytest.raises(workdir_lib.WorkdirError, match=r"train\.seeds: 2 -> 3"):
        train.train_and_evaluate(small_config(tmp_path, **{"train.seeds": 3}), group)
    # A single-seed run in a multi-seed run's workdir, and the reverse.
    with pytest.raises(workdir_lib.WorkdirError, match=r"train\.seeds: 2 -> 1"):
        train.train_and_evaluate(small_config(tmp_path, **{"train.seeds": 1}), group)
    with pytest.raises(workdir_lib.WorkdirError, match=r"train\.seeds: 2 -> 1"):
        train.train_and_evaluate(small_config(tmp_path, **{"train.seeds": 1}),
                                 os.path.join(group, "seed0"))
    from advjax import workdir
    assert workdir.is_resumable_key("train.seeds_mode")
    assert not workdir.is_resumable_key("train.seeds")
    # The documented way out: a seed's workdir resumed as a single run, with the change recorded.
    w = str(tmp_path / "seed0")
    shutil.copytree(os.path.join(group, "seed0"), w)
    result = train.train_and_evaluate(small_config(tmp_path, **{"train.seeds": 1}), w,
                                      allow_config_change=True)
    assert result["step"] == 12
    assert os.path.exists(os.path.join(w, "config.before-step12.json"))


def test_seeds_config_is_checked_before_any_compute(tmp_path):
    from advjax import train
    with pytest.raises(train.ConfigError, match=r"config\.train\.seeds must be >= 1"):
        train.validate(small_config(tmp_path, **{"train.seeds": 0}))
    with pytest.raises(train.ConfigError, match=r"config\.train\.seeds_mode must be one of"):
        train.validate(small_config(tmp_path, **{"train.seeds_mode": "grouped"}))
    import jax
    config = small_config(tmp_path)
    assert train.resolve_seeds_mode(config, jax.devices("cpu")) == "sequential"
    assert train.resolve_seeds_mode(with_overrides(config, {"train.seeds": 1}),
                                    jax.devices("cpu")) == "single"
    assert train.seed_workdirs(small_config(tmp_path, seed=5), "w") == [(5, "w/seed5"),
                                                                       (6, "w/seed6")]


# ------------------------------------------------------------------------------------------------
# Guards name the seed
# ------------------------------------------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, step, scalars):
        self.rows.append(step)


class _Ckpt:
    directory = "ckpt"

    def latest_step(self):
        return 0


def _guarded_run(seeds):
    import ml_collections

    from advjax import train
    config = ml_collections.ConfigDict(dict(train=dict(epochs=1, batch_size=8, log_every=1,
                                                       keep_checkpoints=1)))
    b = {"steps_per_epoch": 4, "schedule": lambda step: 0.1}
    replicas = [train._Replica(seed, f"w/seed{seed}", _Ckpt(), _Writer(),
                               train.CollapseGuard(10, warmup_steps=0, window_steps=1))
                for seed in seeds]
    return train._Run(config, b, "w", replicas, host_metrics=lambda metrics: metrics), replicas


def _metrics(finite=1.0, top=0.2):
    return {"loss": np.float32(1.0 if finite else np.nan), "finite": np.float32(finite),
            "probe_acc": np.float32(0.5), "probe_top_class": np.float32(top)}


def test_a_failed_replica_stops_the_run_naming_its_seed():
    from advjax import train
    run, (r0, r1) = _guarded_run([0, 1])
    run.after_step(1, [_metrics(), _metrics(finite=0.0)])
    with pytest.raises(FloatingPointError, match=r"seed 1 \(w/seed1\): non-finite loss") as e:
        run.flush()
    assert "seed 0" not in str(e.value).split("All 2 seeds")[0]
    assert r0.writer.rows == [1] and r1.writer.rows == []  # the healthy replica's row is kept
    run.after_step(2, [_metrics(top=1.0), _metrics()])
    with pytest.raises(train.TrainingCollapsedError, match=r"seed 0 \(w/seed0\): training "
                                                           r"collapsed at step 2"):
        run.flush()
    # One seed: the messages of a single run, which name no seed.
    run, _ = _guarded_run([7])
    run.after_step(1, [_metrics(finite=0.0)])
    with pytest.raises(FloatingPointError, match=r"^non-finite loss or gradient at step 1"):
        run.flush()


# ------------------------------------------------------------------------------------------------
# The study driver
# ------------------------------------------------------------------------------------------------

def test_study_trains_a_method_for_several_seeds_in_one_process(tmp_path):
    import sys
    sys.path.insert(0, ROOT)
    from experiments import study
    methods = [study.Method("PGD-AT", "tiny", seeds=2)]
    attacks = [dict(name="fgsm", eps=0.1)]
    common = {"data.train_limit": 128, "train.epochs": 1, "eval.limit": 64,
              "train.collapse_guard": False}
    results = study.run(str(tmp_path), methods, common=common, attacks=attacks, n=64,
                        workdir_root=str(tmp_path / "workdirs"))
    assert sorted(results) == ["PGD-AT", "PGD-AT seed0", "PGD-AT seed1"]
    rows = [results["PGD-AT seed0"], results["PGD-AT seed1"]]
    assert [r["seed"] for r in rows] == [0, 1]
    assert results["PGD-AT"]["clean"] == pytest.approx(np.mean([r["clean"] for r in rows]))
    assert results["PGD-AT"]["std/clean"] == pytest.approx(np.std([r["clean"] for r in rows],
                                                                  ddof=1))
    per_example = np.load(os.path.join(str(tmp_path), "per_example.npz"))
    assert {"PGD-AT seed0|fgsm", "PGD-AT seed1|fgsm"} <= set(per_example)
    for seed in (0, 1):
        assert os.path.exists(tmp_path / "workdirs" / "PGD-AT" / f"seed{seed}" / "eval.json")
    # Unchanged on a rerun: nothing is trained or evaluated again.
    again = study.run(str(tmp_path), methods, common=common, attacks=attacks, n=64,
                      workdir_root=str(tmp_path / "workdirs"))
    assert again["PGD-AT seed1"] == results["PGD-AT seed1"]
