"""Robust-accuracy evaluation: clean accuracy, each attack's accuracy, and the per-example worst case.

    A_rob = 1/n sum_i min_{a in A} 1[argmax f(a(x_i)) = y_i]          (ADT paper, Eq. 12)

following Carlini et al.'s advice to report per-example accuracy under the worst of several attacks.
The clean input counts as one of the attacks in the minimum (x lies in every eps-ball: the identity is
an admissible attack), so A_rob <= clean accuracy even when an attack happens to turn a clean mistake
into a correct prediction.
Evaluation runs batch by batch; each attack is compiled once (`jax.jit`, with eps and step sizes as
traced arguments, so an eps sweep shares the program) and the last partial batch is padded to the
batch size (padded rows are masked out of every count), so a whole test set costs one compilation per
attack. Each batch is split over the local devices (a 1-D mesh along the batch axis). Inputs are
validated (finite, in each attack's box `bounds`, default [0, 1], integer labels in range, checked
before any cast) on the host before the jitted calls, so bad data fails with a clear error even
though the attacks themselves run traced; so is what comes back (`check_clean_logits`,
`check_attack_output`): non-finite logits, or an attack output that is non-finite, outside its box
or outside its eps-ball, is an error rather than a count.

`autoattack` runs AutoAttack (Croce & Hein, ICML 2020): its cascade of APGD-CE, APGD-T, FAB-T and
Square, each on the examples still robust, with AutoAttack's sanity checks; its version "rand" runs
APGD-CE and APGD-DLR with EoT on a randomized logits_fn(x, key).
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
from advjax import threat
from advjax._examples import (AdversarialExamples, key_data_of, load_examples, model_hash,
                              save_examples)
from advjax.attacks import _validation

AttackFn = Callable[..., jax.Array]


def attack_from_spec(spec: Mapping[str, Any]) -> Tuple[str, AttackFn]:
    """Builds (label, attack) from a config spec such as {"name": "pgd", "eps": 0.1, "steps": 20}.

    The optional "label" names the column (default: the attack name). Unknown hyperparameters fail
    here, with the attack's valid keyword arguments, rather than at the first batch. The optional
    "target" puts the attack in its targeted mode with a rule of `advjax.attacks.targets`
    (`advjax.attacks.targeted`): a rule name ("random", "least_likely", "most_likely") or a dict
    {"rule": name, **arguments}, e.g. {"rule": "most_likely", "k": 2} or {"rule": "by_label_map",
    "mapping": [1, 2, ..., 0]}; `robust_accuracy(targeted=True)` then reports its targeted success.
    """
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"attack spec needs a 'name', got {spec}")
    name = spec.pop("name")
    label = spec.pop("label", name)
    target = spec.pop("target", None)
    fn = attacks_lib.get_attack(name)
    params = inspect.signature(fn).parameters
    kwonly = {k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "key"}
    if target is not None:
        kwonly -= {"targeted", "targets"}  # set by the targeted mode
    unknown = set(spec) - kwonly
    if unknown:
        raise ValueError(f"attack {name!r} got unknown hyperparameters {sorted(unknown)}; "
                         f"valid: {sorted(kwonly)}")
    if target is not None:
        fn = _targeted_from_spec(name, fn, target)
    return label, functools.partial(fn, **spec)


_SPEC_RULES = ("random", "least_likely", "most_likely", "by_label_map")


def _targeted_from_spec(name: str, fn: AttackFn, target: Any) -> AttackFn:
    """`advjax.attacks.targeted(fn, rule)` for a spec's "target" entry (see `attack_from_spec`)."""
    targets_lib = getattr(attacks_lib, "targets", None)
    if targets_lib is None or not hasattr(attacks_lib, "targeted"):
        raise ValueError("attack spec 'target' needs advjax.attacks.targets, which this version "
                         "of advjax does not have")
    args = {}
    if hasattr(target, "to_dict"):  # an ml_collections ConfigDict from a config file
        target = target.to_dict()
    if isinstance(target, Mapping):
        args = dict(target)
        rule = args.pop("rule", None)
    else:
        rule = target
    if rule not in _SPEC_RULES:
        raise ValueError(f"attack {name!r}: target must name a rule in {_SPEC_RULES} (or be a dict "
                         f"with 'rule' and its arguments), got {target!r}")
    try:
        select = getattr(targets_lib, rule)(**args)
    except TypeError as e:
        raise ValueError(f"attack {name!r}: bad arguments {args} for target rule {rule!r}: {e}") \
            from None
    return attacks_lib.targeted(fn, select)


@dataclasses.dataclass
class RobustAccuracy:
    """Counts from `robust_accuracy`; accuracies are fractions in [0, 1].

    eps: each attack's radius as run (None for attacks without one). targeted: with
    `robust_accuracy(targeted=True)`, each targeted attack's success rate (the fraction of examples
    classified as their target). examples: with `return_examples=True`, the adversarial examples
    (`AdversarialExamples`; write them with `save_examples`).
    """
    n: int
    clean: float
    attacks: Dict[str, float]
    a_rob: Optional[float]
    correct: Dict[str, np.ndarray]  # per-example correctness, "clean" and one entry per attack
    seconds: Dict[str, float]
    eps: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)
    targeted: Dict[str, float] = dataclasses.field(default_factory=dict)
    examples: Optional[AdversarialExamples] = None

    def as_dict(self) -> Dict[str, Any]:
        out = {"n": self.n, "clean": self.clean, **{f"attack/{k}": v for k, v in self.attacks.items()}}
        out.update({f"targeted/{k}": v for k, v in self.targeted.items()})
        if self.a_rob is not None:
            out["a_rob"] = self.a_rob
        return out

    def markdown(self, title: str = "") -> str:
        """A Markdown table: one row per column (clean, each attack, A_rob), accuracy in percent;
        targeted success rates, if any, in a column of their own."""
        rows = [("clean", self.clean, self.seconds.get("clean", 0.0))]
        rows += [(k, v, self.seconds.get(k, 0.0)) for k, v in self.attacks.items()]
        if self.a_rob is not None:
            rows.append(("A_rob (worst case per example)", self.a_rob, sum(self.seconds.values())))
        hit = lambda k: f" {100 * self.targeted[k]:.2f} |" if k in self.targeted else " |"
        tcol = bool(self.targeted)
        lines = [f"### {title}" if title else "", f"n = {self.n} test examples", "",
                 "| evaluation | accuracy (%) | seconds |"
                 + (" targeted success (%) |" if tcol else ""),
                 "|---|---:|---:|" + ("---:|" if tcol else "")]
        lines += [f"| {name} | {100 * acc:.2f} | {sec:.1f} |" + (hit(name) if tcol else "")
                  for name, acc, sec in rows]
        return "\n".join(l for l in lines if l is not None) + "\n"


@dataclasses.dataclass
class EpsSweep:
    """`robust_accuracy` at several radii: one `RobustAccuracy` per eps (A_rob is the worst case over
    the attacks at that eps), from one compilation per attack."""
    eps: List[float]
    results: List[RobustAccuracy]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> RobustAccuracy:
        return self.results[i]

    def __iter__(self):
        return iter(self.results)

    def curve(self, name: str) -> List[float]:
        """Accuracy under attack `name` at each eps ("a_rob" for the worst case, "clean")."""
        if name == "a_rob":
            return [r.a_rob for r in self.results]
        if name == "clean":
            return [r.clean for r in self.results]
        if name not in self.results[0].attacks:
            raise ValueError(f"unknown attack {name!r}; valid: {sorted(self.results[0].attacks)}")
        return [r.attacks[name] for r in self.results]

    def as_dict(self) -> Dict[str, Any]:
        first = self.results[0]
        out: Dict[str, Any] = {"n": first.n, "clean": first.clean, "eps": list(self.eps)}
        out.update({f"attack/{k}": self.curve(k) for k in first.attacks})
        out.update({f"targeted/{k}": [r.targeted[k] for r in self.results] for k in first.targeted})
        if first.a_rob is not None:
            out["a_rob"] = self.curve("a_rob")
        return out

    def markdown(self, title: str = "") -> str:
        """A Markdown table: one row per attack (and A_rob), one column per eps, accuracy in %."""
        first = self.results[0]
        names = list(first.attacks) + (["A_rob"] if first.a_rob is not None else [])
        lines = [f"### {title}" if title else "",
                 f"n = {first.n} test examples, clean accuracy {100 * first.clean:.2f} %", "",
                 "| attack | " + " | ".join(f"eps = {e:g}" for e in self.eps) + " |",
                 "|---|" + "---:|" * len(self.eps)]
        for k in names:
            curve = self.curve("a_rob" if k == "A_rob" else k)
            lines.append(f"| {k} | " + " | ".join(f"{100 * a:.2f}" for a in curve) + " |")
        return "\n".join(l for l in lines if l) + "\n"

    @property
    def examples(self) -> Optional[AdversarialExamples]:
        """All eps' examples in one `AdversarialExamples`, columns named "attack@eps"."""
        if any(r.examples is None for r in self.results):
            return None
        first = self.results[0].examples
        out = AdversarialExamples(x_adv={}, success={}, y=first.y, key_data=first.key_data,
                                  key_impl=first.key_impl, model_hash=first.model_hash)
        for e, r in zip(self.eps, self.results):
            ex = r.examples
            for k in ex.x_adv:
                col = f"{k}@{e:g}"
                out.x_adv[col], out.success[col] = ex.x_adv[k], ex.success[k]
                out.specs[col], out.eps[col] = ex.specs[k], ex.eps[k]
                if k in ex.targets:
                    out.targets[col] = ex.targets[k]
        return out


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
    out = _attack_outputs(logits_fn, attack, None, False, x, y, key, valid, {})
    return out["pred"], out["stats"]


def _attack_outputs(logits_fn, attack, rule, keep_x: bool, x, y, key, valid, hyper):
    """What `robust_accuracy` needs from one attack on one batch, computed in one jitted program:
    predictions at x_adv = attack(x) with the hyperparameters `hyper` (eps, step sizes: traced
    scalars, so one compilation serves every eps), `_output_stats`, the targets of a target rule
    (`rule(logits_fn, x, y, key)`, the same key the attack gets) and x_adv itself if `keep_x`."""
    kwargs = {"valid": valid} if is_batch_level(attack) else {}
    x_adv = attack(logits_fn, x, y, key=key, **hyper, **kwargs)
    logits = logits_fn(x_adv)
    out = {"pred": jnp.argmax(logits, -1),
           "stats": _output_stats(x, x_adv, logits, threat_of(attack)[1])}
    if rule is not None:
        out["targets"] = rule(logits_fn, x, y, key)
    if keep_x:
        out["x_adv"] = x_adv
    return out


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
    bounds = threat.check_bounds(kw.get("bounds", _signature_default(attack, "bounds",
                                                                    threat.DEFAULT_BOUNDS)))
    return (None if eps is None else float(eps)), norm, bounds


def _check_data_batch(logits_fn, x, y, boxes: Sequence[Tuple[float, float]]) -> int:
    """`_validation.check_batch` of a data batch, with x checked against the box of every attack
    that will see it (their `bounds`; [0, 1] when there is no attack)."""
    boxes = list(dict.fromkeys(boxes)) or [threat.DEFAULT_BOUNDS]
    num_classes = _validation.check_batch(logits_fn, x, y, bounds=boxes[0])
    for box in boxes[1:]:
        _validation.check_in_box(x, box)
    return num_classes


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
        np.array([seconds.get(name, 0.0) for name in names], np.float64)))
    return gathered, dict(zip(names, times.max(axis=0).tolist()))


# Hyperparameters passed to the compiled attack as traced scalars (one compilation for every value);
# those after "eps" are step sizes, which an eps sweep scales with eps.
_TRACED = ("eps", "step_size", "alpha")
_SCALED_WITH_EPS = ("step_size", "alpha")


def _unwrap(attack) -> Tuple[Callable, tuple, Dict[str, Any]]:
    """The function behind (nested) functools.partials, their positional args and merged keywords."""
    args, kw, fn = (), {}, attack
    while isinstance(fn, functools.partial):
        args = tuple(fn.args) + args
        kw = {**(fn.keywords or {}), **kw}
        fn = fn.func
    return fn, args, kw


def _is_scalar_number(v) -> bool:
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float, np.integer, np.floating)):
        return True
    return hasattr(v, "shape") and np.ndim(v) == 0 and _validation.is_concrete(v) and \
        np.issubdtype(np.asarray(v).dtype, np.number)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@dataclasses.dataclass
class _Column:
    """One attack of `robust_accuracy`: its static part and its traced hyperparameters."""
    name: str
    attack: AttackFn
    static: AttackFn       # the attack without the traced hyperparameters
    base: Dict[str, float]  # the traced hyperparameters as given (eps, step sizes)
    norm: str
    bounds: Tuple[float, float]
    rule: Optional[Callable]  # target rule of a targeted attack (`.targets`), else None
    spec: Dict[str, Any]

    def hyper(self, eps: Optional[float]) -> Dict[str, float]:
        """The traced hyperparameters at `eps` (None: as given). Step sizes given with a positive eps
        keep their ratio to eps; given without one they stay as they are."""
        out = dict(self.base)
        if eps is None:
            return out
        eps0 = self.base.get("eps")
        out["eps"] = float(eps)
        for k in _SCALED_WITH_EPS:
            if k in out and eps0:
                out[k] = out[k] * float(eps) / eps0
        return out


def _describe(name: str, attack, spec: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if spec is not None:
        return dict(spec)
    fn, args, kw = _unwrap(attack)
    out = {"function": f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"}
    if args:
        out["args"] = list(args)
    out.update(kw)
    return out


def _prepare(name: str, attack, spec, sweeping: bool, targeted: bool) -> _Column:
    fn, args, kw = _unwrap(attack)
    if sweeping and "eps" not in kw and not _accepts(fn, "eps"):
        raise ValueError(f"attacks: {name!r} takes no eps, so it cannot run at the eps values of "
                         f"the sweep")
    base = {k: float(kw[k]) for k in _TRACED if k in kw and _is_scalar_number(kw[k])}
    static = functools.partial(fn, *args, **{k: v for k, v in kw.items() if k not in base})
    _, norm, bounds = threat_of(attack)
    rule = getattr(fn, "targets", None) if targeted else None
    return _Column(name=name, attack=attack, static=static, base=base, norm=norm, bounds=bounds,
                   rule=rule if callable(rule) else None, spec=_describe(name, attack, spec))


class _Runner:
    """One attack's jitted batch program. eps and step sizes are traced arguments (one compilation
    for all eps); an attack whose code needs them concrete (Python control flow on eps, e.g. BIM's
    default step count) fails to trace that way and is then compiled once per eps value instead:
    the retry either works or raises the attack's own error."""

    def __init__(self, logits_fn, column: _Column, keep_x: bool):
        self.fn = functools.partial(_attack_outputs, logits_fn, column.static, column.rule, keep_x)
        self.traced = jax.jit(self.fn)
        self.per_value: Dict[tuple, Callable] = {}
        self.use_traced = True

    def __call__(self, x, y, key, valid, hyper: Dict[str, float], replicate):
        if self.use_traced:
            try:
                # Weakly typed (as a Python float would be): bfloat16 inputs stay bfloat16.
                return self.traced(x, y, key, valid,
                                   {k: replicate(jnp.asarray(float(v))) for k, v in hyper.items()})
            except (TypeError, ValueError):  # ConcretizationTypeError is a TypeError
                self.use_traced = False
        k = tuple(sorted(hyper.items()))
        if k not in self.per_value:
            self.per_value[k] = jax.jit(functools.partial(self.fn, hyper=dict(hyper)))
        return self.per_value[k](x, y, key, valid)


class _EvalProgress:
    """A progress bar over the evaluated examples (tqdm, else a printed line per batch) with images/s
    and the running accuracies (%) of this process's examples."""

    def __init__(self, total: Optional[int], enabled: bool):
        self.bar, self.enabled, self.done, self.t0 = None, enabled, 0, time.perf_counter()
        if enabled:
            try:
                import sys
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc="robust_accuracy", unit="img", unit_scale=False,
                                dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, m: int, running: Mapping[str, float]):
        if not self.enabled:
            return
        self.done += m
        accs = {k: f"{100 * v:.1f}" for k, v in running.items()}
        if self.bar is not None:
            self.bar.set_postfix(accs, refresh=False)
            self.bar.update(m)
        else:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            print(f"  robust_accuracy: {self.done} examples, {rate:.0f} img/s, accuracy (%) "
                  + ", ".join(f"{k} {v}" for k, v in accs.items()), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _column_label(col, eps_list, sweeping: bool) -> str:
    if col == "clean":
        return col
    return f"{col[1]}@{eps_list[col[0]]:g}" if sweeping else col[1]


def _num_examples(data, limit: Optional[int]) -> Optional[int]:
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
        n = len(data[0])
        return n if limit is None else min(n, limit)
    return limit


def robust_accuracy(logits_fn: Callable[[jax.Array], jax.Array],
                    data: Union[Tuple[np.ndarray, np.ndarray], Iterable[Any]],
                    attacks: Union[Mapping[str, AttackFn], Sequence[Mapping[str, Any]]],
                    *, key: jax.Array, batch_size: int = 256, limit: Optional[int] = None,
                    verbose: bool = False, across_processes: bool = False,
                    eps: Union[None, float, Sequence[float]] = None, targeted: bool = False,
                    return_examples: bool = False, progress: bool = False,
                    devices: Optional[Sequence[jax.Device]] = None
                    ) -> Union[RobustAccuracy, EpsSweep]:
    """Clean accuracy, each attack's accuracy and A_rob (ADT Eq. 12), batch by batch.

    Args:
      logits_fn: batch -> logits (e.g. a Flax apply in inference mode); the inputs must lie in the
        box `bounds` of every attack (default [0, 1]), and so must each attack's outputs.
      data: `(x, y)` arrays, or an iterable of `(x, y)` or `{"image", "label"}` batches.
      attacks: {label: attack} with `attack(logits_fn, x, y, *, key)` (e.g. a functools.partial of
        `advjax.attacks.pgd`), or a list of config specs for `attack_from_spec`.
      key: PRNG key; batch b and attack j use fold_in(fold_in(key, b), j), at every eps.
      batch_size: evaluation batch (array input; also the padded size for iterables).
      limit: evaluate only the first `limit` examples.
      across_processes: in a multi-process run (`jax.distributed`), every process calls this with
        the same data; process k evaluates the batches b with b mod (number of processes) = k, with
        the keys above, and the per-example results are gathered (`_gather_batches`), so every
        process returns the result of the whole data set, equal to a single-process evaluation.
        Batch-level attacks (DAA) see whole batches, never split across processes. `seconds` are
        the slowest process's.
      eps: None: each attack at its own eps. A number: every attack at that eps. A sequence: an eps
        sweep; the result is an `EpsSweep` with one `RobustAccuracy` per eps. Step sizes given
        with an eps (`step_size`, R+FGSM's `alpha`) keep their ratio to it; attacks that derive them
        from eps (PGD's default 2.5 eps / steps) do so at every eps. eps, step_size and alpha are
        traced arguments of each attack's compiled program (its other hyperparameters, e.g.
        `steps`, are static), so a sweep compiles each attack once, and a sweep's numbers equal
        those of separate calls with each eps (same keys).
      targeted: also report, for every attack with a target rule (`advjax.attacks.targeted(attack,
        rule)`, which has `.targets(logits_fn, x, y, key)`), its targeted success rate: the
        fraction of examples classified as their target (`result.targeted`). Raises if no attack
        has a rule.
      return_examples: keep each attack's adversarial examples and per-example success
        (`result.examples`, an `AdversarialExamples`; success is misclassification, or hitting the
        target for attacks reported as targeted); write them with `save_examples`.
      progress: a progress bar (tqdm, else printed lines) with images/s and running accuracies.
      devices: the devices that share each batch (default: all local devices). Batches are padded
        to a multiple of their number and split along the batch axis (`jax.jit` over a 1-D mesh);
        the result equals a one-device evaluation.

    Set-level attacks (`is_set_level`, e.g. "daa_algorithm1") run once on all the (limited)
    examples, with key fold_in(fold_in(key, 2**31 - 1), j), before the batch loop; `data` must
    then be arrays.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    num_shards, shard_index = 1, 0
    if across_processes:
        num_shards, shard_index = jax.process_count(), jax.process_index()
    specs: Dict[str, Optional[Mapping[str, Any]]] = {}
    if not isinstance(attacks, Mapping):
        built = {}
        for s in attacks:
            label, fn = attack_from_spec(s)
            built[label], specs[label] = fn, dict(s)
        attacks = built
    _validation.check_positive_int(batch_size, "batch_size")
    sweeping = eps is not None and not _is_scalar_number(eps)
    eps_list: List[Optional[float]] = [None]
    if eps is not None:
        eps_list = [float(e) for e in (eps if sweeping else [eps])]
        if not eps_list:
            raise ValueError("eps: an empty sequence of radii")
        for e in eps_list:
            _validation.check_nonnegative(e, "eps")
    if return_examples and num_shards > 1:
        raise ValueError("return_examples=True is not supported with across_processes in a "
                         "multi-process run (each process holds only its batches)")
    columns = {name: _prepare(name, a, specs.get(name), eps is not None, targeted)
               for name, a in attacks.items()}
    if targeted and not any(c.rule is not None for c in columns.values()):
        raise ValueError("targeted=True needs an attack with a target rule, built with "
                         "advjax.attacks.targeted(attack, rule); none of "
                         f"{sorted(columns)} has one")
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: an empty list")
    mesh = Mesh(np.array(devices), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    padded = -(-batch_size // len(devices)) * len(devices)
    shard = lambda a: jax.device_put(a, rows)
    replicate = lambda a: jax.device_put(a, replicated)

    predict = jax.jit(functools.partial(_clean_predictions, logits_fn))
    set_stats = jax.jit(lambda x, x_adv, norm: _output_stats(x, x_adv, logits_fn(x_adv), norm),
                        static_argnums=2)
    boxes = [threat_of(a)[2] for a in attacks.values()]
    set_level = {name for name, a in attacks.items() if is_set_level(a)}
    runners = {name: _Runner(logits_fn, columns[name], return_examples)
               for name in attacks if name not in set_level}
    cols = [(i, name) for i in range(len(eps_list)) for name in attacks]
    set_adv, set_seconds = {}, {}
    if set_level:
        # Set-level attacks see every example at once (in a multi-process run, every process runs
        # them on the whole set with the same key, so all agree; the evaluation is then sharded).
        if not (isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape")):
            raise ValueError(f"attacks: {sorted(set_level)} work on a whole evaluation set and need "
                             f"data as (x, y) arrays, not an iterable of batches")
        xs, ys = np.asarray(data[0])[:limit], labels_as_int32(np.asarray(data[1])[:limit])
        _check_data_batch(logits_fn, jnp.asarray(xs), jnp.asarray(ys), boxes)
        set_key = jax.random.fold_in(key, 2**31 - 1)  # distinct from every batch's key
        for i, e in enumerate(eps_list):
            for j, (name, a) in enumerate(attacks.items()):
                if name in set_level:
                    c = columns[name]
                    t0 = time.perf_counter()
                    x_adv = np.asarray(c.static(logits_fn, jnp.asarray(xs), jnp.asarray(ys),
                                                key=jax.random.fold_in(set_key, j), **c.hyper(e)))
                    check_attack_output(name, set_stats(jnp.asarray(xs), jnp.asarray(x_adv), c.norm),
                                        len(xs), c.hyper(e).get("eps"), c.norm, c.bounds,
                                        int(np.prod(xs.shape[1:])))
                    set_adv[i, name] = x_adv
                    set_seconds[i, name] = time.perf_counter() - t0
    correct: Dict[Any, List[np.ndarray]] = {"clean": []}
    correct.update({col: [] for col in cols})
    hits = {("hit",) + col: [] for col in cols if columns[col[1]].rule is not None}
    correct.update(hits)
    kept = {"x_adv": {col: [] for col in cols}, "targets": {col: [] for col in hits}}
    seconds = {k: set_seconds.get(k, 0.0) for k in ["clean"] + cols}
    # This process's examples (in a multi-process run a share of them, whose size is not known
    # in advance: no total).
    bar = _EvalProgress(_num_examples(data, limit) if num_shards == 1 else None, progress)
    n, num_batches, batch_ids, ys_kept = 0, 0, [], []
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
        _check_data_batch(logits_fn, jnp.asarray(x), jnp.asarray(y), boxes)
        m = len(x)
        dim = int(np.prod(x.shape[1:]))
        xp, yp = shard(_pad(x, padded)), shard(_pad(y, padded))
        valid = shard(np.arange(padded) < m)
        t0 = time.perf_counter()
        pred, finite = predict(xp)
        check_clean_logits(finite, m)
        pred = np.asarray(pred)[:m]
        seconds["clean"] += time.perf_counter() - t0
        correct["clean"].append(pred == y)
        ys_kept.append(y)
        batch_ids.append(b)
        kb = jax.random.fold_in(key, b)
        for i, e in enumerate(eps_list):
            for j, name in enumerate(attacks):
                c, col = columns[name], (i, name)
                t0 = time.perf_counter()
                if name in set_level:
                    xa = set_adv[col][n:n + m]
                    pred = np.asarray(predict(shard(_pad(xa, padded)))[0])[:m]
                    if return_examples:
                        kept["x_adv"][col].append(xa)
                else:
                    hyper = c.hyper(e)
                    out = runners[name](xp, yp, replicate(jax.random.fold_in(kb, j)), valid, hyper,
                                        replicate)
                    check_attack_output(name, out["stats"], m, hyper.get("eps"), c.norm, c.bounds,
                                        dim)
                    pred = np.asarray(out["pred"])[:m]
                    if ("hit",) + col in hits:
                        t = np.asarray(out["targets"])[:m]
                        correct[("hit",) + col].append(pred == t)
                        kept["targets"][("hit",) + col].append(t)
                    if return_examples:
                        kept["x_adv"][col].append(np.asarray(out["x_adv"])[:m])
                seconds[col] += time.perf_counter() - t0
                correct[col].append(pred == y)
        n += m
        if progress:
            bar.update(m, {_column_label(k, eps_list, sweeping): float(np.mean(np.concatenate(v)))
                           for k, v in correct.items() if k == "clean" or k[0] != "hit"})
        if verbose:
            print(f"  evaluated {n} examples", flush=True)
    bar.close()
    if n == 0:
        raise ValueError("data: no examples to evaluate")
    if num_shards > 1:
        correct, seconds = _gather_batches(correct, seconds, batch_ids, num_batches, batch_size)
    correct = {k: np.concatenate(v) for k, v in correct.items()}
    key_data, key_impl = key_data_of(key)
    results = []
    for i, e in enumerate(eps_list):
        corr = {"clean": correct["clean"], **{name: correct[i, name] for name in attacks}}
        accs = {name: float(np.mean(corr[name])) for name in attacks}
        a_rob = None
        if attacks:
            # Worst case over the attacks and the clean input itself (see the module docstring).
            a_rob = float(np.mean(np.all(np.stack([corr[k] for k in ("clean", *attacks)]), axis=0)))
        hit = {name: correct["hit", i, name] for name in attacks if ("hit", i, name) in correct}
        examples = None
        if return_examples:
            y_all = np.concatenate(ys_kept)
            examples = AdversarialExamples(
                x_adv={name: np.concatenate(kept["x_adv"][i, name]) for name in attacks},
                success={name: hit[name] if name in hit else ~corr[name] for name in attacks},
                y=y_all,
                targets={name: np.concatenate(kept["targets"]["hit", i, name]) for name in hit},
                specs={name: dict(columns[name].spec, **columns[name].hyper(e))
                       for name in attacks},
                eps={name: columns[name].hyper(e).get("eps") for name in attacks},
                key_data=key_data, key_impl=key_impl)
        results.append(RobustAccuracy(
            n=n, clean=float(np.mean(correct["clean"])), attacks=accs, a_rob=a_rob, correct=corr,
            seconds={"clean": seconds["clean"], **{name: seconds[i, name] for name in attacks}},
            eps={name: columns[name].hyper(e).get("eps") for name in attacks},
            targeted={name: float(np.mean(v)) for name, v in hit.items()}, examples=examples))
    return EpsSweep(eps=[float(e) for e in eps_list], results=results) if sweeping else results[0]


def accuracy_vs_eps(logits_fn: Callable[[jax.Array], jax.Array], x: np.ndarray, y: np.ndarray,
                    spec: Union[Mapping[str, Any], AttackFn], eps_values: Sequence[float], *,
                    key: jax.Array, batch_size: int = 256, progress: bool = False,
                    devices: Optional[Sequence[jax.Device]] = None) -> List[float]:
    """Accuracy under one attack at each eps: `robust_accuracy(..., eps=eps_values)`, so the attack
    is compiled once. `spec` is a config spec ({"name": "pgd", ...}) or an attack callable (e.g. a
    functools.partial of `advjax.attacks.pgd`); step sizes given with an eps keep their ratio to it
    (step_size / eps fixed). Every eps uses the same keys."""
    if isinstance(spec, Mapping):
        attacks = [dict(spec, label="a")]
    elif callable(spec):
        attacks = {"a": spec}
    else:
        raise ValueError(f"spec must be an attack spec (a mapping) or an attack callable, got "
                         f"{spec!r}")
    sweep = robust_accuracy(logits_fn, (x, y), attacks, key=key, batch_size=batch_size,
                            eps=list(eps_values), progress=progress, devices=devices)
    return sweep.curve("a")


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


# ------------------------------------------------------------------------------------------------
# AutoAttack (Croce & Hein, ICML 2020): the cascade and its sanity checks
# ------------------------------------------------------------------------------------------------

AUTOATTACK_VERSIONS = ("standard", "plus", "rand")
# Stages that are not gradient attacks on a loss: an example that survives every APGD stage and
# falls to one of these is a sign of gradient masking.
_NON_APGD_STAGES = ("fab", "fab-t", "square")


def autoattack_stages(norm: str, eps: float, version: str = "standard", *, num_classes: int = 10,
                      steps: int = 100, n_queries: int = 5000, num_target_classes: int = 9,
                      bounds: threat.Bounds = threat.DEFAULT_BOUNDS,
                      eot_iter: int = 20) -> List[Tuple[str, AttackFn]]:
    """The attacks of an AutoAttack version, in cascade order, as (label, attack) pairs.

    With the hyperparameters of the reference implementation (`pyautoattack`, AutoAttack's
    `_set_version`), for linf and l2:
      standard: apgd-ce (1 run), apgd-t (9 target classes, 1 run each), fab-t (9 target classes,
                1 run each), square (5000 queries, p_init 0.8, the schedule not rescaled, 1 run);
      plus:     apgd-ce (5 restarts), apgd-dlr (5 restarts), fab (untargeted, 5 restarts),
                square (5000 queries), apgd-t (9 targets), fab-t (9 targets);
      rand:     apgd-ce and apgd-dlr (1 run each), every gradient an EoT mean over `eot_iter` = 20
                draws of a randomized logits_fn(x, key) (`attacks.apgd(randomized=True)`); no
                FAB, no Square (the reference's `_set_version("rand")`).
    APGD and FAB run 100 iterations (`steps`); Square uses its "autoattack" variant (the
    reference's batch-shared windows). The target count is min(num_target_classes, classes - 1).
    Every stage works in the box `bounds` = (lo, hi).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2' for AutoAttack, got {norm!r}")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version must be one of {AUTOATTACK_VERSIONS}, got {version!r}")
    targets = max(1, min(num_target_classes, num_classes - 1))
    bounds = threat.check_bounds(bounds)
    p = functools.partial
    if version == "rand":
        _validation.check_positive_int(eot_iter, "eot_iter")
        eot = lambda loss: p(attacks_lib.apgd, eps=eps, norm=norm, steps=steps, loss=loss,
                             restarts=1, bounds=bounds, eot_iter=eot_iter, randomized=True)
        return [("apgd-ce", eot("ce")), ("apgd-dlr", eot("dlr"))]
    apgd_ce = lambda restarts: p(attacks_lib.apgd, eps=eps, norm=norm, steps=steps, loss="ce",
                                 restarts=restarts, bounds=bounds)
    apgd_dlr = p(attacks_lib.apgd, eps=eps, norm=norm, steps=steps, loss="dlr", restarts=5,
                 bounds=bounds)
    apgd_t = p(attacks_lib.apgd_t, eps=eps, norm=norm, steps=steps, num_target_classes=targets,
               bounds=bounds)
    fab_t = p(attacks_lib.fab, eps=eps, norm=norm, steps=steps, targeted=True,
              num_target_classes=targets, bounds=bounds)
    fab = p(attacks_lib.fab, eps=eps, norm=norm, steps=steps, restarts=5, bounds=bounds)
    square = p(attacks_lib.square, eps=eps, norm=norm, n_queries=n_queries, p_init=0.8,
               rescale_schedule=False, variant="autoattack", bounds=bounds)
    if version == "standard":
        return [("apgd-ce", apgd_ce(1)), ("apgd-t", apgd_t), ("fab-t", fab_t), ("square", square)]
    return [("apgd-ce", apgd_ce(5)), ("apgd-dlr", apgd_dlr), ("fab", fab), ("square", square),
            ("apgd-t", apgd_t), ("fab-t", fab_t)]


@dataclasses.dataclass
class AutoAttackResult:
    """What `autoattack` found. Accuracies are fractions in [0, 1].

    stages: robust accuracy after each stage of the cascade, in order (the last one is `robust`).
    broken_by: per example, 0 if misclassified at x, k >= 1 if the k-th stage broke it, -1 if robust.
    checks: counts behind the warnings (see `autoattack`); warnings: the messages, one per check
      that fired.
    """
    n: int
    norm: str
    eps: float
    version: str
    clean: float
    stages: Dict[str, float]
    broken_by: np.ndarray
    seconds: Dict[str, float]
    checks: Dict[str, int]
    warnings: List[str]
    x_adv: Optional[np.ndarray] = None

    @property
    def robust(self) -> float:
        return list(self.stages.values())[-1] if self.stages else self.clean

    @property
    def correct(self) -> np.ndarray:
        """Per-example robustness: correct at x and not broken by any stage."""
        return self.broken_by < 0

    def as_dict(self) -> Dict[str, Any]:
        out = {"autoattack": self.robust, "autoattack/clean": self.clean,
               "autoattack/n": self.n, "autoattack/norm": self.norm, "autoattack/eps": self.eps,
               "autoattack/version": self.version}
        out.update({f"autoattack/{k}": v for k, v in self.stages.items()})
        out.update({f"autoattack/checks/{k}": v for k, v in self.checks.items()})
        out["autoattack/warnings"] = list(self.warnings)
        return out

    def markdown(self, title: str = "") -> str:
        head = title or f"AutoAttack ({self.version}, {self.norm}, eps = {self.eps:g})"
        lines = [f"### {head}", f"n = {self.n} test examples", "",
                 "| stage | robust accuracy (%) | broken here | seconds |", "|---|---:|---:|---:|",
                 f"| clean | {100 * self.clean:.2f} | {int(np.sum(self.broken_by == 0))} | "
                 f"{self.seconds.get('clean', 0.0):.1f} |"]
        for k, (name, acc) in enumerate(self.stages.items(), start=1):
            lines.append(f"| {name} | {100 * acc:.2f} | {int(np.sum(self.broken_by == k))} | "
                         f"{self.seconds.get(name, 0.0):.1f} |")
        lines.append("")
        lines.append("Checks: " + ", ".join(f"{k} = {v}" for k, v in self.checks.items()))
        lines += [f"- WARNING: {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


def _stage_outputs(logits_fn, attack, x, y, key, valid):
    """One cascade stage on a batch: predictions at attack(x), `_output_stats`, and attack(x)."""
    kwargs = {"valid": valid} if is_batch_level(attack) else {}
    x_adv = attack(logits_fn, x, y, key=key, **kwargs)
    logits = logits_fn(x_adv)
    return jnp.argmax(logits, -1), _output_stats(x, x_adv, logits, threat_of(attack)[1]), x_adv


def _randomized_stage_outputs(logits_fn, attack, x, y, key, valid):
    """`_stage_outputs` for a randomized logits_fn(x, key): the attack gets the first half of
    split(key), the decision at attack(x) is one draw of the model keyed with the second."""
    attack_key, decide_key = jax.random.split(key)
    kwargs = {"valid": valid} if is_batch_level(attack) else {}
    x_adv = attack(logits_fn, x, y, key=attack_key, **kwargs)
    logits = logits_fn(x_adv, decide_key)
    return jnp.argmax(logits, -1), _output_stats(x, x_adv, logits, threat_of(attack)[1]), x_adv


def _randomized_clean_pass(logits_fn, x, y, key):
    """`_clean_pass` of one draw of a randomized logits_fn(x, key)."""
    return _clean_pass(lambda xx: logits_fn(xx, key), x, y)


def _check_randomized_signature(logits_fn, x_shape, dtype):
    """version="rand" calls logits_fn(x, key): say so when logits_fn does not take a key."""
    try:
        jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x_shape, dtype), jax.random.PRNGKey(0))
    except TypeError as e:
        raise ValueError(
            f'version="rand" evaluates a randomized model called as logits_fn(x, key) (one draw '
            f"of its randomness per key); this logits_fn cannot be called so: {e}") from None


def _clean_pass(logits_fn, x, y):
    """Predictions, finite-logit rows and zero-gradient rows (the cross-entropy's input gradient is
    exactly 0) at the clean inputs, in one forward and backward pass."""
    from advjax import losses as losses_lib

    def total(xx):
        logits = logits_fn(xx)
        return jnp.sum(losses_lib.cross_entropy(logits, y)), logits

    g, logits = jax.grad(total, has_aux=True)(x)
    zero = jnp.all(g.reshape(g.shape[0], -1) == 0, axis=1)
    return jnp.argmax(logits, -1), jnp.all(jnp.isfinite(logits), axis=-1), zero


def _probability_rows(logits, tol: float = 1e-5) -> int:
    """Rows that look like probabilities: non-negative, at most 1, summing to 1 (the reference's
    `check_range_output`)."""
    z = np.asarray(logits, np.float64)
    rows = (z.min(axis=1) > -tol) & (z.max(axis=1) < 1 + tol) & (np.abs(z.sum(axis=1) - 1) < tol)
    return int(rows.sum())


def _randomized_rows(logits_fn, x, tol: float = 1e-4) -> int:
    """Rows whose (l2-normalized) logits differ between identical calls: two eager calls and two
    calls of the jitted function (the reference's `check_randomized` compares 5 calls, 1e-4)."""
    jitted = jax.jit(logits_fn)
    outs = [np.asarray(logits_fn(x), np.float64), np.asarray(logits_fn(x), np.float64),
            np.asarray(jitted(x), np.float64), np.asarray(jitted(x), np.float64)]
    normed = [o / (np.linalg.norm(o, axis=1, keepdims=True) + 1e-10) for o in outs]
    changed = np.zeros(len(x), bool)
    for a, b in ((0, 1), (2, 3)):
        changed |= np.linalg.norm(normed[a] - normed[b], axis=1) > tol
        changed |= outs[a].argmax(1) != outs[b].argmax(1)
    return int(changed.sum())


def _collect(data, limit):
    """All of `data` (arrays or an iterable of batches) as host arrays, the first `limit` examples."""
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"data: {len(x)} inputs but {len(y)} labels")
        return x[:limit], y[:limit]
    xs, ys, n = [], [], 0
    for bx, by in _as_batches(data, 1 << 30):
        xs.append(bx)
        ys.append(by)
        n += len(bx)
        if limit is not None and n >= limit:
            break
    if not xs:
        raise ValueError("data: no examples to evaluate")
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]


class _StageProgress:
    """Progress over the batches of one stage: a tqdm bar when available, else printed lines."""

    def __init__(self, stage: str, total: int, enabled: bool):
        self.bar, self.stage, self.total, self.enabled = None, stage, total, enabled
        if enabled:
            try:
                import sys
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=f"autoattack {stage}", unit="batch",
                                dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, done: int, robust: int, n: int):
        if self.bar is not None:
            self.bar.set_postfix({"robust": f"{robust}/{n}"}, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            print(f"  autoattack {self.stage}: batch {done}/{self.total}, robust {robust}/{n}",
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def autoattack(logits_fn: Callable[[jax.Array], jax.Array],
               data: Union[Tuple[np.ndarray, np.ndarray], Iterable[Any]], *, norm: str, eps: float,
               version: str = "standard", key: jax.Array, batch_size: int = 256,
               limit: Optional[int] = None, return_examples: bool = False,
               progress: bool = False, stages: Optional[Sequence[Tuple[str, AttackFn]]] = None,
               warn: bool = True, bounds: threat.Bounds = threat.DEFAULT_BOUNDS) -> AutoAttackResult:
    """AutoAttack (Croce & Hein, ICML 2020) on `data`: its cascade of attacks and sanity checks.

    Cascade: clean predictions first; then each stage of `autoattack_stages(norm, eps, version)`
    (or `stages`) runs only on the examples that every earlier stage left correctly classified,
    gathered into full batches of `batch_size` (the last one padded; fewer survivors than that make
    one batch of their number rounded up to a multiple of 8), stage j's batch c with key
    fold_in(fold_in(key, j), c). Every stage's output is checked like `robust_accuracy`'s (finite,
    in the box, in the eps-ball, finite logits): an error, never a count.

    Checks (AutoAttack's flags; each is a warning naming its count, in `result.warnings`, and with
    `warn` also a Python warning):
      probability_outputs: rows of the first batch whose outputs are non-negative and sum to 1 --
        logits_fn seems to return probabilities; the losses need logits;
      randomized: rows of the first batch whose outputs change between identical calls -- a
        randomized defence, for which version="rand" (EoT) is the right evaluation (not run with
        version="rand", as in the reference);
      zero_gradient: examples whose cross-entropy input gradient at x is exactly zero -- gradient
        attacks cannot move them (saturated softmax, quantization, ...);
      broken_after_apgd: examples that the APGD stages before FAB or Square left robust and FAB or
        Square broke -- a sign of gradient masking (the reference warns when Square lowers robust
        accuracy).

    Args:
      data: (x, y) arrays or an iterable of (x, y) / {"image", "label"} batches, x in the box.
      norm, eps: the threat model ("linf" or "l2").
      version: "standard", "plus" or "rand". With "rand", logits_fn is a randomized model called
        as logits_fn(x, key) (one draw of its randomness per key): the stages (APGD-CE, APGD-DLR)
        average each gradient over 20 draws (EoT, `attacks.apgd(randomized=True)`), while the
        clean accuracy and every robust / broken decision are one draw each, keyed
        deterministically from `key` (clean batch b: fold_in(fold_in(key, 0), b); stage j's batch
        c: the second half of split(fold_in(fold_in(key, j), c)), whose first half is the
        attack's key), so a run is reproducible; the numbers are one sample of a random
        quantity (run several keys for its spread).
      return_examples: also return the adversarial examples (x where no stage succeeded).
      progress: a progress bar (tqdm, else printed lines) over the batches of each stage.
      stages: (label, attack) pairs to run instead of the version's (each checked in its own box).
      bounds: the valid-input box (lo, hi) of the data and of every stage (default (0, 1)).
    """
    _validation.check_positive_int(batch_size, "batch_size")
    _validation.check_nonnegative(eps, "eps")
    x_all, y_all = _collect(data, limit)
    if len(x_all) == 0:
        raise ValueError("data: no examples to evaluate")
    y_all = labels_as_int32(y_all)
    n = len(x_all)
    randomized = version == "rand"
    if randomized:
        # One deterministic draw of the model wherever a single logits_fn(x) is needed.
        _check_randomized_signature(logits_fn, (batch_size,) + x_all.shape[1:], x_all.dtype)
        clean_key = jax.random.fold_in(key, 0)
        one_draw = lambda xx: logits_fn(xx, clean_key)
    else:
        one_draw = logits_fn
    num_classes = int(jax.eval_shape(one_draw, jax.ShapeDtypeStruct(
        (batch_size,) + x_all.shape[1:], x_all.dtype)).shape[-1])
    bounds = threat.check_bounds(bounds)
    if stages is None:
        stages = autoattack_stages(norm, float(eps), version, num_classes=num_classes,
                                   bounds=bounds)
    stages = list(stages)
    dim = int(np.prod(x_all.shape[1:]))
    seconds: Dict[str, float] = {"clean": 0.0}

    # Clean pass (and the zero-gradient check) over all examples.
    if randomized:
        clean_rand = jax.jit(functools.partial(_randomized_clean_pass, logits_fn))
        clean_fn = lambda xb, yb, b: clean_rand(xb, yb, jax.random.fold_in(clean_key, b))
    else:
        clean_plain = jax.jit(functools.partial(_clean_pass, logits_fn))
        clean_fn = lambda xb, yb, b: clean_plain(xb, yb)
    robust = np.zeros(n, bool)
    zero_grad = np.zeros(n, bool)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        xb, yb = x_all[start:start + batch_size], y_all[start:start + batch_size]
        m = len(xb)
        _check_data_batch(one_draw, jnp.asarray(xb), jnp.asarray(yb),
                          [bounds] + [threat_of(a)[2] for _, a in stages])
        pred, finite, zero = clean_fn(jnp.asarray(_pad(xb, batch_size)),
                                      jnp.asarray(_pad(yb, batch_size)), start // batch_size)
        check_clean_logits(finite, m)
        robust[start:start + m] = np.asarray(pred)[:m] == yb
        zero_grad[start:start + m] = np.asarray(zero)[:m]
    seconds["clean"] = time.perf_counter() - t0
    clean = float(robust.mean())
    broken_by = np.where(robust, -1, 0).astype(np.int32)

    first = jnp.asarray(x_all[:batch_size])
    checks = {"probability_outputs": _probability_rows(jax.jit(one_draw)(first))}
    if not randomized:  # the reference skips `check_randomized` for version "rand" too
        checks["randomized"] = _randomized_rows(logits_fn, first)
    checks["zero_gradient"] = int(zero_grad.sum())

    x_adv = np.array(x_all, copy=True) if return_examples else None
    results: Dict[str, float] = {}
    for j, (name, attack) in enumerate(stages, start=1):
        eps_j, norm_j, bounds_j = threat_of(attack)
        run = jax.jit(functools.partial(
            _randomized_stage_outputs if randomized else _stage_outputs, logits_fn, attack))
        todo = np.flatnonzero(robust)
        # Every stage compiles its own program, so a stage whose survivors fit in one batch can
        # use a smaller one (rounded up to a multiple of 8) at no extra compilation.
        size = min(batch_size, max(8, -(-len(todo) // 8) * 8))
        chunks = range(0, len(todo), size)  # empty once nothing is left to attack
        bar = _StageProgress(name, len(chunks), progress)
        t0 = time.perf_counter()
        for c, start in enumerate(chunks):
            idx = todo[start:start + size]
            m = len(idx)
            xb = jnp.asarray(_pad(x_all[idx], size))
            yb = jnp.asarray(_pad(y_all[idx], size))
            kb = jax.random.fold_in(jax.random.fold_in(key, j), c)
            pred, stats, xb_adv = run(xb, yb, kb, jnp.arange(size) < m)
            check_attack_output(name, stats, m, eps_j, norm_j, bounds_j, dim)
            fooled = np.asarray(pred)[:m] != y_all[idx]
            robust[idx[fooled]] = False
            broken_by[idx[fooled]] = j
            if return_examples and fooled.any():
                x_adv[idx[fooled]] = np.asarray(xb_adv)[:m][fooled]
            bar.update(c + 1, int(robust.sum()), n)
        bar.close()
        seconds[name] = time.perf_counter() - t0
        results[name] = float(robust.mean())

    stage_names = [name for name, _ in stages]
    after_apgd = [k for k, s in enumerate(stage_names, start=1) if s in _NON_APGD_STAGES
                  and any(t.startswith("apgd") for t in stage_names[:k - 1])]
    checks["broken_after_apgd"] = int(np.isin(broken_by, after_apgd).sum())
    messages = _check_messages(checks, n, batch_size, len(first), stage_names, broken_by)
    if warn:
        import warnings as warnings_lib
        for msg in messages:
            warnings_lib.warn(f"autoattack: {msg}", stacklevel=2)
    return AutoAttackResult(n=n, norm=norm, eps=float(eps), version=version, clean=clean,
                            stages=results, broken_by=broken_by, seconds=seconds, checks=checks,
                            warnings=messages, x_adv=x_adv)


def _check_messages(checks, n, batch_size, first, stage_names, broken_by) -> List[str]:
    out = []
    if checks["probability_outputs"] == first:
        out.append(f"logits_fn's outputs look like probabilities: all {first} rows of the first "
                   f"batch are non-negative and sum to 1; pass logits (the losses assume them)")
    if checks.get("randomized"):
        out.append(f"logits_fn looks randomized: its outputs changed between identical calls on "
                   f"{checks['randomized']} of {first} examples; use version=\"rand\" (EoT)")
    if checks["zero_gradient"]:
        out.append(f"{checks['zero_gradient']} of {n} examples have an exactly zero input gradient "
                   f"of the cross-entropy at x; gradient attacks cannot move them (saturated "
                   f"softmax, quantization or another gradient-masking operation)")
    if checks["broken_after_apgd"]:
        per_stage = ", ".join(f"{s} {int(np.sum(broken_by == k))}"
                              for k, s in enumerate(stage_names, start=1) if s in _NON_APGD_STAGES)
        out.append(f"{checks['broken_after_apgd']} examples survived the APGD stages and fell to "
                   f"FAB or Square ({per_stage}): a sign of gradient masking; gradient-based "
                   f"evaluations of this model are unreliable")
    return out
