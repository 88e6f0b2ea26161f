"""The training loop: `train_and_evaluate(config, workdir)`.

Knows nothing about any particular method: the config names an objective (`advjax.objectives`), a model
(`advjax.models`) and a dataset (`advjax.data`). One step is the pure `train_step(state, batch)`,
written for the whole global batch and compiled once with `jax.jit` over a one-axis device mesh
(GSPMD data parallelism):

  * the global batch (config.train.batch_size) is split evenly over processes and devices (each
    device holds a slice of the batch axis; the state is replicated);
  * the step is the one-device program, partitioned by XLA: gradients, metrics and the objective's
    state are means over the global batch, batch norm computes its statistics over the global batch,
    and batch-level terms see the whole batch;
  * randomness is drawn for the global batch from one key per step, fold_in(fold_in(PRNGKey(seed),
    step), 0), with JAX's partitionable Threefry (`jax_threefry_partitionable`, on by default): the
    noise of example i is a function of (key, i, the draw's shape) whatever the number of devices,
    and each device computes only its own rows. So random starts, dropout masks and sampled
    attacks are per example and the same on 1 or N devices, and N devices follow the one-device
    trajectory for every objective (tested with random starts and dropout, up to float rounding).

Keys and the data order are pure functions of (seed, step), so a run killed at any point and restarted
with the same command resumes from its last checkpoint (orbax) and ends with the same parameters as an
uninterrupted run. Guards stop a run that cannot be a result, keeping its checkpoints:
  * a non-finite loss or gradient leaves the state untouched and stops the run with a
    FloatingPointError naming the step;
  * the collapse guard (`CollapseGuard`, config.train.collapse_*) stops a run whose model predicts
    one class, or is at chance, over a window after warm-up, with a TrainingCollapsedError;
  * SIGTERM / SIGINT (preemption, Ctrl-C) finish the step, write the pending metrics row and a
    checkpoint, and raise `preemption.Preempted` (`advjax train` exits with status 75).
The workdir is locked for one writer and bound to its config (`advjax.workdir`); metrics.jsonl is
append-only; a checkpoint that cannot be restored is set aside and the newest one that loads is used.

Multi-host (`advjax.distributed`, config.distributed): each process reads its own slice of every
global batch (`data.batches(num_shards=process_count, shard_index=process_index)`) and the mesh spans
the devices of all processes, so N processes follow the trajectory of one process with all the
devices. Every process logs; process 0 writes metrics, config.json and eval files; every process
takes part in orbax's checkpoint saves and restores.

Outputs in `workdir`: checkpoints/, metrics.jsonl (one JSON object per logged step), tb/ (TensorBoard
event files), config.json, eval.json and eval.md (the final evaluation table; eval.n<N>.* when only
the first N test examples are evaluated).

Several seeds (config.train.seeds = K > 1): K independent replicas in one process, replica k being
the single-seed run with seed config.seed + k (its own initialization, data order, attack / dropout
keys and method state). Each has its own workdir, WORKDIR/seed<config.seed + k> (named by the seed,
so a directory says which run it holds), with the files above and a config.json whose `seed` is
the replica's (train.seeds is kept: the directory stays bound to the group); WORKDIR holds the
group's config.json, the lock, and eval_seeds.json / .md (every seed's evaluation, mean and std).
`advjax eval` / `attack` and `restore_state` work on a seed's workdir as on any run's.
How replicas are stepped (`resolve_seeds_mode`, train.seeds_mode):
  * "sequential" (the default on CPU): the single-seed program, compiled once with the key as an
    argument (`compile_keyed_step`) and dispatched once per replica per step: each replica is its
    single-seed run bit for bit;
  * "vmap" (the default on GPU / TPU): one program, `train_step` under `jax.vmap` over the stacked
    states, batches and keys (`replicas_train_step`): the same runs up to float rounding. On XLA:CPU
    it is about 3x slower than "sequential" (CNN-4C3F PGD-AT, K = 3 and 5: 0.34x and 0.30x the
    single-seed images/s, against 1.04x and 1.01x; README, "Several seeds"): vmapped convolutions
    with per-replica kernels become grouped convolutions (feature_group_count = K), which XLA:CPU
    runs 1.6-2.4x slower than K plain ones (`benchmarks/multi_seed.py --convs`).
Guarantees per seed: every seed's workdir is locked and its stored config checked (as WORKDIR's:
train.seeds may not change on resume; train.seeds_mode may). The replicas save one after the other
at the same steps, keeping one checkpoint more than train.keep_checkpoints until all have saved,
so a kill between two saves always leaves a step that every replica has: a rerun resumes all
replicas from their common step (a replica one checkpoint ahead has that checkpoint moved to
checkpoints.superseded/; one further ahead, which no interrupted save leaves, is refused). A
non-finite loss or a collapse in any replica stops all of them (they are one run), after the
healthy replicas' metrics rows of that step are written, with an error naming each failed seed;
every replica keeps its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from advjax import config as config_lib
from advjax import data as data_lib
from advjax import evaluate as evaluate_lib
from advjax import models as models_lib
from advjax import objectives as objectives_lib
from advjax import preemption
from advjax import workdir as workdir_lib

AXIS = "batch"
CHECKPOINTS = "checkpoints"
DAMAGED_CHECKPOINTS = "checkpoints.damaged"
SUPERSEDED_CHECKPOINTS = "checkpoints.superseded"


class TrainState(train_state.TrainState):
    """Flax TrainState plus the model's non-parameter collections and the objective's state."""
    model_state: Any = struct.field(default_factory=dict)
    method_state: Any = struct.field(default_factory=dict)


class ConfigError(ValueError):
    """The config cannot run: an unknown key, a value out of range, an unknown attack or model
    field, a wrong objective hyperparameter. Raised before any data is loaded or step compiled."""


class TrainingCollapsedError(RuntimeError):
    """The collapse guard stopped the run: its model is not a result (see `CollapseGuard`)."""


# ------------------------------------------------------------------------------------------------
# Construction from a config
# ------------------------------------------------------------------------------------------------

def _kwargs(cfg: ml_collections.ConfigDict, drop=("name",)) -> Dict[str, Any]:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {k: v for k, v in d.items() if k not in drop}


def make_model(config, num_classes: int, *, bn_axis_name: Optional[str] = None):
    """The Flax module named by config.model (extra fields are the module's attributes).

    The training loop passes no bn_axis_name: its step is written for the global batch, so batch
    norm already sees every example; bn_axis_name is for callers that pmap or shard_map a step.
    """
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


def _num_classes(config) -> int:
    return data_lib.dataset_info(config.data.name)["num_classes"]


def validate(config) -> None:
    """Checks everything about `config` that can be checked without data or compilation.

    Unknown keys and out-of-range train / eval values (`config.check_config`), the model's fields,
    the objective's hyperparameters (names and values, by building it), the optimizer and schedule,
    and every attack spec of config.eval.attacks (`evaluate.attack_from_spec`: names and keywords;
    labels must be unique). Raises ConfigError naming what is wrong.
    """
    try:
        config_lib.check_config(config)
        num_classes = _num_classes(config)
        model = make_model(config, num_classes)
        objectives_lib.make_objective(config.objective.name, model.apply, _kwargs(config.objective))
        make_optimizer(config.optim, 1, config.train.epochs)
        labels = [evaluate_lib.attack_from_spec(dict(spec))[0] for spec in config.eval.attacks]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(str(e).strip("'\"")) from e
    duplicates = sorted({l for l in labels if labels.count(l) > 1})
    if duplicates:
        raise ConfigError(f"config.eval.attacks: labels {duplicates} are used more than once; "
                          f"give each spec its own 'label'")


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------

def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def step_key(base_key: jax.Array, step) -> jax.Array:
    """The key of one step, shared by the whole global batch (the trailing fold_in(., 0) keeps the
    streams of earlier one-device runs, whose only device had index 0)."""
    return jax.random.fold_in(jax.random.fold_in(base_key, step), 0)


def prediction_probe(state: TrainState, batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """What the collapse guard watches, on the clean batch in evaluation mode (before the update):
    probe_acc = mean_i 1[argmax f(x_i) = y_i], probe_top_class = max_c mean_i 1[argmax f(x_i) = c]."""
    logits = state.apply_fn({"params": state.params, **state.model_state}, batch["image"],
                            train=False)
    pred = jnp.argmax(logits, axis=-1)
    counts = jnp.sum(jax.nn.one_hot(pred, logits.shape[-1], dtype=jnp.float32), axis=0)
    return {"probe_acc": jnp.mean((pred == batch["label"]).astype(jnp.float32)),
            "probe_top_class": jnp.max(counts) / pred.shape[0]}


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, objective, base_key,
               probe_every: int = 0):
    """One step on the global batch. Returns (new_state, metrics).

    A non-finite loss or gradient leaves the state unchanged and reports metrics["finite"] = 0.
    With probe_every > 0, the steps before a multiple of probe_every (those whose metrics are
    logged) also report `prediction_probe`; the other steps report zeros there.
    """
    key = step_key(base_key, state.step)
    obj_state = {"model": state.model_state, "method": state.method_state}

    def loss_fn(params):
        return objective(params, obj_state, batch, key)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(aux["metrics"])
    finite = _all_finite(metrics["loss"]) & _all_finite(grads)
    new_state = state.apply_gradients(grads=grads, model_state=aux["state"]["model"],
                                      method_state=aux["state"]["method"])
    new_state = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics.update(finite=finite.astype(jnp.float32), grad_norm=optax.tree.norm(grads))
    if probe_every:
        zeros = {"probe_acc": jnp.zeros(()), "probe_top_class": jnp.zeros(())}
        metrics.update(jax.lax.cond((state.step + 1) % probe_every == 0,
                                    lambda: prediction_probe(state, batch), lambda: zeros))
    return new_state, metrics


# ------------------------------------------------------------------------------------------------
# Data parallelism: one mesh axis over the devices of all processes
# ------------------------------------------------------------------------------------------------

def make_mesh(devices) -> Mesh:
    """A one-axis mesh (AXIS) over `devices`, ordered by process, then device id, so that process p's
    devices hold the p-th slice of every global batch (the slice it reads)."""
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(ordered), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree, mesh: Mesh):
    """Host arrays (identical on every process) -> global arrays replicated on every mesh device."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def shard_batch(batch: Dict[str, np.ndarray], mesh: Mesh):
    """This process's slice of the global batch -> global arrays split over the batch axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def host_copy(tree):
    """A replicated global pytree (state or metrics) as NumPy arrays on this host."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)


def compile_step(objective, base_key, mesh: Mesh, *, probe_every: int = 0):
    """`train_step` jitted for `mesh`: (replicated state, batch-sharded batch) -> (state, metrics);
    the input state is donated."""
    step = functools.partial(train_step, objective=objective, base_key=base_key,
                             probe_every=probe_every)
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharded(mesh)), out_shardings=(rep, rep),
                   donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# Several seeds: K replicas of a run in one process (config.train.seeds)
# ------------------------------------------------------------------------------------------------

def seed_workdirs(config, workdir: str) -> List[Tuple[int, str]]:
    """[(seed, workdir)] of a run's replicas: seed config.seed + k in WORKDIR/seed<config.seed + k>
    for k < config.train.seeds, or [(config.seed, workdir)] for a single-seed run.

    A replica's directory is named by its seed (not its index k), so that WORKDIR/seed3 holds the run
    of seed 3 whatever the base seed of the group, and reads as such in a listing or a study table.
    """
    k = int(config.train.get("seeds", 1))
    if k == 1:
        return [(int(config.seed), workdir)]
    return [(int(config.seed) + i, os.path.join(workdir, f"seed{int(config.seed) + i}"))
            for i in range(k)]


def replica_config(config, seed: int):
    """The config of one replica: `config` with config.seed = seed (train.seeds is kept, so that a
    replica's workdir stays bound to its multi-seed run)."""
    c = copy.deepcopy(config)
    c.seed = seed
    return c


def resolve_seeds_mode(config, devices) -> str:
    """How the replicas of a run are stepped: "single" (train.seeds = 1: the single-seed program),
    else train.seeds_mode, where "auto" is "vmap" on GPU / TPU and "sequential" on CPU.

    Why "sequential" on XLA:CPU: under vmap, a convolution whose kernel differs per replica becomes
    one grouped convolution (feature_group_count = K), which XLA:CPU runs slower than K plain ones,
    so the vmapped step loses to the single-seed step run K times (CNN-4C3F PGD-AT, batch 128, on a
    quiet 2-core CPU: 0.30-0.34x against 1.01-1.04x; `python benchmarks/multi_seed.py`). GPUs and
    TPUs have fast grouped convolutions, and a small model leaves them idle, so there one vmapped
    program is the better bet (not measured).
    """
    if int(config.train.get("seeds", 1)) == 1:
        return "single"
    mode = config.train.get("seeds_mode", "auto")
    if mode == "auto":
        return "vmap" if devices[0].platform in ("gpu", "tpu", "cuda", "rocm") else "sequential"
    return mode


def replicas_train_step(states: TrainState, batches: Dict[str, jax.Array], base_keys: jax.Array,
                        *, objective, probe_every: int = 0):
    """One step of K replicas in one program: `train_step` under `jax.vmap` over the leading axis of
    the stacked states, batches (K, B, ...) and base keys (K, 2). Replica k computes what a
    single-seed run with its key and batch computes (up to float rounding: the batched convolutions
    and matmuls sum in another order). Returns (new states, metrics with a leading K axis).

    The probe's predicate (the step count, the same for every replica) is evaluated outside the
    vmap, so that the probe runs only on the steps before a multiple of probe_every, as in
    `train_step` (inside the vmap, lax.cond of a batched predicate would compute it every step).
    """
    def one(state, batch, key):
        return train_step(state, batch, objective=objective, base_key=key)

    new_states, metrics = jax.vmap(one)(states, batches, base_keys)
    if probe_every:
        k = base_keys.shape[0]
        zeros = {"probe_acc": jnp.zeros((k,)), "probe_top_class": jnp.zeros((k,))}
        metrics.update(jax.lax.cond((states.step[0] + 1) % probe_every == 0,
                                    lambda: jax.vmap(prediction_probe)(states, batches),
                                    lambda: zeros))
    return new_states, metrics


def replicas_batch_sharded(mesh: Mesh) -> NamedSharding:
    """Stacked replica batches (K, B, ...): the replica axis whole, the batch axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(None, AXIS))


def compile_keyed_step(objective, mesh: Mesh, *, probe_every: int = 0):
    """`train_step` jitted for `mesh` with the base key as an argument: (replicated state,
    batch-sharded batch, replicated base key) -> (state, metrics), one program for every seed (the
    "sequential" mode of several seeds). The input state is donated."""
    def step(state, batch, base_key):
        return train_step(state, batch, objective=objective, base_key=base_key,
                          probe_every=probe_every)

    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharded(mesh), rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def compile_replicas_step(objective, mesh: Mesh, *, probe_every: int = 0):
    """`replicas_train_step` jitted for `mesh`: (replicated stacked states, stacked batches split
    over the batch axis, replicated (K, 2) base keys) -> (states, metrics); states are donated."""
    step = functools.partial(replicas_train_step, objective=objective, probe_every=probe_every)
    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, replicas_batch_sharded(mesh), rep),
                   out_shardings=(rep, rep), donate_argnums=(0,))


def stack_states(states):
    """Host pytrees with the same structure -> one pytree whose leaves have a leading replica axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)


def unstack_state(stacked, k: int):
    """Replica k of a stacked host pytree (copies, so that each replica owns its arrays)."""
    return jax.tree_util.tree_map(lambda a: np.array(a[k]), stacked)


class _Replicas:
    """The device state of a run's replicas and the step that advances all of them by one.

    mode "single" (train.seeds = 1): `compile_step`, the program of a single-seed run, unchanged.
    "sequential": `compile_keyed_step`, compiled once and called once per replica per step (each
      call is that seed's single-seed step: same program, the key an argument instead of a constant).
    "vmap": `compile_replicas_step`, one program for all replicas (states stacked on a leading axis).
    """

    def __init__(self, states: List[TrainState], base_keys: List[jax.Array], b, mode: str, *,
                 probe_every: int):
        self.mode, self.mesh, self.objective = mode, b["mesh"], b["objective"]
        self.n = len(states)
        mesh, obj = self.mesh, self.objective
        if mode == "single":
            self._step = compile_step(obj, base_keys[0], mesh, probe_every=probe_every)
            self.device = [replicate(states[0], mesh)]
        elif mode == "sequential":
            self._step = compile_keyed_step(obj, mesh, probe_every=probe_every)
            self.keys = [replicate(np.asarray(k), mesh) for k in base_keys]
            self.device = [replicate(s, mesh) for s in states]
        elif mode == "vmap":
            self._step = compile_replicas_step(obj, mesh, probe_every=probe_every)
            self.keys = replicate(np.stack([np.asarray(k) for k in base_keys]), mesh)
            self.device = replicate(stack_states(states), mesh)
        else:
            raise ValueError(f"train.seeds_mode must be one of {config_lib.SEEDS_MODES}, "
                             f"got {mode!r}")

    def step(self, batches: List[Dict[str, np.ndarray]]):
        """Dispatches one step of every replica (batches[k]: this process's slice of replica k's
        global batch); returns the metrics as device arrays (read them with `host_metrics`)."""
        if self.mode == "single":
            self.device[0], metrics = self._step(self.device[0], shard_batch(batches[0], self.mesh))
            return metrics
        if self.mode == "sequential":
            out = []
            for k, batch in enumerate(batches):
                self.device[k], metrics = self._step(self.device[k],
                                                     shard_batch(batch, self.mesh), self.keys[k])
                out.append(metrics)
            return out
        sharding = replicas_batch_sharded(self.mesh)
        stacked = {name: jax.make_array_from_process_local_data(
            sharding, np.stack([np.asarray(b[name]) for b in batches])) for name in batches[0]}
        self.device, metrics = self._step(self.device, stacked, self.keys)
        return metrics

    def host_metrics(self, metrics) -> List[Dict[str, np.ndarray]]:
        """The metrics `step` returned, on the host, one dict per replica."""
        if self.mode == "single":
            return [host_copy(metrics)]
        if self.mode == "sequential":
            return [host_copy(m) for m in metrics]
        stacked = host_copy(metrics)
        return [unstack_state(stacked, k) for k in range(self.n)]

    def host_states(self) -> List[TrainState]:
        """Each replica's state on the host (a checkpoint's content)."""
        if self.mode == "vmap":
            stacked = host_copy(self.device)
            return [unstack_state(stacked, k) for k in range(self.n)]
        return [host_copy(d) for d in self.device]

    def end_of_epoch(self) -> None:
        """Runs the objective's epoch hook on each replica's method state."""
        if self.objective.end_of_epoch is None:
            return
        if self.mode != "vmap":
            self.device = [_end_of_epoch(d, self.objective, self.mesh) for d in self.device]
            return
        states = [s.replace(method_state=self.objective.end_of_epoch(s.method_state))
                  for s in self.host_states()]
        self.device = replicate(stack_states(states), self.mesh)


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

class CheckpointError(RuntimeError):
    """No checkpoint in the directory could be restored (each step's error is in the message)."""


class Checkpointer:
    """Orbax CheckpointManager over the state's pytree (params, opt_state, model/method state, step).

    Orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
    killed mid-save leaves the previous checkpoints intact. `restore` tries the newest checkpoint
    first and falls back to older ones when one cannot be read (a truncated or overwritten file, a
    missing _METADATA), warning with the step it skipped; with `set_aside=True` (training) the
    unreadable ones are moved to ../checkpoints.damaged/ (never deleted) once an older one loads. In
    a multi-process run every process calls `save` and `restore` (orbax synchronizes them and
    process 0 writes the replicated host arrays); the directory must be on a shared file system.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        import orbax.checkpoint as ocp
        if max_to_keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {max_to_keep} (0 would delete every "
                             f"checkpoint, the trained model included)")
        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    @staticmethod
    def _tree(state: TrainState):
        return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
                "model_state": state.model_state, "method_state": state.method_state}

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> List[int]:
        return sorted(self.manager.all_steps())

    def prune(self, keep: int) -> None:
        """Deletes all but the newest `keep` checkpoints (a multi-seed run keeps one more than
        train.keep_checkpoints while its replicas save, and prunes once all of them have saved, so
        that a kill between two replicas' saves always leaves a step they all have)."""
        for step in self.all_steps()[:-keep]:
            self.manager.delete(step)

    def save(self, state: TrainState, *, force: bool = False):
        step = int(state.step)
        if self.manager.latest_step() == step:
            return
        self.manager.save(step, args=self._ocp.args.StandardSave(self._tree(state)), force=force)
        self.manager.wait_until_finished()

    def restore(self, state: TrainState, step: Optional[int] = None, *,
                set_aside: bool = False) -> TrainState:
        """`state` with the values of checkpoint `step` (default: the newest one that loads)."""
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        failed: List[Tuple[int, BaseException]] = []
        for s in steps:
            try:
                tree = self.manager.restore(s, args=self._ocp.args.StandardRestore(self._tree(state)))
            except Exception as e:  # orbax / tensorstore raise many types for unreadable files
                failed.append((s, e))
                continue
            for bad, err in failed:
                first = (str(err).strip().splitlines() or [""])[0][:200]
                print(f"advjax: warning: checkpoint at step {bad} in {self.directory} cannot be "
                      f"restored ({type(err).__name__}: {first}); using step {s}", file=sys.stderr,
                      flush=True)
            if failed and set_aside:
                self._set_aside([bad for bad, _ in failed])
            return state.replace(**tree)
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored into this run's state; if the "
            f"config changed (model, optimizer, objective), that is why. Errors:\n" + "\n".join(
                f"  step {s}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                for s, e in failed))

    def _set_aside(self, steps, *, into: str = DAMAGED_CHECKPOINTS,
                  why: str = "unreadable") -> None:
        """Moves step directories to <workdir>/<into>/ (never deleted; process 0 only): unreadable
        ones to checkpoints.damaged/, a multi-seed replica's steps beyond the other replicas' to
        checkpoints.superseded/."""
        from advjax import distributed
        distributed.sync("advjax-restore-done")
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), into)
            os.makedirs(aside, exist_ok=True)
            for s in steps:
                target = os.path.join(aside, f"{s}-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(os.path.join(self.directory, str(s)), target)
                print(f"advjax: warning: moved the {why} checkpoint at step {s} to {target}",
                      file=sys.stderr, flush=True)
        distributed.sync("advjax-set-aside-done")
        self.manager.reload()

    def close(self):
        self.manager.close()


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------

class MetricsWriter:
    """metrics.jsonl (`workdir.MetricsLog`: append-only) plus TensorBoard event files (tensorboardX)
    in the workdir; process 0 writes."""

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, workdir_lib.METRICS_FILE)
        self.tb = None
        if not enabled:
            return
        self.log = workdir_lib.MetricsLog(self.path, resume_step=resume_step)
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Dict[str, float]):
        if not self.enabled:
            return
        self.log.append({"step": step, **scalars})
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
# Guards
# ------------------------------------------------------------------------------------------------

class CollapseGuard:
    """Stops a run whose model has collapsed to a constant or chance-level predictor.

    Watches `prediction_probe` (evaluation mode, clean training batch, every log_every steps). From
    step warmup_steps + window_steps on, at each probe it averages the probes of the last
    window_steps steps and reports a collapse when

        mean probe_top_class >= top_class      (one class takes (almost) all predictions), or
        mean probe_acc <= 1 / num_classes + acc_margin      (accuracy at chance).

    Averaging over the window (several batches) keeps one unlucky batch from stopping a run. The
    window starts afresh when a run resumes. config.train: collapse_guard (on/off),
    collapse_warmup_epochs, collapse_window_epochs, collapse_top_class, collapse_acc_margin.
    """

    def __init__(self, num_classes: int, *, warmup_steps: int, window_steps: int,
                 top_class: float = 0.9, acc_margin: float = 0.02, enabled: bool = True):
        self.num_classes = num_classes
        self.warmup_steps, self.window_steps = warmup_steps, max(window_steps, 1)
        self.top_class, self.acc_margin, self.enabled = top_class, acc_margin, enabled
        self.probes: List[Tuple[int, float, float]] = []

    @classmethod
    def from_config(cls, config, num_classes: int, steps_per_epoch: int) -> "CollapseGuard":
        t = config.train
        return cls(num_classes,
                   warmup_steps=int(round(t.collapse_warmup_epochs * steps_per_epoch)),
                   window_steps=max(int(round(t.collapse_window_epochs * steps_per_epoch)),
                                    t.log_every),
                   top_class=t.collapse_top_class, acc_margin=t.collapse_acc_margin,
                   enabled=bool(t.collapse_guard))

    def observe(self, step: int, acc: float, top_class: float) -> Optional[str]:
        """Records the probe of `step`; returns a description of the collapse, or None."""
        if not self.enabled:
            return None
        self.probes = [p for p in self.probes if p[0] > step - self.window_steps]
        self.probes.append((step, float(acc), float(top_class)))
        if step < self.warmup_steps + self.window_steps:
            return None
        mean_acc = float(np.mean([p[1] for p in self.probes]))
        mean_top = float(np.mean([p[2] for p in self.probes]))
        chance = 1.0 / self.num_classes
        span = f"over steps {self.probes[0][0]}-{step} ({len(self.probes)} probes)"
        if mean_top >= self.top_class:
            return (f"one class takes {100 * mean_top:.1f}% of the predictions {span} "
                    f"(limit train.collapse_top_class={self.top_class})")
        if mean_acc <= chance + self.acc_margin:
            return (f"training accuracy {100 * mean_acc:.1f}% {span} is at chance "
                    f"({100 * chance:.1f}% + train.collapse_acc_margin={self.acc_margin})")
        return None


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def _end_of_epoch(rstate, objective, mesh):
    """Runs the objective's epoch hook on the (replicated) method state and replicates the result."""
    if objective.end_of_epoch is None:
        return rstate
    state = host_copy(rstate)
    state = state.replace(method_state=objective.end_of_epoch(state.method_state))
    return replicate(state, mesh)


def _devices(config):
    devices = jax.local_devices()
    n = config.train.get("num_devices", 0) or len(devices)
    if n > len(devices):
        raise ValueError(f"train.num_devices={n} but only {len(devices)} local devices")
    return devices[:n]


def _mesh_devices(devices):
    """The mesh's devices: the local ones in a single-process run; in a multi-process run every
    process's devices (all processes must use all their local devices)."""
    if jax.process_count() == 1:
        return devices
    if list(devices) != list(jax.local_devices()):
        raise ValueError("train.num_devices must be 0 (all local devices) in a multi-process run")
    return jax.devices()


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
    model = make_model(config, info["num_classes"])
    objective = objectives_lib.make_objective(config.objective.name, model.apply,
                                              _kwargs(config.objective))
    tx, sched = make_optimizer(config.optim, steps_per_epoch, config.train.epochs)
    return dict(devices=devices, info=info, train=(train_x, train_y), model=model,
                eval_model=model, objective=objective, tx=tx, schedule=sched,
                steps_per_epoch=steps_per_epoch)


@dataclasses.dataclass
class _Replica:
    """One seed of a run: its seed, workdir, checkpoints, metrics writer and collapse guard."""
    seed: int
    workdir: str
    ckpt: Checkpointer
    writer: MetricsWriter
    guard: CollapseGuard


class _Run:
    """Bookkeeping of one training run between steps: the pending step's metrics (read one step
    late, so that dispatch stays asynchronous), the guards, metrics rows and checkpoints, for each
    of its replicas (one unless config.train.seeds > 1)."""

    def __init__(self, config, b, workdir, replicas: List[_Replica], host_metrics):
        self.config, self.b, self.workdir, self.replicas = config, b, workdir, replicas
        self.host_metrics = host_metrics  # device metrics of a step -> one host dict per replica
        self.steps_per_epoch = b["steps_per_epoch"]
        self.total_steps = self.steps_per_epoch * config.train.epochs
        self.log_every = config.train.log_every
        self.keep = config.train.keep_checkpoints
        self.pending = None
        self.progress: Optional[_Progress] = None
        self.t_window, self.imgs_window = time.perf_counter(), 0

    def after_step(self, step: int, metrics) -> None:
        """Called right after step `step` is dispatched: reads the previous step's metrics."""
        self.flush()
        self.pending = (step, metrics)
        self.imgs_window += self.config.train.batch_size

    def flush(self) -> None:
        """Reads the pending step's metrics: NaN guard, its metrics row if due, collapse guard.

        With several replicas, every healthy replica's row is written before a failure of another
        one is raised; the error names each failed seed (all replicas stop: they are one run).
        """
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        due = step % self.log_every == 0 or step == self.total_steps
        ips = self._images_per_sec() if due else 0.0
        failures: List[Tuple[_Replica, type, str]] = []
        for r, m in zip(self.replicas, self.host_metrics(metrics)):
            if not m["finite"]:
                failures.append((r, FloatingPointError, (
                    f"non-finite loss or gradient at step {step} (loss={m['loss']}); the state was "
                    f"not updated")))
                continue
            probed = "probe_acc" in m and step % self.log_every == 0
            if due:
                self._write_row(r, step, m, probed, ips)
            if probed:
                collapse = r.guard.observe(step, m["probe_acc"], m["probe_top_class"])
                if collapse:
                    failures.append((r, TrainingCollapsedError, (
                        f"training collapsed at step {step}: {collapse}. This run is not a result: "
                        f"lower the learning rate, add warm-up (optim.warmup_epochs), or set "
                        f"train.collapse_guard=False to train on")))
        if failures:
            raise self._failure(failures)

    def _failure(self, failures) -> Exception:
        kinds = [kind for _, kind, _ in failures]
        kind = FloatingPointError if FloatingPointError in kinds else TrainingCollapsedError
        if len(self.replicas) == 1:
            return kind(f"{failures[0][2]}. {self._checkpoints_kept()}")
        named = "; ".join(f"seed {r.seed} ({r.workdir}): {text}" for r, _, text in failures)
        return kind(f"{named}. All {len(self.replicas)} seeds of {self.workdir} stop (they run "
                    f"as one); the others were healthy. {self._checkpoints_kept()}")

    def _checkpoints_kept(self) -> str:
        if len(self.replicas) == 1:
            ckpt = self.replicas[0].ckpt
            return f"Checkpoints kept in {ckpt.directory} (newest: step {ckpt.latest_step()})."
        return "Checkpoints kept in " + ", ".join(
            f"{r.ckpt.directory} (newest: step {r.ckpt.latest_step()})" for r in self.replicas) + "."

    def _images_per_sec(self) -> float:
        """Images per second of one replica since the last row (the process trains K times that)."""
        now = time.perf_counter()
        ips = self.imgs_window / max(now - self.t_window, 1e-9)
        self.t_window, self.imgs_window = now, 0
        return ips

    def _write_row(self, r: _Replica, step: int, m, probed: bool, ips: float) -> None:
        drop = {"finite"} if probed else {"finite", "probe_acc", "probe_top_class"}
        scalars = {k: float(v) for k, v in m.items() if k not in drop}
        scalars["lr"] = float(self.b["schedule"](step - 1))
        scalars["images_per_sec"] = ips
        scalars["epoch"] = (step - 1) // self.steps_per_epoch
        r.writer.write(step, scalars)
        if self.progress is not None and r is self.replicas[0]:
            self.progress.update(0, {"loss": f"{scalars['loss']:.3f}",
                                     "img/s": f"{ips * len(self.replicas):.0f}"})

    def save(self, replicas: "_Replicas") -> None:
        """A checkpoint of every replica, after the metrics rows of its step (so no row is ever
        missing). Several replicas save one after the other, then prune to keep_checkpoints."""
        self.flush()
        for r, state in zip(self.replicas, replicas.host_states()):
            r.ckpt.save(state)
        if len(self.replicas) > 1:
            for r in self.replicas:
                r.ckpt.prune(self.keep)


def _train_steps(config, b, replicas: _Replicas, run: _Run, stop: preemption.StopSignal,
                 start_step: int) -> None:
    """The epochs from start_step on (the final states stay in `replicas`). Raises Preempted after
    a signal (with a checkpoint at the step it stopped after). Replica k reads the batches of its
    own seed (data order rng = its seed), as a single-seed run with that seed does."""
    spe, epochs = b["steps_per_epoch"], config.train.epochs
    ckpt_every = config.train.checkpoint_every_steps
    local_bs = config.train.batch_size // jax.process_count()
    progress = run.progress = _Progress(run.total_steps, start_step,
                                        config.train.progress and jax.process_index() == 0,
                                        config.objective.name)
    train_x, train_y = b["train"]
    step = start_step
    try:
        for epoch in range(start_step // spe, epochs):
            streams = [data_lib.batches(
                train_x, train_y, local_bs, rng=r.seed, epoch=epoch, shuffle=True,
                drop_remainder=True, augment=config.data.get("augment") or None,
                num_shards=jax.process_count(), shard_index=jax.process_index(),
                start_step=step - epoch * spe) for r in run.replicas]
            for batches in zip(*streams):
                metrics = replicas.step([{"image": batch["image"], "label": batch["label"]}
                                         for batch in batches])
                step += 1
                run.after_step(step, metrics)
                progress.update(1, {})
                # The end-of-epoch save below covers the last step of an epoch (after the epoch hook).
                if ckpt_every and step % ckpt_every == 0 and step % spe:
                    run.save(replicas)
                signal_name = stop.agreed()
                if signal_name:
                    if step % spe == 0:
                        replicas.end_of_epoch()
                    run.save(replicas)
                    raise preemption.Preempted(step, signal_name, run.workdir)
            run.flush()
            replicas.end_of_epoch()
            run.save(replicas)
    finally:
        progress.close()


def _own_history(workdir: str) -> bool:
    ckdir = os.path.join(workdir, CHECKPOINTS)
    if os.path.isdir(ckdir) and any(d.isdigit() for d in os.listdir(ckdir)):
        return True
    metrics = os.path.join(workdir, workdir_lib.METRICS_FILE)
    return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def _seed_subdirs_with_history(workdir: str) -> List[str]:
    """The seed<N>/ subdirectories of a multi-seed run's workdir that hold history."""
    if not os.path.isdir(workdir):
        return []
    return sorted(d for d in os.listdir(workdir) if d.startswith("seed") and d[4:].isdigit()
                  and _own_history(os.path.join(workdir, d)))


def _has_history(workdir: str) -> bool:
    """True when the workdir holds a checkpoint or metrics rows (something a config change would
    mix with another experiment), itself or in the seed<N>/ workdirs of a multi-seed run."""
    return _own_history(workdir) or bool(_seed_subdirs_with_history(workdir))


def _all_processes(fn):
    """Runs fn on every process; if it raised WorkdirError / ConfigError on any process, raises on
    all of them (so that no process is left waiting in a collective for one that gave up)."""
    err = None
    try:
        out = fn()
    except (workdir_lib.WorkdirError, ConfigError) as e:
        err, out = e, None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        failed = multihost_utils.process_allgather(np.int32(err is not None))
        if err is None and np.any(failed):
            err = workdir_lib.WorkdirError("another process refused to start (see its message)")
    if err is not None:
        raise err
    return out


def _check_stored_config(config, workdir, allow_change: bool, command: str):
    """The changes of config against workdir's config.json that the run goes on with (refuses the
    others unless allow_change); [] for a workdir without history."""
    if not _has_history(workdir):
        return []
    return workdir_lib.check_config(workdir, config, config_lib.default_config(),
                                    allow_change=allow_change, command=command)


def _record_config(config, workdir, changes, start_step: int) -> None:
    """Writes config.json (process 0), keeping the stored one beside it when the trajectory changed
    (train.epochs or a change allowed with --allow_config_change)."""
    from advjax import distributed
    distributed.sync("advjax-config-read")  # every process has compared before it is replaced
    if jax.process_index() != 0:
        return
    for key, old, new in changes:
        print(f"advjax: resuming with config.{key} changed: {old!r} -> {new!r}", flush=True)
    trajectory = [c for c in changes if c[0] == "train.epochs" or
                  not workdir_lib.is_resumable_key(c[0])]
    workdir_lib.write_config(workdir, config, previous_step=start_step if trajectory else None)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> Dict[str, Any]:
    """Trains the configured objective, checkpointing to `workdir`, then evaluates the result.

    Restarting with the same config and workdir resumes from the latest checkpoint. Returns the final
    evaluation (`RobustAccuracy.as_dict()`) plus "step" and "train_seconds"; with
    config.train.seeds = K > 1, `seeds_summary` of the K replicas (see "Several seeds" in the module
    docstring).

    Raises, before any compute: ConfigError (the config cannot run), workdir.WorkdirError (the
    workdir is a file, not writable, used by another run, or holds another experiment: its
    config.json differs outside `workdir.RESUMABLE_KEYS`, unless allow_config_change; for several
    seeds, also replicas whose checkpoints cannot be brought to a common step). During training:
    FloatingPointError, TrainingCollapsedError, preemption.Preempted (after SIGTERM / SIGINT, with a
    checkpoint at the step it stopped after).
    """
    from advjax import distributed
    validate(config)
    distributed.maybe_initialize(config)
    is_lead = jax.process_index() == 0
    replicas = seed_workdirs(config, workdir)
    multi = len(replicas) > 1
    dirs = [workdir] + [d for _, d in replicas if multi]
    for d in dirs:
        _all_processes(lambda: workdir_lib.check_writable(d))
    locks = [workdir_lib.Lock(d) for d in dirs]
    try:
        for lock in locks:
            _all_processes(lambda: lock.acquire() if is_lead else None)
        changes = _all_processes(lambda: _check_stored_config(config, workdir, allow_config_change,
                                                              "train"))
        replica_changes = [
            _all_processes(lambda: _check_stored_config(replica_config(config, seed), d,
                                                        allow_config_change, "train"))
            for seed, d in replicas] if multi else []
        return _train_and_evaluate(config, workdir, changes, replica_changes)
    finally:
        for lock in reversed(locks):
            lock.release()


def _restore_replicas(config, workdir, reps: List[Tuple[int, str, Checkpointer]],
                      states: List[TrainState]) -> Tuple[List[TrainState], int]:
    """(states, start step): each replica's state at the step the run resumes from.

    One replica: its newest restorable checkpoint. Several: their common step, the smallest of their
    newest restorable steps (a run killed between two replicas' saves leaves some replicas one
    checkpoint ahead; `Checkpointer.prune` after the saves keeps the common step on disk). A
    replica ahead resumes from its checkpoint at the common step (its initial state at step 0), and
    its newer checkpoint is moved to checkpoints.superseded/ (its metrics rows after the common step
    are cut, as on any resume). More than one checkpoint ahead cannot come from an interrupted save
    (the replica went on alone, e.g. resumed with --allow_config_change): refused with the steps.
    """
    if len(reps) == 1:
        _, wd, ckpt = reps[0]
        state = states[0]
        if ckpt.latest_step() is not None:
            state = ckpt.restore(state, set_aside=True)
            print(f"Resumed from checkpoint at step {int(state.step)} in {wd}", flush=True)
        return [state], int(state.step)
    restored = [ckpt.restore(state, set_aside=True) if ckpt.latest_step() is not None else state
                for (_, _, ckpt), state in zip(reps, states)]
    steps = [int(s.step) for s in restored]
    common = min(steps)
    ahead = [k for k, step in enumerate(steps) if step > common]
    for k in ahead:
        seed, wd, ckpt = reps[k]
        newer = [s for s in ckpt.all_steps() if s > common]
        has_common = common == 0 or common in ckpt.all_steps()
        if len(newer) > 1 or not has_common:
            where = ", ".join(f"seed {sd}: step {st}" for (sd, _, _), st in zip(reps, steps))
            raise workdir_lib.WorkdirError(
                f"the seeds of {workdir!r} stopped at different steps ({where}); a multi-seed run "
                f"resumes every seed from their common step {common}, but seed {seed} has "
                f"{'checkpoints ' + str(newer) if len(newer) > 1 else 'no checkpoint'} "
                f"{'after' if len(newer) > 1 else 'at'} step {common} in {ckpt.directory}, which "
                f"an interrupted save does not leave (was it trained on its own?). Move the "
                f"checkpoints that should not count out of its checkpoints/ directory, or use a "
                f"new --workdir")
        try:
            restored[k] = states[k] if common == 0 else ckpt.restore(states[k], step=common)
        except CheckpointError as e:
            raise workdir_lib.WorkdirError(
                f"seed {seed}: its checkpoint at the seeds' common step {common} cannot be "
                f"restored ({e}); move it and the newer ones out of {ckpt.directory}, or use a "
                f"new --workdir") from None
        ckpt._set_aside(newer, into=SUPERSEDED_CHECKPOINTS,
                        why=f"seed {seed}'s (ahead of the other seeds' step {common})")
    if common:
        for seed, wd, _ in reps:
            print(f"Resumed from checkpoint at step {common} in {wd}", flush=True)
    return restored, common


def _train_and_evaluate(config, workdir: str, changes, replica_changes=()) -> Dict[str, Any]:
    b = build(config)
    b["mesh"] = make_mesh(_mesh_devices(b["devices"]))
    is_lead = jax.process_index() == 0
    seeds = seed_workdirs(config, workdir)
    multi = len(seeds) > 1
    keep = config.train.keep_checkpoints
    states, base_keys, ckpts, writers = [], [], [], []
    try:
        for seed, wd in seeds:
            init_key, base_key = jax.random.split(jax.random.PRNGKey(seed))
            states.append(create_train_state(b["model"], b["objective"], b["tx"], init_key,
                                             b["info"]["shape"]))
            base_keys.append(base_key)
            # Several seeds keep one more while they save one after the other (`Checkpointer.prune`).
            ckpts.append(Checkpointer(os.path.join(wd, CHECKPOINTS),
                                      max_to_keep=keep + 1 if multi else keep))
        states, start_step = _restore_replicas(
            config, workdir, [(seed, wd, ck) for (seed, wd), ck in zip(seeds, ckpts)], states)
        _record_config(config, workdir, changes, start_step)
        for (seed, wd), seed_changes in zip(seeds, replica_changes):
            _record_config(replica_config(config, seed), wd, seed_changes, start_step)
        if jax.process_count() > 1:
            print(f"process {jax.process_index()} of {jax.process_count()}: {len(b['devices'])} "
                  f"local devices, {config.train.batch_size // jax.process_count()} examples per "
                  f"step from data shard {jax.process_index()}, starting at step {start_step}",
                  flush=True)
        for _, wd in seeds:
            writers.append(MetricsWriter(wd, enabled=is_lead, resume_step=start_step))
        replicas = _Replicas(states, base_keys, b, resolve_seeds_mode(config, b["devices"]),
                             probe_every=config.train.log_every)
        guards = [CollapseGuard.from_config(config, b["info"]["num_classes"], b["steps_per_epoch"])
                  for _ in seeds]
        run = _Run(config, b, workdir, [_Replica(seed, wd, ck, w, g) for (seed, wd), ck, w, g
                                        in zip(seeds, ckpts, writers, guards)],
                   replicas.host_metrics)
        t_start = time.perf_counter()
        with preemption.StopSignal() as stop:
            _train_steps(config, b, replicas, run, stop, start_step)
        train_seconds = time.perf_counter() - t_start
        states = replicas.host_states()
        for ckpt, state in zip(ckpts, states):
            ckpt.save(state)
        if multi:
            for ckpt in ckpts:
                ckpt.prune(keep)
    finally:
        for ckpt in ckpts:
            ckpt.close()
        for writer in writers:
            writer.close()
    if not multi:
        result = evaluate_state(config, states[0], b["eval_model"], workdir, write=is_lead)
        result["train_seconds"] = train_seconds
        return result
    results = [evaluate_state(replica_config(config, seed), state, b["eval_model"], wd,
                              write=is_lead) for (seed, wd), state in zip(seeds, states)]
    return seeds_summary(config, workdir, results, train_seconds=train_seconds, write=is_lead)


SEEDS_SUMMARY = "eval_seeds"
#: Accuracy columns of an evaluation averaged over seeds, besides attack/<label> and
#: targeted/<label> (targeted success rates): clean, the per-example worst case, AutoAttack's.
SEEDS_SUMMARY_COLUMNS = ("clean", "a_rob", "autoattack/clean", "autoattack")


def seeds_summary(config, workdir: str, results: List[Dict[str, Any]], *,
                  train_seconds: float, write: bool = True) -> Dict[str, Any]:
    """The evaluations of a multi-seed run's replicas side by side: per seed, and the mean and the
    sample standard deviation (ddof = 1) over seeds of every accuracy column. Written to
    WORKDIR/eval_seeds.json / .md (each seed's own eval.json / .md are in WORKDIR/seed<N>/)."""
    seeds = [s for s, _ in seed_workdirs(config, workdir)]
    columns = [k for k in results[0] if k in SEEDS_SUMMARY_COLUMNS
               or k.startswith(("attack/", "targeted/"))]
    values = {c: np.array([r[c] for r in results], dtype=np.float64) for c in columns}
    mean = {c: float(v.mean()) for c, v in values.items()}
    std = {c: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for c, v in values.items()}
    per_seed = {str(s): {k: v for k, v in r.items() if k != "table"} for s, r in zip(seeds, results)}
    out = {"seeds": seeds, "n": results[0]["n"], "step": results[0]["step"],
           "workdirs": [d for _, d in seed_workdirs(config, workdir)],
           "mean": mean, "std": std, "per_seed": per_seed, "train_seconds": train_seconds}
    head = ["seed"] + [c[len("attack/"):] if c.startswith("attack/") else c for c in columns]
    lines = [f"### {config.objective.name} on {config.data.name} ({config.model.name}), "
             f"step {out['step']}, {out['n']} test examples, seeds {seeds[0]}-{seeds[-1]}", "",
             "| " + " | ".join(head) + " |", "|---" + "|---:" * len(columns) + "|"]
    lines += ["| " + " | ".join([str(s)] + [f"{100 * r[c]:.2f}" for c in columns]) + " |"
              for s, r in zip(seeds, results)]
    lines.append("| mean +- std | " + " | ".join(
        f"{100 * mean[c]:.2f} +- {100 * std[c]:.2f}" for c in columns) + " |")
    table = "\n".join(lines) + "\n"
    if write and jax.process_index() == 0:
        workdir_lib.atomic_write(os.path.join(workdir, SEEDS_SUMMARY + ".json"),
                                 json.dumps(out, indent=2))
        workdir_lib.atomic_write(os.path.join(workdir, SEEDS_SUMMARY + ".md"), table)
    out["table"] = table
    return out


def restore_state(config, workdir: str, *, allow_config_change: bool = False):
    """(state, eval_model) from the newest restorable checkpoint in workdir (`advjax eval` /
    `attack`). Refuses a config whose model or dataset differs from the workdir's config.json, and
    warns about other differences, unless allow_config_change (`workdir.check_config`)."""
    validate(config)
    _check_stored_config(config, workdir, allow_config_change, "eval")
    b = build(config, devices=jax.local_devices()[:1])
    state = create_train_state(b["model"], b["objective"], b["tx"], jax.random.PRNGKey(0),
                               b["info"]["shape"])
    ckdir = os.path.join(workdir, CHECKPOINTS)
    if not os.path.isdir(ckdir):
        seed_dirs = _seed_subdirs_with_history(workdir)
        if seed_dirs:
            raise FileNotFoundError(
                f"{workdir} is the workdir of a multi-seed run (train.seeds); its checkpoints are "
                f"in each seed's workdir: {', '.join(os.path.join(workdir, d) for d in seed_dirs)}")
        raise FileNotFoundError(f"no checkpoint in {ckdir}; "
                                f"train first: advjax train --config ... --workdir {workdir}")
    ckpt = Checkpointer(ckdir)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {ckdir}; "
                                    f"train first: advjax train --config ... --workdir {workdir}")
        state = ckpt.restore(state)
    finally:
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
    eval.md to workdir (or, when those hold a fuller evaluation, eval.n<N>.json / .md:
    `workdir.eval_paths`)."""
    res = evaluate_result(config, state, model, limit=limit)
    aa = autoattack_result(config, state, model, limit=limit)
    out = dict(res.as_dict(), step=int(state.step))
    if aa is not None:
        out.update(aa.as_dict())
    if write and workdir is not None and jax.process_index() == 0:  # one writer per run
        json_path, md_path = workdir_lib.eval_paths(workdir, out)
        workdir_lib.atomic_write(json_path, json.dumps(out, indent=2))
        md = res.markdown(f"{config.objective.name} on {config.data.name} ({config.model.name}), "
                          f"step {int(state.step)}, {res.n} test examples")
        if aa is not None:
            md += "\n" + aa.markdown()
        workdir_lib.atomic_write(md_path, md)
        out["eval_file"] = json_path
    out["table"] = res.markdown(f"{config.objective.name} on {config.data.name}")
    if aa is not None:
        out["table"] += "\n" + aa.markdown()
    return out
