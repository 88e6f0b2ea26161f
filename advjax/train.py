"""The training loop: `train_and_evaluate(config, workdir)`.

Knows nothing about any particular method: the config names an objective (`advjax.objectives`), a model
(`advjax.models`) and a dataset (`advjax.data`). One step is the pure `train_step(state, batch)`,
run data-parallel over the local devices with `jax.pmap`:

  * the global batch (config.train.batch_size) is split evenly over processes and local devices;
  * gradients, metrics and the floating-point objective state are averaged across devices (`pmean`),
    and batch norm computes its statistics over the global batch (models get `bn_axis_name`), so a
    run on N devices follows the same trajectory as one device with the same global batch;
  * every device has its own PRNG stream: key = fold_in(fold_in(PRNGKey(seed), step), device).

Keys and the data order are pure functions of (seed, step), so a run killed at any point and restarted
with the same command resumes from its last checkpoint (orbax) and ends with the same parameters as an
uninterrupted run. A non-finite loss or gradient leaves the state untouched and stops the run with a
FloatingPointError naming the step; the checkpoints written before it are intact.

Multi-host (`advjax.distributed`, config.distributed): each process reads its own slice of every
global batch (`data.batches(num_shards=process_count, shard_index=process_index)`) and the pmap spans
the devices of all processes, so `axis_index` is the global device index and N processes follow the
trajectory of one process with all the devices. Every process logs; process 0 writes metrics,
config.json and eval files; every process takes part in orbax's checkpoint saves and restores.

Outputs in `workdir`: checkpoints/, metrics.jsonl (one JSON object per logged step), tb/ (TensorBoard
event files), eval.json and eval.md (the final evaluation table).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import jax_utils, struct
from flax.training import train_state

from advjax import data as data_lib
from advjax import evaluate as evaluate_lib
from advjax import models as models_lib
from advjax import objectives as objectives_lib

AXIS = "batch"


class TrainState(train_state.TrainState):
    """Flax TrainState plus the model's non-parameter collections and the objective's state."""
    model_state: Any = struct.field(default_factory=dict)
    method_state: Any = struct.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Construction from a config
# ------------------------------------------------------------------------------------------------

def _kwargs(cfg: ml_collections.ConfigDict, drop=("name",)) -> Dict[str, Any]:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {k: v for k, v in d.items() if k not in drop}


def make_model(config, num_classes: int, *, bn_axis_name: Optional[str] = None):
    """The Flax module named by config.model (extra fields are the module's attributes)."""
    kw = _kwargs(config.model)
    kw.setdefault("num_classes", num_classes)
    if bn_axis_name is not None and "bn_axis_name" in models_lib.model_fields(config.model.name):
        kw["bn_axis_name"] = bn_axis_name
    return models_lib.get_model(config.model.name, **kw)


def make_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int):
    """Learning-rate schedule from config.optim.schedule: constant | cosine | piecewise.

    piecewise: multiply by optim.decay_factor at each epoch in optim.decay_epochs (e.g. the ADR MNIST
    schedule x0.1 at 55/75/90). optim.warmup_epochs > 0 adds a linear warm-up.
    """
    total = max(steps_per_epoch * epochs, 1)
    lr = optim.lr
    if optim.schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif optim.schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, total)
    elif optim.schedule == "piecewise":
        sched = optax.piecewise_constant_schedule(
            lr, {int(e * steps_per_epoch): optim.decay_factor for e in optim.decay_epochs})
    else:
        raise ValueError(f"optim.schedule must be constant, cosine or piecewise, "
                         f"got {optim.schedule!r}")
    warm = int(optim.get("warmup_epochs", 0) * steps_per_epoch)
    if warm > 0:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warm), sched], [warm])
    return sched


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int):
    """optax chain from config.optim: sgd (momentum, nesterov, L2 weight decay) | adam | adamw."""
    sched = make_schedule(optim, steps_per_epoch, epochs)
    parts = []
    if optim.get("grad_clip", 0.0):
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    if optim.name == "sgd":
        if optim.weight_decay:
            # PyTorch-style L2: decay added to the gradient before momentum.
            parts.append(optax.add_decayed_weights(optim.weight_decay))
        parts.append(optax.sgd(sched, momentum=optim.momentum or None, nesterov=optim.nesterov))
    elif optim.name == "adam":
        if optim.weight_decay:
            parts.append(optax.add_decayed_weights(optim.weight_decay))
        parts.append(optax.adam(sched))
    elif optim.name == "adamw":
        parts.append(optax.adamw(sched, weight_decay=optim.weight_decay))
    else:
        raise ValueError(f"optim.name must be sgd, adam or adamw, got {optim.name!r}")
    return optax.chain(*parts), sched


def create_train_state(model, objective, tx, key, input_shape) -> TrainState:
    variables = models_lib.init_variables(model, key, input_shape)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=model_state,
                             method_state=objective.init_method_state(jax.random.fold_in(key, 1)))


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------

def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _pmean_floats(tree, axis_name):
    return jax.tree_util.tree_map(
        lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x, tree)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, objective, base_key,
               axis_name: str = AXIS):
    """One data-parallel step (run under pmap with `axis_name`). Returns (new_state, metrics).

    A non-finite loss or gradient leaves the state unchanged and reports metrics["finite"] = 0.
    """
    key = jax.random.fold_in(jax.random.fold_in(base_key, state.step),
                             jax.lax.axis_index(axis_name))
    obj_state = {"model": state.model_state, "method": state.method_state}

    def loss_fn(params):
        return objective(params, obj_state, batch, key)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, axis_name)
    new_obj_state = _pmean_floats(aux["state"], axis_name)
    metrics = jax.lax.pmean(aux["metrics"], axis_name)
    finite = _all_finite(metrics["loss"]) & _all_finite(grads)
    new_state = state.apply_gradients(grads=grads, model_state=new_obj_state["model"],
                                      method_state=new_obj_state["method"])
    new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = dict(metrics, finite=finite.astype(jnp.float32),
                   grad_norm=optax.tree.norm(grads))
    return new_state, metrics


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

class Checkpointer:
    """Orbax CheckpointManager over the state's pytree (params, opt_state, model/method state, step).

    Orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
    killed mid-save leaves the previous checkpoints intact. In a multi-process run every process
    calls `save` and `restore` (orbax synchronizes them and process 0 writes the replicated host
    arrays); the directory must be on a file system all processes share.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    @staticmethod
    def _tree(state: TrainState):
        return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
                "model_state": state.model_state, "method_state": state.method_state}

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, state: TrainState, *, force: bool = False):
        step = int(state.step)
        if self.manager.latest_step() == step:
            return
        self.manager.save(step, args=self._ocp.args.StandardSave(self._tree(state)), force=force)
        self.manager.wait_until_finished()

    def restore(self, state: TrainState, step: Optional[int] = None) -> TrainState:
        step = self.manager.latest_step() if step is None else step
        tree = self.manager.restore(step, args=self._ocp.args.StandardRestore(self._tree(state)))
        return state.replace(**tree)

    def close(self):
        self.manager.close()


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------

class MetricsWriter:
    """metrics.jsonl plus TensorBoard event files (tensorboardX) in the workdir; process 0 writes."""

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if not enabled:
            return
        if os.path.exists(self.path):
            # Drop entries past the step we resume from: they will be recomputed identically.
            with open(self.path) as f:
                kept = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Dict[str, float]):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


class _Progress:
    """A one-line progress display with images/s (tqdm when available and enabled)."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                                dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int, postfix: Dict[str, str]):
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def _unreplicate(rstate):
    """The first device's copy of a replicated pytree (state or metrics), on the host."""
    return jax.device_get(jax.tree_util.tree_map(lambda a: a[0], rstate))


def _end_of_epoch(rstate, objective, devices):
    """Runs the objective's epoch hook on the method state (identical on every device after the
    step's pmean) and replicates the result back."""
    state = jax.tree_util.tree_map(lambda a: a[0], rstate)
    state = state.replace(method_state=objective.end_of_epoch(state.method_state))
    return jax_utils.replicate(state, devices)


def _devices(config):
    devices = jax.local_devices()
    n = config.train.get("num_devices", 0) or len(devices)
    if n > len(devices):
        raise ValueError(f"train.num_devices={n} but only {len(devices)} local devices")
    return devices[:n]


def _pmap_devices(devices):
    """The device list for `jax.pmap`: the local devices in a single-process run; in a multi-process
    run every process must pass the same global list (process 0's devices, then process 1's, ...),
    so the mapped axis spans all processes and `axis_index` is the global device index."""
    if jax.process_count() == 1:
        return devices
    if list(devices) != list(jax.local_devices()):
        raise ValueError("train.num_devices must be 0 (all local devices) in a multi-process run")
    global_devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return global_devices


def _shard(batch, n_dev):
    return {k: v.reshape((n_dev, v.shape[0] // n_dev) + v.shape[1:]) for k, v in batch.items()}


def build(config, *, devices=None):
    """Everything a run needs that does not depend on the workdir: data, model, objective, optimizer."""
    from advjax import distributed
    distributed.maybe_initialize(config)
    devices = devices if devices is not None else _devices(config)
    n_dev = len(devices)
    n_proc = jax.process_count()
    gbs = config.train.batch_size
    if gbs % (n_dev * n_proc):
        raise ValueError(f"train.batch_size={gbs} must be divisible by devices x processes = "
                         f"{n_dev} x {n_proc}")
    info = data_lib.dataset_info(config.data.name)
    train_x, train_y = data_lib.load_numpy(config.data.name, "train", data_dir=config.data.data_dir,
                                           limit=config.data.train_limit or None)
    steps_per_epoch = data_lib.num_batches(len(train_x), gbs // n_proc, num_shards=n_proc,
                                           drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={gbs} exceeds the {len(train_x)} training examples")
    model = make_model(config, info["num_classes"], bn_axis_name=AXIS)
    eval_model = make_model(config, info["num_classes"])
    objective = objectives_lib.make_objective(config.objective.name, model.apply,
                                              _kwargs(config.objective))
    tx, sched = make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
    return dict(devices=devices, info=info, train=(train_x, train_y), model=model,
                eval_model=eval_model, objective=objective, tx=tx, schedule=sched,
                steps_per_epoch=steps_per_epoch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
    """Trains the configured objective, checkpointing to `workdir`, then evaluates the result.

    Restarting with the same config and workdir resumes from the latest checkpoint. Returns the final
    evaluation (`RobustAccuracy.as_dict()`) plus "train_seconds".
    """
    os.makedirs(workdir, exist_ok=True)
    b = build(config)
    devices, n_dev = b["devices"], len(b["devices"])
    is_lead = jax.process_index() == 0
    steps_per_epoch, epochs = b["steps_per_epoch"], config.train.epochs
    total_steps = steps_per_epoch * epochs
    key = jax.random.PRNGKey(config.seed)
    init_key, base_key = jax.random.split(key)
    state = create_train_state(b["model"], b["objective"], b["tx"], init_key,
                               b["info"]["shape"])
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                        max_to_keep=config.train.get("keep_checkpoints", 3))
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        print(f"Resumed from checkpoint at step {int(state.step)} in {workdir}", flush=True)
    start_step = int(state.step)
    if is_lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    if jax.process_count() > 1:
        print(f"process {jax.process_index()} of {jax.process_count()}: {n_dev} local devices, "
              f"{config.train.batch_size // jax.process_count()} examples per step from data shard "
              f"{jax.process_index()}, starting at step {start_step}", flush=True)

    p_step = jax.pmap(functools.partial(train_step, objective=b["objective"], base_key=base_key),
                      axis_name=AXIS, devices=_pmap_devices(devices), donate_argnums=(0,))
    rstate = jax_utils.replicate(state, devices)
    writer = MetricsWriter(workdir, enabled=is_lead, resume_step=start_step)
    local_bs = config.train.batch_size // jax.process_count()
    log_every = config.train.get("log_every", 50)
    ckpt_every = config.train.get("checkpoint_every_steps", 0)
    progress = _Progress(total_steps, start_step, config.train.get("progress", True) and is_lead,
                         config.objective.name)
    train_x, train_y = b["train"]
    t_start = time.perf_counter()
    t_window, imgs_window = time.perf_counter(), 0
    pending = None  # (step, metrics) of the previous step, checked one step late to keep dispatch async

    def check(pending_item):
        s, m = pending_item
        m = _unreplicate(m)
        if not m["finite"]:
            last = ckpt.latest_step()
            raise FloatingPointError(
                f"non-finite loss or gradient at step {s} (loss={m['loss']}); the state was not "
                f"updated. Last good checkpoint: step {last} in {os.path.join(workdir, 'checkpoints')}")
        return m

    def log(pending_item, m, epoch):
        nonlocal t_window, imgs_window
        s = pending_item[0]
        if s % log_every and s != total_steps:
            return
        now = time.perf_counter()
        ips = imgs_window / max(now - t_window, 1e-9)
        t_window, imgs_window = now, 0
        scalars = {k: float(v) for k, v in m.items() if k != "finite"}
        scalars["lr"] = float(b["schedule"](s - 1))
        scalars["images_per_sec"] = ips
        scalars["epoch"] = epoch
        writer.write(s, scalars)
        progress.update(0, {"loss": f"{scalars['loss']:.3f}", "img/s": f"{ips:.0f}"})

    step = start_step
    try:
        for epoch in range(start_step // steps_per_epoch, epochs):
            first = step - epoch * steps_per_epoch
            batches = data_lib.batches(
                train_x, train_y, local_bs, rng=config.seed, epoch=epoch, shuffle=True,
                drop_remainder=True, augment=config.data.get("augment") or None,
                num_shards=jax.process_count(), shard_index=jax.process_index(),
                start_step=first)
            for batch in batches:
                batch = _shard({"image": batch["image"], "label": batch["label"]}, n_dev)
                rstate, metrics = p_step(rstate, batch)
                if pending is not None:
                    log(pending, check(pending), epoch)
                step += 1
                imgs_window += config.train.batch_size
                pending = (step, metrics)
                progress.update(1, {})
                # The end-of-epoch save below covers the last step of an epoch (after the epoch hook).
                if ckpt_every and step % ckpt_every == 0 and step % steps_per_epoch:
                    check(pending)
                    ckpt.save(_unreplicate(rstate))
            if pending is not None:
                check(pending)
            if b["objective"].end_of_epoch is not None:
                rstate = _end_of_epoch(rstate, b["objective"], devices)
            ckpt.save(_unreplicate(rstate))
        if pending is not None and pending[0] == total_steps:  # the last step has no successor
            log(pending, check(pending), epochs - 1)
    finally:
        progress.close()
    train_seconds = time.perf_counter() - t_start
    state = _unreplicate(rstate)
    ckpt.save(state)
    ckpt.close()
    result = evaluate_state(config, state, b["eval_model"], workdir, write=is_lead)
    result["train_seconds"] = train_seconds
    writer.close()
    return result


def restore_state(config, workdir: str):
    """(state, eval_model) from the latest checkpoint in workdir (for `advjax eval` / `attack`)."""
    b = build(config, devices=jax.local_devices()[:1])
    state = create_train_state(b["model"], b["objective"], b["tx"], jax.random.PRNGKey(0),
                               b["info"]["shape"])
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; "
                                f"train first: advjax train --config ... --workdir {workdir}")
    state = ckpt.restore(state)
    ckpt.close()
    return state, b["eval_model"]


def eval_logits_fn(model, state):
    # Device arrays: a state fetched to the host holds NumPy arrays, which Flax's lifted transforms
    # (e.g. the nn.vmap of advjax.models.Ensemble) refuse as closure constants.
    variables = jax.tree_util.tree_map(jnp.asarray, {"params": state.params, **state.model_state})

    def logits_fn(x):
        return model.apply(variables, x, train=False)

    if isinstance(model, models_lib.Ensemble):
        # Member logits (N, B, C) for attacks on the members (TA-MOO ENS, "tamoo_ens_members").
        logits_fn.members = lambda x: model.apply(variables, x, train=False, return_members=True)
    return logits_fn


def evaluate_result(config, state, model, *, limit: Optional[int] = None):
    """`RobustAccuracy` of config.eval.attacks on the test split (with a progress bar on the first
    process unless config.train.progress is off; targeted success rates of the specs with a
    "target" rule, `evaluate.attack_from_spec`).

    In a multi-process run every process evaluates its share of the evaluation batches and the
    per-example results are gathered, so each process returns the numbers of the whole test set,
    equal to a single-process evaluation (`evaluate.robust_accuracy(across_processes=True)`).
    """
    test_x, test_y = data_lib.load_numpy(config.data.name, "test", data_dir=config.data.data_dir,
                                         limit=limit or config.eval.get("limit") or None)
    logits_fn = eval_logits_fn(model, state)
    attacks = [dict(a) for a in config.eval.attacks]
    return evaluate_lib.robust_accuracy(logits_fn, (test_x, test_y), attacks,
                                        key=jax.random.PRNGKey(config.seed + 1),
                                        batch_size=config.eval.batch_size,
                                        across_processes=jax.process_count() > 1,
                                        targeted=any("target" in a for a in attacks),
                                        progress=config.train.get("progress", True)
                                        and jax.process_index() == 0)


def autoattack_result(config, state, model, *, limit: Optional[int] = None):
    """`evaluate.autoattack` of config.eval.autoattack on the test split, or None while its norm is
    empty. Every process runs the whole cascade (same key, same result)."""
    aa = config.eval.get("autoattack")
    if aa is None or not aa.get("norm"):
        return None
    test_x, test_y = data_lib.load_numpy(config.data.name, "test", data_dir=config.data.data_dir,
                                         limit=limit or config.eval.get("limit") or None)
    return evaluate_lib.autoattack(eval_logits_fn(model, state), (test_x, test_y), norm=aa.norm,
                                   eps=float(aa.eps), version=aa.get("version", "standard"),
                                   key=jax.random.PRNGKey(config.seed + 3),
                                   batch_size=config.eval.batch_size,
                                   progress=config.train.get("progress", True)
                                   and jax.process_index() == 0)


def evaluate_state(config, state, model, workdir: Optional[str], *, write: bool = True,
                   limit: Optional[int] = None) -> Dict[str, Any]:
    """Runs config.eval.attacks (and config.eval.autoattack) on the test split; writes eval.json /
    eval.md to workdir."""
    res = evaluate_result(config, state, model, limit=limit)
    aa = autoattack_result(config, state, model, limit=limit)
    out = res.as_dict()
    if aa is not None:
        out.update(aa.as_dict())
    if write and workdir is not None and jax.process_index() == 0:  # one writer per run
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(out, f, indent=2)
        with open(os.path.join(workdir, "eval.md"), "w") as f:
            f.write(res.markdown(f"{config.objective.name} on {config.data.name} "
                                 f"({config.model.name}), step {int(state.step)}"))
            if aa is not None:
                f.write("\n" + aa.markdown())
    out["table"] = res.markdown(f"{config.objective.name} on {config.data.name}")
    if aa is not None:
        out["table"] += "\n" + aa.markdown()
    return out
