"""Multi-process training and evaluation on JAX's distributed runtime, on localhost.

Two processes with two forced CPU devices each talk over gloo (CPU collectives) and are compared with
one process with four devices at the same global batch:
  * PGD-AT (random start included) ends with the same parameters, to 1e-5;
  * the sharded evaluation returns exactly the single-process numbers and per-example results, every
    test example counted exactly once (DAA included: its particles are whole evaluation batches,
    which are never split across processes);
  * killing one process makes the other exit non-zero within HEARTBEAT_TIMEOUT + DETECTION_SLACK
    seconds, and restarting both resumes from the last checkpoint.

Every run is a subprocess (XLA_FLAGS and the distributed runtime must be set before JAX starts).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_TIMEOUT = 10   # config.distributed.heartbeat_timeout in these tests
DETECTION_SLACK = 20     # heartbeat interval, error polling, process teardown on a loaded machine
RUN_TIMEOUT = 300

# One worker for every run: argv = process_id num_processes port workdir mode epochs.
# mode "train": train_and_evaluate; mode "eval": evaluate the checkpoint in workdir and save the
# per-example results to workdir/eval_<num_processes>_<process_id>.npz.
WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from advjax import distributed, train
    from advjax.config import default_config

    pid, nproc, port, workdir, mode, epochs = sys.argv[1:7]
    pid, nproc, epochs = int(pid), int(nproc), int(epochs)
    c = default_config()
    c.data.name = "digits"; c.data.train_limit = 512
    c.model.name = "mlp"; c.model.hidden = (32,)
    c.objective.name = "pgd_at"; c.objective.eps = 0.1; c.objective.step_size = 0.03
    c.objective.steps = 3; c.objective.random_start = True
    c.optim.lr = 0.05; c.train.epochs = epochs; c.train.batch_size = 64
    c.train.progress = False; c.train.checkpoint_every_steps = 16; c.train.log_every = 4
    c.eval.batch_size = 64; c.eval.limit = 64 if mode == "train" else 0
    c.eval.attacks = [
        dict(name="fgsm", eps=0.1),
        dict(name="pgd", label="pgd-rs", eps=0.1, step_size=0.03, steps=3, random_start=True),
        dict(name="daa_blob", label="daa", eps=0.1, step_size=0.03, steps=3, c=1.0),
    ]
    if nproc > 1:
        c.distributed.coordinator_address = "127.0.0.1:" + port
        c.distributed.num_processes = nproc; c.distributed.process_id = pid
        c.distributed.cpu_collectives = "gloo"; c.distributed.heartbeat_timeout = %d
        c.distributed.initialization_timeout = 120
    if mode == "train":
        out = train.train_and_evaluate(c, workdir)
        print("RESULT", json.dumps({k: v for k, v in out.items() if k != "table"}), flush=True)
    else:
        distributed.maybe_initialize(c)
        state, model = train.restore_state(c, workdir)
        res = train.evaluate_result(c, state, model)
        np.savez("%%s/eval_%%d_%%d.npz" %% (workdir, nproc, pid), **res.correct)
        print("RESULT", json.dumps(res.as_dict()), flush=True)
    """ % HEARTBEAT_TIMEOUT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(worker, tmp_path, pid, nproc, port, workdir, mode, epochs, devices):
    log = open(tmp_path / f"log_{os.path.basename(workdir)}_{mode}_{nproc}_{pid}_{time.time_ns()}.txt",
               "w+")
    proc = subprocess.Popen([sys.executable, str(worker), str(pid), str(nproc), str(port), workdir,
                             mode, str(epochs)], cwd=ROOT, env=_env(devices), stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def _output(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def _run_all(runs):
    """Waits for every (proc, log); asserts each exited 0; returns their outputs."""
    outs = []
    for proc, log in runs:
        try:
            proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
        out = _output(log)
        assert proc.returncode == 0, out[-4000:]
        outs.append(out)
    return outs


def _result(out: str) -> dict:
    return json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):])


def _launch(worker, tmp_path, workdir, mode, *, nproc, epochs=1):
    """Runs one job: 1 process x 4 devices, or nproc processes x (4 / nproc) devices."""
    port = _free_port()
    runs = [_start(worker, tmp_path, pid, nproc, port, workdir, mode, epochs, 4 // nproc)
            for pid in range(nproc)]
    return _run_all(runs)


def _params(workdir):
    import jax
    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mngr.latest_step()
    tree = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture(scope="module")
def single_run(worker, tmp_path_factory):
    """PGD-AT on one process with four devices (the reference for both comparisons)."""
    tmp = tmp_path_factory.mktemp("single")
    workdir = str(tmp / "run")
    (out,) = _launch(worker, tmp, workdir, "train", nproc=1)
    return workdir, out


def test_two_processes_train_like_one_process_with_four_devices(worker, single_run, tmp_path):
    workdir1, _ = single_run
    workdir2 = str(tmp_path / "run2")
    outs = _launch(worker, tmp_path, workdir2, "train", nproc=2)
    for pid, out in enumerate(outs):  # every process logs what it does
        assert f"process {pid} of 2: 2 local devices, 32 examples per step from data shard {pid}" in out
    s1, p1 = _params(workdir1)
    s2, p2 = _params(workdir2)
    assert s1 == s2 == 8
    assert p1.keys() == p2.keys()
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k], atol=1e-5, rtol=0, err_msg=k)
    # One process writes the shared outputs; the metrics match the single-process run's.
    m1 = [json.loads(l) for l in open(os.path.join(workdir1, "metrics.jsonl"))]
    m2 = [json.loads(l) for l in open(os.path.join(workdir2, "metrics.jsonl"))]
    assert [m["step"] for m in m1] == [m["step"] for m in m2] and m1
    for a, b in zip(m1, m2):
        np.testing.assert_allclose(b["loss"], a["loss"], atol=1e-5, rtol=0)


# Slow (about 25 s): the default run keeps the two-process training test and
# tests/test_evaluate_api.py's two-device evaluation; this one runs under -m slow.
@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(worker, single_run, tmp_path):
    workdir1, _ = single_run
    (out1,) = _launch(worker, tmp_path, workdir1, "eval", nproc=1)
    outs2 = _launch(worker, tmp_path, workdir1, "eval", nproc=2)
    r1 = _result(out1)
    assert r1["n"] == 355  # the whole digits test split
    for out in outs2:  # every process returns the numbers of the whole test set
        assert _result(out) == r1
    c1 = np.load(os.path.join(workdir1, "eval_1_0.npz"))
    for pid in range(2):
        c2 = np.load(os.path.join(workdir1, f"eval_2_{pid}.npz"))
        assert sorted(c2.files) == sorted(c1.files) == ["clean", "daa", "fgsm", "pgd-rs"]
        for k in c1.files:
            assert c2[k].shape == (355,)
            np.testing.assert_array_equal(c2[k], c1[k], err_msg=k)


# Slow (35 s): three process launches and a heartbeat timeout; the default suite keeps the 2x2 vs
# 1x4 training and the sharded evaluation checks.
@pytest.mark.slow
def test_killed_process_fails_the_other_and_restart_resumes(worker, tmp_path):
    workdir = str(tmp_path / "killed")
    epochs = 12  # 96 steps: killed right after the first checkpoint (step 16), long before the end
    port = _free_port()
    runs = [_start(worker, tmp_path, pid, 2, port, workdir, "train", epochs, 2) for pid in range(2)]
    (p0, log0), (p1, log1) = runs
    ckdir = os.path.join(workdir, "checkpoints")
    try:
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline:
            steps = [int(d) for d in os.listdir(ckdir) if d.isdigit()] if os.path.isdir(ckdir) else []
            if steps:
                break
            assert p0.poll() is None and p1.poll() is None, _output(log0)[-3000:]
            time.sleep(0.05)
        assert p1.poll() is None, "training finished before it could be killed"
        p1.kill()
        t_kill = time.time()
        rc = p0.wait(timeout=HEARTBEAT_TIMEOUT + DETECTION_SLACK)
        elapsed = time.time() - t_kill
    finally:
        for p in (p0, p1):
            if p.poll() is None:
                p.kill()
    assert rc != 0, _output(log0)[-3000:]
    assert "another task died" in _output(log0) or "unhealthy" in _output(log0)
    print(f"surviving process exited with {rc} {elapsed:.1f} s after the kill")

    (_, last_step) = max((int(d), d) for d in os.listdir(ckdir) if d.isdigit())
    assert int(last_step) < 8 * epochs
    outs = _launch(worker, tmp_path, workdir, "train", nproc=2, epochs=epochs)
    for out in outs:
        assert f"Resumed from checkpoint at step {last_step}" in out
    assert _params(workdir)[0] == 8 * epochs
