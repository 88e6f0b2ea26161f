"""Robust-accuracy evaluation: clean accuracy, each attack's accuracy, and the per-example worst case.

    A_rob = 1/n sum_i min_{a in A} 1[argmax f(a(x_i)) = y_i]          (ADT paper, Eq. 12)

following Carlini et al.'s advice to report per-example accuracy under the worst of several attacks.
The clean input counts as one of the attacks in the minimum (x lies in every eps-ball: the identity is
an admissible attack), so A_rob <= clean accuracy even when an attack happens to turn a clean mistake
into a correct prediction.
Evaluation runs batch by batch; each attack is compiled once (`jax.jit`) and the last partial batch is
padded to the batch size (padded rows are masked out of every count), so a whole test set costs one
compilation per attack. Inputs are validated (finite, in [0, 1], labels in range) on the host before
the jitted calls, so bad data fails with a clear error even though the attacks themselves run traced.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from advjax import attacks as attacks_lib
from advjax.attacks import _validation

AttackFn = Callable[..., jax.Array]


def attack_from_spec(spec: Mapping[str, Any]) -> Tuple[str, AttackFn]:
    """Builds (label, attack) from a config spec such as {"name": "pgd", "eps": 0.1, "steps": 20}.

    The optional "label" names the column (default: the attack name). Unknown hyperparameters fail
    here, with the attack's valid keyword arguments, rather than at the first batch.
    """
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"attack spec needs a 'name', got {spec}")
    name = spec.pop("name")
    label = spec.pop("label", name)
    fn = attacks_lib.get_attack(name)
    params = inspect.signature(fn).parameters
    kwonly = {k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "key"}
    unknown = set(spec) - kwonly
    if unknown:
        raise ValueError(f"attack {name!r} got unknown hyperparameters {sorted(unknown)}; "
                         f"valid: {sorted(kwonly)}")
    return label, functools.partial(fn, **spec)


@dataclasses.dataclass
class RobustAccuracy:
    """Counts from `robust_accuracy`; accuracies are fractions in [0, 1]."""
    n: int
    clean: float
    attacks: Dict[str, float]
    a_rob: Optional[float]
    correct: Dict[str, np.ndarray]  # per-example correctness, "clean" and one entry per attack
    seconds: Dict[str, float]

    def as_dict(self) -> Dict[str, Any]:
        out = {"n": self.n, "clean": self.clean, **{f"attack/{k}": v for k, v in self.attacks.items()}}
        if self.a_rob is not None:
            out["a_rob"] = self.a_rob
        return out

    def markdown(self, title: str = "") -> str:
        """A Markdown table: one row per column (clean, each attack, A_rob), accuracy in percent."""
        rows = [("clean", self.clean, self.seconds.get("clean", 0.0))]
        rows += [(k, v, self.seconds.get(k, 0.0)) for k, v in self.attacks.items()]
        if self.a_rob is not None:
            rows.append(("A_rob (worst case per example)", self.a_rob, sum(self.seconds.values())))
        lines = [f"### {title}" if title else "", f"n = {self.n} test examples", "",
                 "| evaluation | accuracy (%) | seconds |", "|---|---:|---:|"]
        lines += [f"| {name} | {100 * acc:.2f} | {sec:.1f} |" for name, acc, sec in rows]
        return "\n".join(l for l in lines if l is not None) + "\n"


def _as_batches(data, batch_size: int) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"data: {len(x)} inputs but {len(y)} labels")
        for i in range(0, len(x), batch_size):
            yield np.asarray(x[i:i + batch_size]), np.asarray(y[i:i + batch_size])
        return
    for batch in data:
        if isinstance(batch, Mapping):
            yield np.asarray(batch["image"]), np.asarray(batch["label"])
        else:
            bx, by = batch
            yield np.asarray(bx), np.asarray(by)


def is_batch_level(attack) -> bool:
    """True for attacks whose examples interact (DAA's particles): they take a `valid` row mask."""
    return bool(getattr(getattr(attack, "func", attack), "batch_level", False))


def is_set_level(attack) -> bool:
    """True for attacks over a whole evaluation set at once (DAA's Algorithm 1 reshuffles the set
    into particle minibatches every round): `robust_accuracy` calls them once on all the examples."""
    return bool(getattr(getattr(attack, "func", attack), "set_level", False))


def _attacked_predictions(logits_fn, attack, x, y, key, valid):
    """Predictions on attack(x) and `_output_stats` of the result. Padded rows (valid = False) must
    not influence a batch-level attack, so it gets the mask; per-example attacks ignore the padding
    by construction."""
    kwargs = {"valid": valid} if is_batch_level(attack) else {}
    x_adv = attack(logits_fn, x, y, key=key, **kwargs)
    logits = logits_fn(x_adv)
    return jnp.argmax(logits, -1), _output_stats(x, x_adv, logits, threat_of(attack)[1])


def _clean_predictions(logits_fn, x):
    logits = logits_fn(x)
    return jnp.argmax(logits, -1), jnp.all(jnp.isfinite(logits), axis=-1)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    pad = np.repeat(a[:1], size - len(a), axis=0)
    return np.concatenate([a, pad], axis=0)


def labels_as_int32(y, name: str = "y") -> np.ndarray:
    """Labels as int32, after checking them *before* the cast: an integer dtype (a float label such
    as 3.7 would be truncated to a valid-looking class) and values in [0, 2**31 - 1] (a larger int64
    label would wrap around to a valid-looking class). The upper bound by the class count is
    checked per batch against the logits (`_validation.check_batch`)."""
    y = np.asarray(y)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}"
                         + (f" (e.g. {y.ravel()[0]!r})" if y.size else ""))
    if y.size and (y.min() < 0 or y.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name} must be class indices >= 0 that fit in int32, got values in "
                         f"[{y.min()}, {y.max()}]")
    return y.astype(np.int32)


def _signature_default(fn, name, fallback):
    import inspect
    fn = getattr(fn, "func", fn)
    try:
        p = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return fallback
    if p is None or p.default is inspect.Parameter.empty:
        return fallback
    return p.default


def threat_of(attack) -> Tuple[Optional[float], str, Tuple[float, float]]:
    """(eps, norm, bounds) of an attack built by `attack_from_spec` (a functools.partial): eps from
    its keywords (None if it has none, e.g. WRM's Lagrangian attack, which has no ball), norm from
    its keywords or its signature's default (attacks without a `norm` argument are linf), bounds
    likewise (default [0, 1])."""
    kw = dict(getattr(attack, "keywords", {}) or {})
    eps = kw.get("eps")
    norm = kw.get("norm", _signature_default(attack, "norm", "linf"))
    bounds = tuple(kw.get("bounds", _signature_default(attack, "bounds", (0.0, 1.0))))
    return (None if eps is None else float(eps)), norm, bounds


def _output_stats(x, x_adv, adv_logits, norm: str):
    """Per-example facts about an attack's output that a robust-accuracy number relies on, computed
    inside the jitted evaluation (no transfer of the examples): finite input and logits, the box,
    and the perturbation's norm."""
    flat = (x_adv - x).reshape(x.shape[0], -1).astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    return {
        "finite": jnp.all(jnp.isfinite(x_adv), axis=axes),
        "logits_finite": jnp.all(jnp.isfinite(adv_logits), axis=-1),
        "min": jnp.min(x_adv, axis=axes), "max": jnp.max(x_adv, axis=axes),
        "norm": (jnp.max(jnp.abs(flat), axis=1) if norm == "linf" else
                 jnp.sqrt(jnp.sum(flat * flat, axis=1)) if norm == "l2" else
                 jnp.sum(jnp.abs(flat), axis=1)),
    }


def check_attack_output(name: str, stats: Mapping[str, Any], m: int, eps: Optional[float],
                        norm: str, bounds: Tuple[float, float], dim: int):
    """Raises if an attack's output (the first m rows of `_output_stats`) cannot be scored: a
    non-finite example or logits, a point outside the box [lo, hi] or outside the eps-ball (eps
    None: no ball). Counting such a point as "broken" (NaN logits argmax to class 0) or as robust
    would be a silently wrong robust accuracy. Tolerance on the ball: float32 rounding of x + delta,
    1e-5 eps plus 1e-6 per coordinate's worth of the norm."""
    s = {k: np.asarray(v)[:m] for k, v in stats.items()}
    bad = ~s["finite"]
    if bad.any():
        raise ValueError(f"attack {name!r} returned non-finite values (NaN or inf) for {bad.sum()} "
                         f"of {m} examples; this would be scored as a misclassification")
    bad = ~s["logits_finite"]
    if bad.any():
        raise ValueError(f"logits_fn returned non-finite logits on {bad.sum()} of {m} examples "
                         f"produced by attack {name!r}; their predictions are meaningless")
    lo, hi = bounds
    bad = (s["min"] < lo) | (s["max"] > hi)
    if bad.any():
        raise ValueError(f"attack {name!r} returned {bad.sum()} of {m} examples outside the box "
                         f"[{lo}, {hi}] (values in [{s['min'].min()}, {s['max'].max()}])")
    if eps is not None:
        per_coord = {"linf": 1.0, "l2": np.sqrt(dim), "l1": float(dim)}.get(norm, float(dim))
        bound = eps * (1 + 1e-5) + 1e-6 * per_coord * max(1.0, hi - lo)
        bad = s["norm"] > bound
        if bad.any():
            raise ValueError(f"attack {name!r} returned {bad.sum()} of {m} examples outside the "
                             f"{norm} ball of radius eps={eps} (largest norm {s['norm'].max()})")


def check_clean_logits(finite_rows, m: int):
    """Raises if logits_fn gave non-finite logits on clean inputs (argmax would score NaN rows as
    class 0)."""
    bad = ~np.asarray(finite_rows)[:m]
    if bad.any():
        raise ValueError(f"logits_fn returned non-finite logits (NaN or inf) on {bad.sum()} of {m} "
                         f"clean inputs; no accuracy can be computed from them")


def _gather_batches(correct: Dict[str, List[np.ndarray]], seconds: Dict[str, float],
                    batch_ids: List[int], num_batches: int, batch_size: int):
    """Every process's per-example results, as per-batch lists in global batch order, and the
    slowest process's seconds.

    Process k holds the batches b = r * P + k (r = 0, 1, ...). It writes them into a zero-padded
    (columns + 1, rows, batch_size) table whose first column marks the real examples;
    `process_allgather` stacks the P tables, and reading them row by row, process by process,
    restores the batch order b = 0, 1, ..., so each example appears once, where a single process
    would have put it.
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
    ordered = tables.transpose(1, 2, 0, 3).reshape(len(names) + 1, rows * num_processes, batch_size)
    valid = ordered[0].astype(bool)
    gathered = {name: [ordered[c + 1][r][valid[r]].astype(bool) for r in range(len(valid))]
                for c, name in enumerate(names)}
    times = np.asarray(multihost_utils.process_allgather(
        np.array([seconds[name] for name in names], np.float64)))
    return gathered, dict(zip(names, times.max(axis=0).tolist()))


def robust_accuracy(logits_fn: Callable[[jax.Array], jax.Array],
                    data: Union[Tuple[np.ndarray, np.ndarray], Iterable[Any]],
                    attacks: Union[Mapping[str, AttackFn], Sequence[Mapping[str, Any]]],
                    *, key: jax.Array, batch_size: int = 256, limit: Optional[int] = None,
                    verbose: bool = False, across_processes: bool = False) -> RobustAccuracy:
    """Clean accuracy, each attack's accuracy and A_rob (ADT Eq. 12), batch by batch.

    Args:
      logits_fn: batch in [0, 1] -> logits (e.g. a Flax apply in inference mode).
      data: `(x, y)` arrays, or an iterable of `(x, y)` or `{"image", "label"}` batches.
      attacks: {label: attack} with `attack(logits_fn, x, y, *, key)` (e.g. a functools.partial of
        `advjax.attacks.pgd`), or a list of config specs for `attack_from_spec`.
      key: PRNG key; batch b and attack j use fold_in(fold_in(key, b), j).
      batch_size: evaluation batch (array input; also the padded size for iterables).
      limit: evaluate only the first `limit` examples.
      across_processes: in a multi-process run (`jax.distributed`), every process calls this with
        the same data; process k evaluates the batches b with b mod (number of processes) = k, with
        the keys above, and the per-example results are gathered (`_gather_batches`), so every
        process returns the result of the whole data set, equal to a single-process evaluation.
        Batch-level attacks (DAA) see whole batches, never split across processes. `seconds` are
        the slowest process's.

    Set-level attacks (`is_set_level`, e.g. "daa_algorithm1") run once on all the (limited)
    examples, with key fold_in(fold_in(key, 2**31 - 1), j), before the batch loop; `data` must
    then be arrays.
    """
    num_shards, shard_index = 1, 0
    if across_processes:
        num_shards, shard_index = jax.process_count(), jax.process_index()
    if not isinstance(attacks, Mapping):
        attacks = dict(attack_from_spec(s) for s in attacks)
    _validation.check_positive_int(batch_size, "batch_size")
    predict = jax.jit(functools.partial(_clean_predictions, logits_fn))
    set_stats = jax.jit(lambda x, x_adv, norm: _output_stats(x, x_adv, logits_fn(x_adv), norm),
                        static_argnums=2)
    set_level = {name: a for name, a in attacks.items() if is_set_level(a)}
    jitted = {name: jax.jit(functools.partial(_attacked_predictions, logits_fn, a))
              for name, a in attacks.items() if name not in set_level}
    set_adv, set_seconds = {}, {}
    if set_level:
        # Set-level attacks see every example at once (in a multi-process run, every process runs
        # them on the whole set with the same key, so all agree; the evaluation is then sharded).
        if not (isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape")):
            raise ValueError(f"attacks: {sorted(set_level)} work on a whole evaluation set and need "
                             f"data as (x, y) arrays, not an iterable of batches")
        xs, ys = np.asarray(data[0])[:limit], labels_as_int32(np.asarray(data[1])[:limit])
        _validation.check_batch(logits_fn, jnp.asarray(xs), jnp.asarray(ys))
        set_key = jax.random.fold_in(key, 2**31 - 1)  # distinct from every batch's key
        for j, (name, a) in enumerate(attacks.items()):
            if name in set_level:
                t0 = time.perf_counter()
                set_adv[name] = np.asarray(a(logits_fn, jnp.asarray(xs), jnp.asarray(ys),
                                             key=jax.random.fold_in(set_key, j)))
                eps, norm, bounds = threat_of(a)
                check_attack_output(name, set_stats(jnp.asarray(xs), jnp.asarray(set_adv[name]),
                                                    norm), len(xs), eps, norm, bounds,
                                    int(np.prod(xs.shape[1:])))
                set_seconds[name] = time.perf_counter() - t0
    correct = {"clean": []}
    correct.update({name: [] for name in attacks})
    seconds = {name: set_seconds.get(name, 0.0) for name in correct}
    n, num_batches, batch_ids = 0, 0, []
    for b, (x, y) in enumerate(_as_batches(data, batch_size)):
        if limit is not None and n >= limit:
            break
        if limit is not None:
            x, y = x[:limit - n], y[:limit - n]
        if len(x) > batch_size:
            raise ValueError(f"data: got a batch of {len(x)} > batch_size={batch_size}")
        num_batches = b + 1
        if b % num_shards != shard_index:  # another process's batch
            n += len(x)
            continue
        y = labels_as_int32(y)
        _validation.check_batch(logits_fn, jnp.asarray(x), jnp.asarray(y))
        m = len(x)
        dim = int(np.prod(x.shape[1:]))
        xp, yp = jnp.asarray(_pad(x, batch_size)), jnp.asarray(_pad(y, batch_size))
        valid = jnp.arange(batch_size) < m
        t0 = time.perf_counter()
        pred, finite = predict(xp)
        check_clean_logits(finite, m)
        pred = np.asarray(pred)[:m]
        seconds["clean"] += time.perf_counter() - t0
        correct["clean"].append(pred == y[:m])
        batch_ids.append(b)
        kb = jax.random.fold_in(key, b)
        for j, name in enumerate(attacks):
            t0 = time.perf_counter()
            if name in set_adv:
                pred = np.asarray(predict(jnp.asarray(_pad(set_adv[name][n:n + m], batch_size)))[0])
            else:
                pred, stats = jitted[name](xp, yp, jax.random.fold_in(kb, j), valid)
                eps, norm, bounds = threat_of(attacks[name])
                check_attack_output(name, stats, m, eps, norm, bounds, dim)
                pred = np.asarray(pred)
            seconds[name] += time.perf_counter() - t0
            correct[name].append(pred[:m] == y[:m])
        n += m
        if verbose:
            print(f"  evaluated {n} examples", flush=True)
    if n == 0:
        raise ValueError("data: no examples to evaluate")
    if num_shards > 1:
        correct, seconds = _gather_batches(correct, seconds, batch_ids, num_batches, batch_size)
    correct = {k: np.concatenate(v) for k, v in correct.items()}
    accs = {k: float(np.mean(v)) for k, v in correct.items() if k != "clean"}
    a_rob = None
    if attacks:
        # Worst case over the attacks and the clean input itself (see the module docstring).
        a_rob = float(np.mean(np.all(np.stack([correct[k] for k in ("clean", *attacks)]), axis=0)))
    return RobustAccuracy(n=n, clean=float(np.mean(correct["clean"])), attacks=accs, a_rob=a_rob,
                          correct=correct, seconds=seconds)


def accuracy_vs_eps(logits_fn, x: np.ndarray, y: np.ndarray, spec: Mapping[str, Any],
                    eps_values: Sequence[float], *, key: jax.Array,
                    batch_size: int = 256) -> List[float]:
    """Accuracy under attack `spec` at each eps; step sizes scale with eps (step_size / eps fixed)."""
    accs = []
    for i, eps in enumerate(eps_values):
        s = dict(spec, eps=float(eps))
        if "step_size" in spec and spec.get("eps"):
            s["step_size"] = float(spec["step_size"]) * float(eps) / float(spec["eps"])
        s["label"] = "a"
        res = robust_accuracy(logits_fn, (x, y), [s], key=jax.random.fold_in(key, i),
                              batch_size=batch_size)
        accs.append(res.attacks["a"])
    return accs


def attack_report(logits_fn, x: np.ndarray, y: np.ndarray, spec: Mapping[str, Any], out_dir: str,
                  *, key: jax.Array, eps_values: Optional[Sequence[float]] = None,
                  num_images: int = 8, class_names=None, batch_size: int = 256) -> List[str]:
    """Writes attack_grid.png (clean / adversarial / perturbation) and accuracy_vs_eps.png.

    eps_values defaults to 0, eps/4, ..., 2 eps of the spec.
    """
    import os
    from advjax import plots
    label, attack = attack_from_spec(spec)
    n = min(num_images, len(x))
    xs, ys = jnp.asarray(x[:n]), jnp.asarray(labels_as_int32(y[:n]))
    x_adv = np.asarray(attack(logits_fn, xs, ys, key=key))
    pred_clean = np.asarray(jnp.argmax(logits_fn(xs), -1))
    pred_adv = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), -1))
    grid = plots.adversarial_grid(os.path.join(out_dir, "attack_grid.png"), x[:n], x_adv, y[:n],
                                  pred_clean, pred_adv, class_names=class_names,
                                  title=f"{label} (eps={spec.get('eps')})")
    eps0 = float(spec.get("eps", 0.0))
    if eps_values is None:
        eps_values = [eps0 * f for f in (0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)]
    accs = accuracy_vs_eps(logits_fn, x, y, spec, eps_values, key=key, batch_size=batch_size)
    curve = plots.accuracy_vs_eps(os.path.join(out_dir, "accuracy_vs_eps.png"), {label: accs},
                                  eps_values, train_eps=None, title=f"{label}: accuracy vs eps")
    return [grid, curve]
