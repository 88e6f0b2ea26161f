"""Trained weights of the DAA study's target model, committed with their sha256, and their loader.

Users and later studies re-evaluate the model without retraining it:

    import sys; sys.path.insert(0, "experiments/daa_fmnist")
    import weights
    logits_fn = weights.load_logits_fn("experiments/daa_fmnist/weights/<file>.npz")
    # logits_fn: batch of 28x28x1 images in [0, 1] -> (batch, 10) logits, jit-able, for any attack

Files live in experiments/daa_fmnist/weights/; MANIFEST.json records, per file, its sha256, the
model (`advjax.models` name), a digest of the parameter values, and where they came from (config,
checkpoint step, command). `load` refuses a file whose sha256 differs from the manifest's (or from
the one passed), and parameters whose names or shapes differ from the model's.
`experiments/daa_fmnist/run.py --stage export` writes a file and its manifest entry from a
training checkpoint.

The .npz holds one array per parameter, named by its path in the Flax variable tree joined by "/"
(e.g. "params/conv1/kernel"), float32 as trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.join(HERE, "weights")
MANIFEST = os.path.join(WEIGHTS_DIR, "MANIFEST.json")
DEFAULT_MODEL = "daa_release_cnn"
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flatten(tree: Dict[str, Any], prefix: str = "", leaf=np.asarray) -> Dict[str, Any]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(dict(v.items()), name, leaf))
        else:
            out[name] = leaf(v)
    return out


def _unflatten(flat: Dict[str, np.ndarray]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def params_digest(variables: Dict[str, Any]) -> str:
    """sha256 over the variables' names, dtypes, shapes and bytes (independent of the file's zip
    metadata, so the same weights saved twice have the same digest)."""
    h = hashlib.sha256()
    for name, arr in sorted(_flatten(variables).items()):
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def read_manifest(manifest: str = MANIFEST) -> Dict[str, Any]:
    if not os.path.exists(manifest):
        return {}
    with open(manifest) as f:
        return json.load(f)


def save(path: str, variables: Dict[str, Any], *, info: Dict[str, Any],
         model: str = DEFAULT_MODEL, model_fields: Optional[Dict[str, Any]] = None,
         manifest: str = MANIFEST) -> Dict[str, Any]:
    """Writes `variables` ({"params": ...} and any other collections) to the .npz `path`
    (uncompressed: trained float32 weights hardly compress) and its entry (sha256, model name and
    fields, params digest, `info`) to `manifest`; returns the entry."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    flat = _flatten(variables)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)
    entry = {"sha256": file_sha256(path), "model": model, "model_fields": model_fields or {},
             "params_digest": params_digest(variables),
             "num_parameters": int(sum(v.size for k, v in flat.items() if k.startswith("params/"))),
             **info}
    entries = read_manifest(manifest)
    entries[os.path.basename(path)] = entry
    tmp_m = manifest + ".tmp"
    with open(tmp_m, "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp_m, manifest)
    return entry


def load(path: str, *, sha256: Optional[str] = None, manifest: str = MANIFEST
         ) -> Tuple[Dict[str, Any], Any]:
    """(variables, Flax module) from a committed .npz after checking its sha256.

    sha256: the expected hash; default the manifest's entry for the file's name. A file with no
    expected hash, a different hash, or parameters that do not match the model's names and shapes
    raises ValueError naming the file.
    """
    import jax

    from advjax import models
    entry = read_manifest(manifest).get(os.path.basename(path), {})
    expected = sha256 or entry.get("sha256")
    if not expected:
        raise ValueError(f"no sha256 for {path}: pass sha256=... or add the file to {manifest} "
                         f"(run.py --stage export writes both)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} differs from the expected {expected}; the file "
                         f"is not the one recorded (corrupted, or a Git LFS pointer?)")
    with np.load(path) as z:
        variables = _unflatten({k: z[k] for k in z.files})
    name = entry.get("model", DEFAULT_MODEL)
    model = models.get_model(name, num_classes=NUM_CLASSES, **entry.get("model_fields", {}))
    want = _flatten(jax.eval_shape(lambda k: models.init_variables(model, k, INPUT_SHAPE),
                                   jax.random.PRNGKey(0)), leaf=lambda a: tuple(a.shape))
    got = _flatten(variables, leaf=lambda a: tuple(a.shape))
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or bad:
        raise ValueError(f"{path} does not fit model {name!r}: "
                         f"missing {missing}, unexpected {extra}, wrong shapes {bad}")
    return variables, model


def load_logits_fn(path: str, *, sha256: Optional[str] = None, manifest: str = MANIFEST):
    """logits_fn(x) = the model's inference-mode logits with the committed weights (see `load`)."""
    import jax
    import jax.numpy as jnp
    variables, model = load(path, sha256=sha256, manifest=manifest)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)

    def logits_fn(x):
        return model.apply(variables, x, train=False)

    return logits_fn
