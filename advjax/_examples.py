"""Adversarial examples as results: what `robust_accuracy(..., return_examples=True)` keeps, and an
npz file format for them (re-exported as `advjax.evaluate.AdversarialExamples`, `save_examples`,
`load_examples`, `model_hash`).

A file holds, per attack column, the adversarial inputs and the per-example success, the true labels,
the targets of targeted attacks, and the provenance needed to trust a transfer: each column's attack
spec (with the eps and step sizes it actually ran with), the evaluation key, and a hash of the
attacked model's parameters (`model_hash`). Arrays are stored as written (no pickling, no casts), so
`load_examples(save_examples(...))` is bit-identical; metadata is JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import jax
import numpy as np

FORMAT = "advjax.examples/1"


@dataclasses.dataclass
class AdversarialExamples:
    """Adversarial examples of one evaluation, one entry per attack column, in the data's order.

    x_adv: the attack's output per example (the clean input where the attack returned it).
    success: per example, whether the attack succeeded: misclassified at x_adv (untargeted), or
      classified as its target (attacks with a target rule, under `robust_accuracy(targeted=True)`).
    y: the true labels. targets: per targeted column, the target classes.
    specs: per column, the attack's description (function or registry name and hyperparameters, eps
      and step sizes as run). eps: per column, the radius (None for attacks without one).
    key_data: the evaluation's PRNG key (`jax.random.key_data`), key_impl its implementation.
    model_hash: `model_hash(params)` of the attacked model, if given to `save_examples`.
    """
    x_adv: Dict[str, np.ndarray]
    success: Dict[str, np.ndarray]
    y: np.ndarray
    targets: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    specs: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    eps: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)
    key_data: Optional[np.ndarray] = None
    key_impl: Optional[str] = None
    model_hash: Optional[str] = None

    @property
    def n(self) -> int:
        return len(self.y)


def model_hash(params: Any) -> str:
    """sha256 of a parameter pytree: every leaf's path, dtype, shape and bytes, in flattening order.

    Equal parameters give equal hashes on any machine (the bytes are the little-endian array
    contents); a changed value, dtype, shape or leaf name changes the hash.
    """
    h = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def key_data_of(key: Any) -> tuple:
    """(uint32 key data, implementation name or None) of a raw or typed PRNG key."""
    if key is None:
        return None, None
    impl = None
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        key = jax.random.key_data(key)
    return np.asarray(key), impl


def _jsonable(value: Any) -> Any:
    """A JSON-ready copy of a spec value: numbers, strings, lists and dicts as they are; arrays of
    one number as the number; anything else as its repr (e.g. a custom loss function)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return np.asarray(value).item()
    return repr(value)


def save_examples(path: str, examples: Any, *, params: Any = None) -> str:
    """Writes adversarial examples to `path` (npz; ".npz" is appended if missing) and returns the path.

    Args:
      examples: an `AdversarialExamples`, or a result of `robust_accuracy(..., return_examples=True)`
        (a `RobustAccuracy` or an `EpsSweep`, whose columns are named "attack@eps").
      params: the attacked model's parameters; their `model_hash` is stored (else the file's hash is
        the one already in `examples`, or None).
    """
    ex = examples
    if not isinstance(ex, AdversarialExamples):
        ex = getattr(examples, "examples", None)
    if not isinstance(ex, AdversarialExamples):
        raise ValueError("examples must be AdversarialExamples or a robust_accuracy result computed "
                         "with return_examples=True")
    digest = model_hash(params) if params is not None else ex.model_hash
    names = list(ex.x_adv)
    meta = {"format": FORMAT, "names": names,
            "specs": {k: _jsonable(v) for k, v in ex.specs.items()},
            "eps": {k: ex.eps.get(k) for k in names}, "targets": sorted(ex.targets),
            "key_impl": ex.key_impl, "model_hash": digest, "has_key": ex.key_data is not None}
    arrays = {"meta": np.array(json.dumps(meta)), "y": np.asarray(ex.y)}
    if ex.key_data is not None:
        arrays["key_data"] = np.asarray(ex.key_data)
    for i, name in enumerate(names):
        arrays[f"x_adv_{i}"] = np.asarray(ex.x_adv[name])
        arrays[f"success_{i}"] = np.asarray(ex.success[name])
        if name in ex.targets:
            arrays[f"targets_{i}"] = np.asarray(ex.targets[name])
    if not path.endswith(".npz"):
        path += ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_examples(path: str) -> AdversarialExamples:
    """Reads a file written by `save_examples` (no pickle is loaded)."""
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            raise ValueError(f"{path}: not an advjax examples file (no metadata)")
        meta = json.loads(str(f["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown examples format {meta.get('format')!r}, expected "
                             f"{FORMAT!r}")
        names: List[str] = meta["names"]
        return AdversarialExamples(
            x_adv={k: f[f"x_adv_{i}"] for i, k in enumerate(names)},
            success={k: f[f"success_{i}"] for i, k in enumerate(names)},
            y=f["y"],
            targets={k: f[f"targets_{i}"] for i, k in enumerate(names)
                     if k in meta["targets"]},
            specs=meta["specs"], eps=meta["eps"],
            key_data=f["key_data"] if meta["has_key"] else None, key_impl=meta["key_impl"],
            model_hash=meta["model_hash"])
