"""DAA Table 3 on the authors' Fashion-MNIST model (issue 14, Part B).

Zheng, Chen & Ren, "Distributionally Adversarial Attack" (AAAI 2019), Table 3 (paper text line 271):
"Empirical worst-case accuracy of adversarially trained FMNIST model under 100-step attacks with 10
random starts (0.2/1.0 l_inf perturbations)", and the single-run claim of line 23: "a single run of
DAA with 0.2/1.0 l_inf perturbations reduces the accuracy of our adversarially trained FMNIST model
to 67.6%, outperforming a single run of PGD that reduces the accuracy to 71.5%".

Target: the released model and its training (`configs/daa_release_fmnist.py`,
`advjax.models.DAAReleaseCNN`: release `fashion-mnist-master/model.py`, `train.py` and
`models/a_very_robust_model/config.json`). All 10,000 test images. Attacks, every one linf eps 0.2:

  rand_fgsm  Rand+FGSM (Tramer et al.'s R+FGSM, alpha = eps / 2)
  pgd        PGD, 100 steps of 0.01 from a random start
  mim        Momentum PGD (MIM, decay 1, grad / ||grad||_1), 100 steps of 0.01, random start
             (release `mi_pgd_rand.py`)
  daa_blob   DAA-BLOB, Algorithm 1 (R = 10 rounds of 10 steps, M = 100 particles: the release's
             k / 10 rounds and eval_batch_size), the released sign of the kernel-gradient term
             (`repulsive=False`); CE: c in {1.1, 1.5, 2.0}; CW: c = 1.1
  daa_dgf    DAA-DGF, Algorithm 1 as above; CE: coef in {0.001, 0.01}; CW: coef = 0.001

with the cross-entropy ("ce") and Madry's CW_inf margin ("cw", kappa = 50). The CW column uses
what the released scripts actually apply. `mnist_challenge-master/blob_rand.py` (the only released
BLOB script for 28x28 images; `fashion-mnist-master/blob_rand.py` is the CIFAR one) sets c = 1.1 at
module level (line 18); the `c = 10.0` of its CW branch (line 47) is a local variable of
`__init__`, and `perturb` (line 71) reads the module-level c, so CW runs with c = 1.1.
`mnist_challenge-master/dgf_rand.py` does the same with -0.001 (line 18) and -0.01 (line 49), and
`fashion-mnist-master/dgf_rand.py` has only c = -0.001 (line 21): coef = 0.001 for CW as well.

Same keys for all attacks: restart r has key_r = fold_in(PRNGKey(0), r). PGD and both DAA variants
start from the same point x + U(-eps, eps) (clipped to [0, 1]) drawn for the whole test set from
key_r, exactly as `daa_algorithm1` draws its start, so a PGD / DAA pair differs only by the
interaction term (tested: `tests/test_daa_study.py`). Rand+FGSM and Momentum PGD draw their random
step / start from fold_in(key_r, batch). "All restarts" counts an image as robust only if it
survives every restart (the paper's worst case).

Stages (`--stage`, several allowed; default train eval report):

  train   `advjax train` of configs/daa_release_fmnist.py in --workdir (a child process; it resumes
          from the last checkpoint). CPU cut: stop at the first checkpoint (every 600 iterations)
          at or after --max-iterations (default 12,000) or, once --max-hours have passed, at the
          next checkpoint. The released schedule is constant (Adam 1e-4), so the cut is the released
          run stopped early, and rerunning with a larger budget continues it. `--paper-protocol`:
          no cut, the released 100k iterations (84 epochs of 60,000 = 100,800), for a GPU.
  eval    the attacks on the first --n test images (default 10,000) with the checkpoint
          --checkpoint-step (default: the latest) or the committed --weights FILE.npz; restarts
          0 .. --restarts - 1 (default 1: single restart first). Each attack's per-example
          correctness is saved in --out (default eval_step<S>/: per_example.npz, meta.json) as soon
          as it finishes; a rerun skips what is saved, so a killed evaluation loses at most one
          attack. Results of another model in --out are refused.
  report  results.md / results.json in --out: accuracy per attack (restart 0, mean over
          restarts, all restarts), and against PGD, with `experiments/stats.py`: McNemar per
          restart and on the all-restart worst case, the mean difference over restarts with a 95%
          t interval, the smallest difference the McNemar test detects at this n.
  curve   PGD-100 (CE, one restart) and clean accuracy on the first --curve-n test images at
          several checkpoints (--curve-steps; default every 3,000 iterations and the latest), next
          to the training adversarial accuracy logged near those iterations and that of the
          released runs (release_curves.json): what the iteration cut costs. Saved per checkpoint
          (curve.json, curve.md).
  time    seconds per attack on --time-n and 2 x --time-n images (the difference gives the cost
          per image, the rest is compilation), and the projected cost on 10,000 images (time.json).
  export  the checkpoint's weights to weights/daa_release_step<S>.npz and its sha256 to
          weights/MANIFEST.json (`weights.py` loads them).
  figure  figure1.png: clean test images, PGD's and DAA-BLOB's (c = 1.1, one minibatch of 100)
          adversarial examples and perturbations.

    python experiments/daa_fmnist/run.py --stage train                       # CPU cut
    python experiments/daa_fmnist/run.py --stage eval report [--restarts 1]  # latest checkpoint
    python experiments/daa_fmnist/run.py --stage curve --curve-n 1000
    python experiments/daa_fmnist/run.py --paper-protocol --threads 0        # GPU: the whole paper
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENTS = os.path.dirname(HERE)
ROOT = os.path.dirname(EXPERIMENTS)
for _p in (HERE, EXPERIMENTS, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)
import stats  # noqa: E402
import study  # noqa: E402
import weights as weights_lib  # noqa: E402

CONFIG = "daa_release_fmnist"
RELEASED_ITERATIONS = 100_000
DEFAULT_CUT = 12_000
SEED = 0

# The paper's Table 3 (10 restarts, %) and the single-run figures of its line 23.
PAPER = {"ce": {"rand_fgsm": 77.45, "pgd": 68.54, "mim": 69.72, "daa_blob": 65.70,
                "daa_dgf": 66.04},
         "cw": {"rand_fgsm": 77.21, "pgd": 68.94, "mim": 69.51, "daa_blob": 66.64,
                "daa_dgf": 66.60}}
PAPER_SINGLE_RUN = {"pgd": 71.5, "daa": 67.6}
TITLES = {"rand_fgsm": "Rand+FGSM", "pgd": "PGD", "mim": "Momentum PGD", "daa_blob": "DAA-BLOB",
          "daa_dgf": "DAA-DGF"}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The attack settings shared by every column (Table 3; the release's config.json)."""
    eps: float = 0.2
    step_size: float = 0.01
    steps: int = 100
    rounds: int = 10       # Algorithm 1: R rounds of steps / R steps
    particles: int = 100   # M, the release's eval_batch_size
    kappa: float = 50.0    # CW_inf margin cap (Madry et al.)
    batch_size: int = 500  # evaluation batch of the per-example attacks; Rand+FGSM's and MIM's
    # random draws are keyed per batch, so it is part of what determines their results


@dataclasses.dataclass(frozen=True)
class Attack:
    kind: str                     # rand_fgsm | pgd | mim | daa_blob | daa_dgf
    loss: str                     # ce | cw
    value: Optional[float] = None  # BLOB c or DGF coef

    @property
    def key(self) -> str:
        v = "" if self.value is None else f"_{self.value:g}"
        return f"{self.loss}/{self.kind}{v}"

    @property
    def title(self) -> str:
        t = TITLES[self.kind]
        if self.kind == "daa_blob":
            t += f" c = {self.value:g}"
        elif self.kind == "daa_dgf":
            t += f" coef = {self.value:g}"
        return t


def attack_list(losses: Sequence[str] = ("ce", "cw")) -> List[Attack]:
    out = []
    for loss in losses:
        out += [Attack("rand_fgsm", loss), Attack("pgd", loss), Attack("mim", loss)]
        if loss == "ce":
            out += [Attack("daa_blob", loss, c) for c in (1.1, 1.5, 2.0)]
            out += [Attack("daa_dgf", loss, v) for v in (0.001, 0.01)]
        else:  # what the released scripts apply with loss_func = "cw" (module docstring)
            out += [Attack("daa_blob", loss, 1.1), Attack("daa_dgf", loss, 0.001)]
    return out


# ------------------------------------------------------------------------------------------------
# Attacks on a whole evaluation set, from shared keys
# ------------------------------------------------------------------------------------------------

def restart_key(r: int):
    import jax
    return jax.random.fold_in(jax.random.PRNGKey(SEED), r)


_START = []


def shared_start(key, x, eps: float):
    """x + U(-eps, eps) clipped to [0, 1] for the whole set, drawn as `daa_algorithm1` draws its
    start from the same key (so PGD from this start and Algorithm 1 start at the same point)."""
    import jax

    from advjax import threat
    if not _START:
        _START.append(jax.jit(
            lambda k, xx, e: threat.clip_to_box(xx + threat.random_init(k, xx, e, "linf"))))
    return _START[0](key, jax.numpy.asarray(x), eps)


class Evaluator:
    """Per-example correctness of each attack on (x, y) for logits_fn, compiled once per attack."""

    def __init__(self, logits_fn: Callable, x, y, protocol: Protocol = Protocol()):
        import numpy as np
        self.f, self.p = logits_fn, protocol
        self.x = np.asarray(x, np.float32)
        self.y = np.asarray(y).astype(np.int32)
        self._jitted: Dict[str, Callable] = {}

    def _batches(self):
        n, bs = len(self.x), min(self.p.batch_size, len(self.x))
        for b, s in enumerate(range(0, n, bs)):
            yield b, s, min(s + bs, n), bs

    def _predict_correct(self, x_adv):
        import jax
        import jax.numpy as jnp
        import numpy as np
        if "predict" not in self._jitted:
            self._jitted["predict"] = jax.jit(lambda xa, yy: jnp.argmax(self.f(xa), -1) == yy)
        out = []
        for _, s, e, bs in self._batches():
            xa, yy = _pad(np.asarray(x_adv[s:e]), bs), _pad(self.y[s:e], bs)
            out.append(np.asarray(self._jitted["predict"](xa, yy))[:e - s])
        return np.concatenate(out)

    def clean(self):
        return self._predict_correct(self.x)

    def _per_batch_fn(self, att: Attack):
        import jax
        import jax.numpy as jnp

        from advjax import attacks
        p = self.p
        kw = dict(loss=att.loss, kappa=p.kappa if att.loss == "cw" else float("inf"))
        if att.kind == "rand_fgsm":
            def adv(x, y, k, s):
                return attacks.rfgsm(self.f, x, y, key=k, eps=p.eps, alpha=p.eps / 2, **kw)
        elif att.kind == "pgd":
            def adv(x, y, k, s):
                return attacks.pgd(self.f, x, y, key=k, eps=p.eps, step_size=p.step_size,
                                   steps=p.steps, random_start=True, x_init=s, **kw)
        elif att.kind == "mim":
            def adv(x, y, k, s):
                return attacks.mim(self.f, x, y, key=k, eps=p.eps, step_size=p.step_size,
                                   steps=p.steps, decay=1.0, random_start=True, **kw)
        else:
            raise ValueError(f"not a per-example attack: {att.kind}")
        return jax.jit(lambda x, y, k, s: jnp.argmax(self.f(adv(x, y, k, s)), -1) == y)

    def run(self, att: Attack, r: int):
        """Per-example correctness (bool, len(x)) under `att`, restart r."""
        import jax
        import numpy as np

        from advjax import attacks
        key = restart_key(r)
        if att.kind in ("daa_blob", "daa_dgf"):
            p = self.p
            extra = {"c": att.value} if att.kind == "daa_blob" else {"coef": att.value}
            x_adv = attacks.daa_algorithm1(
                self.f, self.x, self.y, key=key, method=att.kind[4:], rounds=p.rounds,
                batch_size=p.particles, steps=p.steps, eps=p.eps, step_size=p.step_size,
                loss=att.loss, kappa=p.kappa, **extra)
            return self._predict_correct(np.asarray(x_adv))
        if att.key not in self._jitted:
            self._jitted[att.key] = self._per_batch_fn(att)
        fn = self._jitted[att.key]
        # PGD's start (the others ignore it and draw their own from the batch key).
        start = np.asarray(shared_start(key, self.x, self.p.eps)) if att.kind == "pgd" else self.x
        out = []
        for b, s, e, bs in self._batches():
            got = fn(_pad(self.x[s:e], bs), _pad(self.y[s:e], bs), jax.random.fold_in(key, b),
                     _pad(start[s:e], bs))
            out.append(np.asarray(got)[:e - s])
        return np.concatenate(out)


def _pad(a, size: int):
    """a with its first row repeated up to `size` rows (per-example attacks ignore the copies)."""
    import numpy as np
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])


# ------------------------------------------------------------------------------------------------
# Saved per-example results (resumable per attack)
# ------------------------------------------------------------------------------------------------

class Store:
    """per_example.npz ({"clean", "r<r>|<attack key>": bool array}) and meta.json in `out`, both
    rewritten atomically after every attack. The model's identity (parameter digest) and n are
    fixed at creation: results of another model or another n are refused, not mixed."""

    def __init__(self, out: str, model: Dict[str, Any], n: int):
        import numpy as np
        os.makedirs(out, exist_ok=True)
        self.out = out
        self.npz_path = os.path.join(out, "per_example.npz")
        self.meta_path = os.path.join(out, "meta.json")
        self.meta = study.load_results(self.meta_path)
        if self.meta:
            old = self.meta["model"].get("params_digest")
            if old != model["params_digest"] or self.meta["n"] != n:
                raise ValueError(
                    f"{out} holds results for another model or n (params_digest {old}, "
                    f"n = {self.meta['n']}; now {model['params_digest']}, n = {n}): pass another "
                    f"--out, or delete it to start over")
        else:
            self.meta = {"model": model, "n": n, "attacks": {}}
        self.data = dict(np.load(self.npz_path)) if os.path.exists(self.npz_path) else {}

    def has(self, tag: str, spec: Dict[str, Any]) -> bool:
        return tag in self.data and self.meta["attacks"].get(tag, {}).get("spec") == spec

    def put(self, tag: str, correct, info: Dict[str, Any]) -> None:
        import numpy as np
        self.data[tag] = np.asarray(correct, bool)
        self.meta["attacks"][tag] = info
        tmp = self.npz_path + ".tmp.npz"
        np.savez_compressed(tmp, **self.data)
        os.replace(tmp, self.npz_path)
        study.save_results(self.meta_path, self.meta)


def attack_spec(att: Attack, protocol: Protocol) -> Dict[str, Any]:
    """What determines an attack's result: a saved result with another spec is run again."""
    return {"attack": dataclasses.asdict(att), "protocol": dataclasses.asdict(protocol),
            "seed": SEED}


def evaluate(evaluator: Evaluator, store: Store, attacks: Sequence[Attack], restarts: int, *,
             protocol: Protocol = Protocol(), log: Callable[[str], None] = print) -> None:
    """Restart by restart, attack by attack: run what `store` lacks, save each at once."""
    if "clean" not in store.data:
        store.put("clean", evaluator.clean(), {"spec": {"clean": True}})
    log(f"clean accuracy {100 * store.data['clean'].mean():.2f}% on n = {store.meta['n']}")
    for r in range(restarts):
        for att in attacks:
            tag = f"r{r}|{att.key}"
            spec = attack_spec(att, protocol)
            if store.has(tag, spec):
                continue
            t0 = time.time()
            correct = evaluator.run(att, r)
            secs = time.time() - t0
            store.put(tag, correct, {"spec": spec, "accuracy": float(correct.mean()),
                                     "seconds": round(secs, 1),
                                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            log(f"[restart {r}] {att.title} ({att.loss}): {100 * correct.mean():.2f}% "
                f"({secs:.0f} s)")


# ------------------------------------------------------------------------------------------------
# The model: a training checkpoint or committed weights
# ------------------------------------------------------------------------------------------------

def checkpoint_steps(workdir: str) -> List[int]:
    d = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(int(s) for s in os.listdir(d) if s.isdigit())


def restore_variables(workdir: str, step: Optional[int] = None):
    """({"params": ..., **model_state}, eval model, step) of the checkpoint at `step` (default:
    the latest) of a configs/daa_release_fmnist.py run in workdir."""
    import jax

    from advjax import train as train_lib
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: run --stage train, or "
                                f"pass --weights")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"--checkpoint-step {step}: {workdir} has checkpoints at {steps}")
    config = study.load_config(CONFIG)
    b = train_lib.build(config, devices=jax.local_devices()[:1])
    state = train_lib.create_train_state(b["model"], b["objective"], b["tx"],
                                         jax.random.PRNGKey(0), b["info"]["shape"])
    ckpt = train_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    state = ckpt.restore(state, step)
    ckpt.close()
    variables = {"params": jax.device_get(state.params), **jax.device_get(state.model_state)}
    return variables, b["eval_model"], int(state.step)


def logits_fn_of(model, variables):
    import jax
    import jax.numpy as jnp
    v = jax.tree_util.tree_map(jnp.asarray, variables)
    return lambda x: model.apply(v, x, train=False)


def load_model(args):
    """(logits_fn, identity dict) from --weights or from the workdir's checkpoint."""
    if args.weights:
        variables, model = weights_lib.load(args.weights)
        entry = weights_lib.read_manifest().get(os.path.basename(args.weights), {})
        ident = {"source": os.path.relpath(os.path.abspath(args.weights), ROOT),
                 "step": entry.get("step"), "params_digest": weights_lib.params_digest(variables)}
    else:
        variables, model, step = restore_variables(args.workdir, args.checkpoint_step)
        ident = {"source": f"{args.workdir} checkpoint", "step": step,
                 "params_digest": weights_lib.params_digest(variables)}
    return logits_fn_of(model, variables), ident, variables


def default_out(args) -> str:
    """--out, else eval_<weights file name>/ or eval_step<S>/ (S: --checkpoint-step or the
    workdir's latest checkpoint)."""
    if args.out:
        return args.out
    if args.weights:
        return os.path.join(HERE, "eval_" + os.path.splitext(os.path.basename(args.weights))[0])
    steps = checkpoint_steps(args.workdir)
    step = args.checkpoint_step if args.checkpoint_step is not None else (steps or [None])[-1]
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {args.workdir}/checkpoints: pass --out, "
                                f"--weights or --workdir")
    return os.path.join(HERE, f"eval_step{step}")


# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------

def stage_train(args) -> None:
    workdir = args.workdir
    steps = checkpoint_steps(workdir)
    latest = steps[-1] if steps else 0
    cut = None if args.paper_protocol else args.max_iterations
    if cut is not None and latest >= cut:
        print(f"[train] {workdir} is at iteration {latest} >= the cut {cut}: nothing to do")
        return
    cmd = [sys.executable, "-m", "advjax.cli", "train", "--config", f"configs/{args.config}.py",
           "--workdir", workdir, "--config.train.keep_checkpoints=1000",
           "--config.train.progress=False"] + [f"--config.{o}" for o in args.train_override]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    log_path = os.path.join(workdir, "train_child.log")
    os.makedirs(workdir, exist_ok=True)
    print(f"[train] {shlex.join(cmd)} (log {log_path}); cut: "
          + ("none (--paper-protocol)" if cut is None else
             f"first checkpoint at or after iteration {cut}")
          + ("" if args.max_hours is None or cut is None else
             f", or the next checkpoint after {args.max_hours} h"), flush=True)
    t0 = time.time()
    reason = "finished the released schedule"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen = latest
        try:
            while proc.poll() is None:
                time.sleep(args.poll_seconds)
                steps = checkpoint_steps(workdir)
                if not steps or steps[-1] == seen:
                    continue
                seen = steps[-1]  # a checkpoint was just written: a safe moment to stop
                over_time = (args.max_hours is not None and cut is not None
                             and time.time() - t0 >= 3600 * args.max_hours)
                if cut is not None and (seen >= cut or over_time):
                    reason = (f"iteration budget {cut}" if seen >= cut else
                              f"wall-time budget {args.max_hours} h")
                    _stop(proc)
                    break
        except KeyboardInterrupt:
            _stop(proc)
            raise
    steps = checkpoint_steps(workdir)
    if proc.returncode not in (0, None) and reason.startswith("finished"):
        raise RuntimeError(f"training exited with {proc.returncode}; see {log_path}")
    info = {"command": study.command_line("daa_fmnist", args.argv), "child": shlex.join(cmd),
            "workdir": workdir, "stopped_at_iteration": steps[-1] if steps else 0,
            "released_iterations": RELEASED_ITERATIONS, "reason": reason,
            "wall_seconds_this_invocation": round(time.time() - t0),
            "training_curve": train_curve(workdir)}
    study.save_results(os.path.join(workdir, "study_train_info.json"), info)
    print(f"[train] stopped at iteration {info['stopped_at_iteration']} ({reason})", flush=True)


def _stop(proc) -> None:
    """SIGINT (KeyboardInterrupt in the child: the checkpoints it wrote stay), then SIGTERM."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()


def train_curve(workdir: str) -> Dict[int, Dict[str, float]]:
    """Training adversarial accuracy (the PGD-30 training batch, as the release's 'accuracy adv
    train') and images per second from metrics.jsonl, by logged step."""
    path = os.path.join(workdir, "metrics.jsonl")
    out: Dict[int, Dict[str, float]] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                m = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if "adv_acc" in m:
                out[int(m["step"])] = {"adv_acc": m["adv_acc"],
                                       "images_per_sec": m.get("images_per_sec")}
    return out


def window_mean(curve: Dict[int, float], step: int, half: int = 1000) -> Optional[float]:
    vals = [v for s, v in curve.items() if abs(s - step) <= half]
    return sum(vals) / len(vals) if vals else None


def stage_eval(args, protocol: Protocol) -> str:
    from advjax import data
    logits_fn, ident, _ = load_model(args)
    out = default_out(args)
    x, y = data.load_numpy("fashion_mnist", "test", limit=args.n)
    store = Store(out, ident, len(x))
    attacks = [a for a in attack_list(args.losses) if not args.attacks or a.key in args.attacks]
    print(f"[eval] model {ident}; {len(attacks)} attacks x {args.restarts} restart(s) on "
          f"n = {len(x)}; results in {out}", flush=True)
    store.meta.setdefault("commands", [])
    cmd = study.command_line("daa_fmnist", args.argv)
    if cmd not in store.meta["commands"]:
        store.meta["commands"].append(cmd)
    evaluate(Evaluator(logits_fn, x, y, protocol), store, attacks, args.restarts,
             protocol=protocol, log=lambda s: print(s, flush=True))
    return out


def stage_report(out: str) -> Dict[str, Any]:
    """results.md / results.json in `out` from the saved per-example results."""
    import numpy as np
    meta = study.load_results(os.path.join(out, "meta.json"))
    if not meta:
        raise FileNotFoundError(f"no meta.json in {out}: run --stage eval first")
    data = dict(np.load(os.path.join(out, "per_example.npz")))
    n, ident = meta["n"], meta["model"]
    step = ident.get("step")
    lines = ["# DAA Table 3 on the released Fashion-MNIST model: results", "",
             f"Model: {ident['source']}, iteration {step} of the released {RELEASED_ITERATIONS:,}"
             f" (params digest {ident['params_digest'][:12]}). n = {n} test images, linf eps 0.2, "
             f"100-step attacks.", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [])), "",
             f"Clean accuracy: {100 * data['clean'].mean():.2f}%.", ""]
    results: Dict[str, Any] = {"model": ident, "n": n, "clean": float(data["clean"].mean())}
    for loss in ("ce", "cw"):
        atts = [a for a in attack_list([loss])
                if any(k.endswith("|" + a.key) for k in data)]
        if not atts:
            continue
        per = {a.key: {int(k[1:].split("|")[0]): data[k] for k in data
                       if k.endswith("|" + a.key)} for a in atts}
        lines += [f"## {'Cross-entropy' if loss == 'ce' else 'CW_inf'} loss", "",
                  "| attack | restarts | restart 0 (%) | mean over restarts (sd) | all restarts "
                  "(%) | paper, 10 restarts (%) | s per restart |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        res_loss = results.setdefault(loss, {})
        for a in atts:
            runs = per[a.key]
            rs = sorted(runs)
            accs = np.array([runs[r].mean() for r in rs])
            worst = np.all(np.stack([runs[r] for r in rs]), axis=0)
            secs = np.mean([meta["attacks"][f"r{r}|{a.key}"]["seconds"] for r in rs])
            sd = f"{100 * accs.std(ddof=1):.2f}" if len(rs) > 1 else "n/a"
            lines.append(f"| {a.title} | {len(rs)} | {100 * runs[rs[0]].mean():.2f} | "
                         f"{100 * accs.mean():.2f} ({sd}) | {100 * worst.mean():.2f} | "
                         f"{PAPER[loss][a.kind]:.2f} | {secs:.0f} |")
            res_loss[a.key] = {"restarts": rs, "per_restart": accs.tolist(),
                               "all_restarts": float(worst.mean()), "seconds": float(secs)}
        pgd = Attack("pgd", loss)
        if pgd.key not in per:
            lines.append("")
            continue
        rows, worst_tests = [], []
        for a in atts:
            if a.kind == "pgd":
                continue
            common = sorted(set(per[a.key]) & set(per[pgd.key]))
            if not common:
                continue
            row = stats.compare(a.title, "PGD", {r: per[a.key][r] for r in common},
                                {r: per[pgd.key][r] for r in common})
            rows.append(row)
            wa = np.all(np.stack([per[a.key][r] for r in common]), axis=0)
            wp = np.all(np.stack([per[pgd.key][r] for r in common]), axis=0)
            w = stats.mcnemar(wa, wp)
            worst_tests.append((a, len(common), w))
            res_loss[a.key + "_vs_pgd"] = {"compare": _jsonable(row), "all_restarts": w}
        if not rows:
            lines.append("")
            continue
        lines += ["", f"Against PGD ({loss}), restart by restart (a restart plays the role of a "
                  f"seed; negative = the attack is stronger than PGD):", "", stats.table(rows),
                  stats.explain(), "",
                  "On the per-example worst case over the restarts both attacks share:", ""]
        for a, k, w in worst_tests:
            lines.append(f"- {a.title} vs PGD, {k} restart(s): {100 * w['accuracy_a']:.2f} vs "
                         f"{100 * w['accuracy_b']:.2f}% ({100 * w['difference']:+.2f} points); "
                         f"{w['b']} images only {a.title} gets right, {w['c']} only PGD; "
                         f"McNemar p = {w['p']:.3g}")
        lines.append("")
    lines += [f"Paper, single run (line 23): PGD {PAPER_SINGLE_RUN['pgd']}%, DAA "
              f"{PAPER_SINGLE_RUN['daa']}% (a gap of "
              f"{PAPER_SINGLE_RUN['pgd'] - PAPER_SINGLE_RUN['daa']:.1f} points)."]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    study.save_results(os.path.join(out, "results.json"), results)
    print("\n".join(lines), flush=True)
    return results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def release_curves() -> Dict[str, Any]:
    path = os.path.join(HERE, "release_curves.json")
    return study.load_results(path)


def stage_curve(args, protocol: Protocol) -> None:
    """PGD-100 accuracy at several checkpoints on the first --curve-n test images."""
    from advjax import data
    steps = checkpoint_steps(args.workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {args.workdir}")
    if args.curve_steps:
        wanted = [int(s) for s in args.curve_steps]
        missing = sorted(set(wanted) - set(steps))
        if missing:
            raise ValueError(f"--curve-steps {missing}: {args.workdir} has checkpoints at {steps}")
    else:
        wanted = sorted({s for s in steps if s % args.curve_every == 0} | {steps[-1]})
    out_dir = args.out or HERE
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "curve.json")
    curve = study.load_results(path)
    x, y = data.load_numpy("fashion_mnist", "test", limit=args.curve_n)
    pgd = Attack("pgd", "ce")
    for s in wanted:
        key = str(s)
        if key in curve and curve[key]["n"] == len(x):
            continue
        variables, model, _ = restore_variables(args.workdir, s)
        ev = Evaluator(logits_fn_of(model, variables), x, y, protocol)
        t0 = time.time()
        clean = ev.clean()
        correct = ev.run(pgd, 0)
        curve[key] = {"n": len(x), "clean": float(clean.mean()), "pgd": float(correct.mean()),
                      "seconds": round(time.time() - t0, 1),
                      "params_digest": weights_lib.params_digest(variables)}
        study.save_results(path, curve)
        print(f"[curve] iteration {s}: clean {100 * clean.mean():.2f}%, PGD-100 "
              f"{100 * correct.mean():.2f}% ({time.time() - t0:.0f} s)", flush=True)
    ours = {s: v["adv_acc"] for s, v in train_curve(args.workdir).items()}
    theirs = release_curves().get("runs", {})
    lines = ["# Training-length curve of the released config", "",
             f"Command: `{study.command_line('daa_fmnist', args.argv)}`", "",
             f"PGD-100 (CE, one restart) and clean accuracy on the first {args.curve_n} test "
             f"images at each checkpoint; training adversarial accuracy = the PGD-30 training "
             f"batch's, mean of the values logged within 1,000 iterations (ours: metrics.jsonl; "
             f"the release's four complete runs: release_curves.json, min-max).", "",
             "| iteration | share of 100k | clean (%) | PGD-100 (%) | train adv. acc., ours | "
             "train adv. acc., release runs |", "|---:|---:|---:|---:|---:|---|"]
    for key in sorted(curve, key=int):
        c, s = curve[key], int(key)
        o = window_mean(ours, s)
        rel = [window_mean({int(a): b for a, b in run["adv_acc_train"]}, s)
               for run in theirs.values() if run["complete"]]
        rel = [v for v in rel if v is not None]
        rel_txt = f"{min(rel):.2f}-{max(rel):.2f}" if rel else ""
        lines.append(f"| {s} | {s / RELEASED_ITERATIONS:.1%} | {100 * c['clean']:.2f} | "
                     f"{100 * c['pgd']:.2f} | {'' if o is None else f'{o:.2f}'} | {rel_txt} |")
    with open(os.path.join(out_dir, "curve.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def stage_time(args, protocol: Protocol) -> None:
    """Seconds per attack on time_n and 2 time_n images; projected seconds on 10,000."""
    import jax

    from advjax import data, models
    steps = checkpoint_steps(args.workdir)
    if steps or args.weights:
        logits_fn, ident, _ = load_model(args)
        what = f"{ident['source']} (iteration {ident['step']})"
    else:  # the cost does not depend on the weights
        model = models.get_model("daa_release_cnn", num_classes=10)
        variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
        logits_fn, what = logits_fn_of(model, variables), "freshly initialized weights"
    n1 = args.time_n
    x, y = data.load_numpy("fashion_mnist", "test", limit=2 * n1)
    kinds = [Attack("rand_fgsm", "ce"), Attack("pgd", "ce"), Attack("mim", "ce"),
             Attack("daa_blob", "ce", 1.1), Attack("daa_dgf", "ce", 0.001)]
    out = {"model": what, "n": [n1, 2 * n1], "load_1min": os.getloadavg()[0],
           "protocol": {**dataclasses.asdict(protocol), "batch_size": "one batch of n"},
           "threads": args.threads, "attacks": {}}
    for att in kinds:
        t = []
        for n in (n1, 2 * n1):
            ev = Evaluator(logits_fn, x[:n], y[:n], dataclasses.replace(protocol, batch_size=n))
            t0 = time.time()
            ev.run(att, 0)
            t.append(time.time() - t0)
        per_image = max(t[1] - t[0], 0.0) / n1
        fixed = max(t[0] - per_image * n1, 0.0)
        out["attacks"][att.kind] = {"seconds": [round(v, 1) for v in t],
                                    "seconds_per_image": per_image,
                                    "fixed_seconds": round(fixed, 1),
                                    "projected_seconds_10k": round(fixed + 10_000 * per_image)}
        print(f"[time] {att.title}: {t[0]:.1f} s on {n1}, {t[1]:.1f} s on {2 * n1} -> "
              f"{per_image:.3f} s/image, ~{fixed + 10_000 * per_image:.0f} s on 10,000",
              flush=True)
    cost = {a.kind: out["attacks"][a.kind]["projected_seconds_10k"] for a in kinds}
    per_restart = {loss: sum(cost[a.kind] for a in attack_list([loss])) for loss in ("ce", "cw")}
    out["projected_seconds_per_restart_10k"] = per_restart
    out["load_1min_after"] = os.getloadavg()[0]
    out["command"] = study.command_line("daa_fmnist", args.argv)
    study.save_results(os.path.join(args.out or HERE, "time.json"), out)
    print(f"[time] per restart on 10,000 images: CE {per_restart['ce'] / 3600:.1f} h, CW "
          f"{per_restart['cw'] / 3600:.1f} h (load {out['load_1min']:.1f} -> "
          f"{out['load_1min_after']:.1f})", flush=True)


def stage_export(args) -> None:
    variables, _, step = restore_variables(args.workdir, args.checkpoint_step)
    path = os.path.join(weights_lib.WEIGHTS_DIR, f"daa_release_step{step}.npz")
    info = study.load_results(os.path.join(args.workdir, "study_train_info.json"))
    entry = weights_lib.save(path, variables, info={
        "config": f"configs/{CONFIG}.py", "step": step,
        "released_iterations": RELEASED_ITERATIONS,
        "train_command": info.get("command", "advjax train --config configs/"
                                  f"{CONFIG}.py --workdir {args.workdir}"),
        "export_command": study.command_line("daa_fmnist", args.argv)})
    print(f"[export] {path}: {os.path.getsize(path) / 1e6:.1f} MB, sha256 {entry['sha256']}")


def stage_figure(args, protocol: Protocol, num_images: int = 8) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advjax import attacks, data, plots
    logits_fn, ident, _ = load_model(args)
    x, y = data.load_numpy("fashion_mnist", "test", limit=protocol.particles)
    x, y = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    key = restart_key(0)
    p = protocol
    it = dict(eps=p.eps, step_size=p.step_size, steps=p.steps)
    x_pgd = attacks.pgd(logits_fn, x, y, key=key, **it)
    x_daa = attacks.daa_blob(logits_fn, x, y, key=key, c=1.1, **it)  # same start as x_pgd

    def pred(z):
        return np.asarray(jnp.argmax(logits_fn(z), -1))

    k = num_images
    rows = [("PGD", np.asarray(x_pgd[:k]), pred(x_pgd)[:k]),
            ("DAA-BLOB", np.asarray(x_daa[:k]), pred(x_daa)[:k])]
    plots.comparison_grid(os.path.join(HERE, "figure1.png"), np.asarray(x[:k]), np.asarray(y[:k]),
                          pred(x)[:k], rows, eps=p.eps,
                          title=f"released DAA model, iteration {ident['step']}, linf eps {p.eps}:"
                                f" PGD vs DAA-BLOB (c = 1.1, M = {p.particles}; red = wrong)")


def main(argv=None):
    p = argparse.ArgumentParser(description="experiments/daa_fmnist (module docstring)")
    p.add_argument("--stage", nargs="+", default=["train", "eval", "report"],
                   choices=["train", "eval", "report", "curve", "time", "export", "figure"])
    p.add_argument("--paper-protocol", action="store_true",
                   help="the released schedule unchanged (no cut), 10 restarts, all 10,000 images")
    p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "daa_release"))
    p.add_argument("--config", default=CONFIG,
                   help="training config of --stage train (the study's claims use the default; "
                        "others only for smoke tests)")
    p.add_argument("--train-override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides of the training child (smoke tests only)")
    p.add_argument("--max-iterations", type=int, default=DEFAULT_CUT,
                   help="CPU cut: stop at the first checkpoint at or after this iteration")
    p.add_argument("--max-hours", type=float, default=None,
                   help="CPU cut: stop at the first checkpoint after this much wall time")
    p.add_argument("--poll-seconds", type=float, default=30.0)
    p.add_argument("--checkpoint-step", type=int, default=None,
                   help="evaluate / export this checkpoint (default: the latest)")
    p.add_argument("--weights", default=None, help="a committed weights/*.npz instead")
    p.add_argument("--out", default=None,
                   help="results folder (eval: default eval_step<S>/; curve, time: default this "
                        "folder)")
    p.add_argument("--n", type=int, default=10_000, help="the first N test images")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--losses", nargs="+", default=["ce", "cw"], choices=["ce", "cw"])
    p.add_argument("--attacks", nargs="*", default=None,
                   help="only these attack keys, e.g. ce/pgd ce/daa_blob_1.1")
    p.add_argument("--curve-n", type=int, default=1000)
    p.add_argument("--curve-steps", nargs="*", default=None)
    p.add_argument("--curve-every", type=int, default=3000)
    p.add_argument("--time-n", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, choices=(0, 1),
                   help="1: XLA:CPU on one thread (the training child too); 0: XLA's default "
                        "threads and JAX's default backend (a GPU when there is one)")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.workdir = os.path.abspath(args.workdir)  # the training child runs in the repository root
    if args.paper_protocol:
        args.restarts, args.n = max(args.restarts, 10), 10_000
        args.stage = list(dict.fromkeys(["train", "eval", "report"] + args.stage))
    if args.threads == 1:  # one XLA:CPU thread (and the CPU backend unless JAX_PLATFORMS says)
        study.pin_threads(1)
    # --threads 0: XLA's default threads and JAX's default backend (a GPU when there is one).
    protocol = Protocol()
    t0 = time.time()
    out = None
    if "train" in args.stage:
        stage_train(args)
    if "time" in args.stage:
        stage_time(args, protocol)
    if "curve" in args.stage:
        stage_curve(args, protocol)
    if "eval" in args.stage:
        out = stage_eval(args, protocol)
    if "report" in args.stage:
        stage_report(out or default_out(args))
    if "export" in args.stage:
        stage_export(args)
    if "figure" in args.stage:
        stage_figure(args, protocol)
    print(f"wall time {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
