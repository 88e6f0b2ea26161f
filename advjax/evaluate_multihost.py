"""Robust accuracy over several processes (`jax.distributed`): each process evaluates its share of the
test set, and the per-example results are gathered so that every process returns the numbers of the
whole set, equal to `evaluate.robust_accuracy` run in one process.

Sharding is by evaluation batch: batch b (the same batches as a single-process run, the last one
padded) goes to process b mod P and uses the same key, fold_in(fold_in(key, b), j) for attack j.
A batch is never split, so a batch-level attack (DAA: the batch is its particle set) sees exactly the
particles it would see in one process. `_gather_batches` puts the results back in batch order, so
each test example is counted exactly once.

(Kept beside `evaluate.py` rather than in it while that module was being edited elsewhere; the
per-batch evaluation follows `robust_accuracy`: clean predictions, each attack's predictions with a
`valid` row mask for batch-level attacks, A_rob over the clean input and every attack.)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax import evaluate as evaluate_lib
from advjax.attacks import _validation


def _is_batch_level(attack) -> bool:
    """True for attacks whose examples interact (DAA): they take a `valid` row mask."""
    return bool(getattr(getattr(attack, "func", attack), "batch_level", False))


def _jitted_predictions(logits_fn, attacks: Mapping[str, Callable]):
    """One jitted (x, y, key, valid) -> predictions function per column, "clean" first."""
    def attacked(attack, x, y, key, valid):
        kwargs = {"valid": valid} if _is_batch_level(attack) else {}
        return jnp.argmax(logits_fn(attack(logits_fn, x, y, key=key, **kwargs)), -1)

    fns = {"clean": jax.jit(lambda x, y, key, valid: jnp.argmax(logits_fn(x), -1))}
    for name, attack in attacks.items():
        fns[name] = jax.jit(lambda x, y, key, valid, a=attack: attacked(a, x, y, key, valid))
    return fns


def _gather_batches(correct: Dict[str, List[np.ndarray]], seconds: Dict[str, float],
                    batch_ids: List[int], num_batches: int, batch_size: int):
    """Every process's per-example results in global batch order, and the slowest process's seconds.

    Process k holds the batches b = r * P + k (r = 0, 1, ...). It writes them into a zero-padded
    (columns + 1, rows, batch_size) table whose first column marks the real examples;
    `process_allgather` stacks the P tables, and reading them row by row, process by process,
    restores the order b = 0, 1, ..., so each example appears once, where one process puts it.
    """
    from jax.experimental import multihost_utils
    num_processes = jax.process_count()
    names = list(correct)
    rows = -(-num_batches // num_processes)
    table = np.zeros((len(names) + 1, rows, batch_size), np.int32)
    for i, b in enumerate(batch_ids):
        r, m = b // num_processes, len(correct[names[0]][i])
        table[0, r, :m] = 1
        for c, name in enumerate(names):
            table[c + 1, r, :m] = correct[name][i]
    tables = np.asarray(multihost_utils.process_allgather(table))  # (P, columns + 1, rows, bs)
    ordered = tables.transpose(1, 2, 0, 3).reshape(len(names) + 1, -1)
    valid = ordered[0].astype(bool)
    gathered = {name: ordered[c + 1][valid].astype(bool) for c, name in enumerate(names)}
    times = np.asarray(multihost_utils.process_allgather(
        np.array([seconds[name] for name in names], np.float64)))
    return gathered, dict(zip(names, times.reshape(-1, len(names)).max(axis=0).tolist()))


def robust_accuracy_across_processes(
        logits_fn: Callable[[jax.Array], jax.Array], data: Tuple[np.ndarray, np.ndarray],
        attacks: Union[Mapping[str, Callable], Sequence[Mapping[str, Any]]], *, key: jax.Array,
        batch_size: int = 256) -> evaluate_lib.RobustAccuracy:
    """`evaluate.robust_accuracy` on `(x, y)` arrays, sharded over the processes by batch.

    Every process calls it with the same arguments; each returns the result of the whole data set.
    `seconds` are the slowest process's.
    """
    if not isinstance(attacks, Mapping):
        attacks = dict(evaluate_lib.attack_from_spec(s) for s in attacks)
    _validation.check_positive_int(batch_size, "batch_size")
    x_all, y_all = np.asarray(data[0]), np.asarray(data[1])
    if len(x_all) != len(y_all) or len(x_all) == 0:
        raise ValueError(f"data: need as many labels as inputs, at least one; got {len(x_all)} "
                         f"inputs, {len(y_all)} labels")
    fns = _jitted_predictions(logits_fn, attacks)
    correct: Dict[str, List[np.ndarray]] = {name: [] for name in fns}
    seconds = {name: 0.0 for name in fns}
    num_batches = -(-len(x_all) // batch_size)
    batch_ids = list(range(jax.process_index(), num_batches, jax.process_count()))
    for b in batch_ids:
        x, y = x_all[b * batch_size:(b + 1) * batch_size], y_all[b * batch_size:(b + 1) * batch_size]
        _validation.check_batch(logits_fn, jnp.asarray(x), jnp.asarray(y.astype(np.int32)))
        m = len(x)
        xp = jnp.asarray(evaluate_lib._pad(x, batch_size))
        yp = jnp.asarray(evaluate_lib._pad(y, batch_size).astype(np.int32))
        valid = jnp.arange(batch_size) < m
        kb = jax.random.fold_in(key, b)
        for j, (name, fn) in enumerate(fns.items()):
            t0 = time.perf_counter()
            # the clean column takes no key; attack j gets fold_in(kb, j), as robust_accuracy
            pred = np.asarray(fn(xp, yp, jax.random.fold_in(kb, max(j - 1, 0)), valid))[:m]
            seconds[name] += time.perf_counter() - t0
            correct[name].append(pred == y)
    merged, seconds = _gather_batches(correct, seconds, batch_ids, num_batches, batch_size)
    accs = {k: float(np.mean(merged[k])) for k in attacks}
    a_rob = None
    if attacks:  # worst case over the attacks and the clean input itself, as robust_accuracy
        a_rob = float(np.mean(np.all(np.stack([merged[k] for k in ("clean", *attacks)]), axis=0)))
    return evaluate_lib.RobustAccuracy(n=len(x_all), clean=float(np.mean(merged["clean"])),
                                       attacks=accs, a_rob=a_rob, correct=merged, seconds=seconds)
