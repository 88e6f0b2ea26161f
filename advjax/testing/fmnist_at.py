"""A small adversarially trained Fashion-MNIST CNN with committed weights: the model on which AutoAttack
is cross-checked against the reference implementation (tests/test_peers.py) and benchmarked
(benchmarks/autoattack.py).

Model: `CNN4C3F(widths=(8, 16), convs_per_block=1, fc_widths=(64,), dropout_rate=0.0,
padding="SAME")`: conv 3x3 8 -> ReLU -> 2x2 max-pool -> conv 3x3 16 -> ReLU -> 2x2 max-pool ->
dense 64 -> ReLU -> dense 10 (54k parameters), which `advjax.testing.torch_twins` copies into PyTorch.
Training (`python -m advjax.testing.fmnist_at --train`, the command that made the committed file):
PGD adversarial training (Madry et al. 2018) at linf eps = 0.1 -- PGD-7 with step 0.025 from a uniform
random start -- Adam 1e-3, batch 128, `EPOCHS` epochs over the 60k training images, seed 0. Small so
that a full AutoAttack run fits in a CPU test; robust enough (about half the test set survives
AutoAttack at eps 0.1) that the comparison is not vacuous.

The weights (`fmnist_at_cnn.npz` beside this file) are checked against `WEIGHTS_SHA256` when loaded.
The data are the IDX files of the Debian package dataset-fashion-mnist.

A second committed model, `name="quickstart"` in every function here: the quickstart's CNN-4C3F
(`configs/quickstart.py`: conv 3x3 16, 16, 32, 32 with VALID padding and a 2x2 max-pool after each
pair, dense 128, dense 10; 83k parameters), trained by the quickstart's own command (PGD-5 AT at
eps 0.1, Adam 1e-3, batch 128, one epoch, seed 0) and exported from its workdir:

    advjax train --config configs/quickstart.py --workdir W
    python -m advjax.testing.fmnist_at --export-quickstart W

It is the model on which `benchmarks/attack_throughput.py` times APGD against the reference
implementation (the larger convolutions are where XLA:CPU and PyTorch differ most).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
WEIGHTS = os.path.join(os.path.dirname(__file__), "fmnist_at_cnn.npz")
WEIGHTS_SHA256 = "0fd057e3a0398cefc076e259ac0256bcfd36ebc490d9145da91f4b562a53abab"
MODEL_FIELDS = dict(widths=(8, 16), convs_per_block=1, fc_widths=(64,), dropout_rate=0.0,
                    padding="SAME")
EPS, STEP, PGD_STEPS, EPOCHS, BATCH, LR = 0.1, 0.025, 7, 4, 128, 1e-3
QUICKSTART_FIELDS = dict(widths=(16, 32), fc_widths=(128,), dropout_rate=0.0)
QUICKSTART_WEIGHTS = os.path.join(os.path.dirname(__file__), "fmnist_quickstart_cnn.npz")
QUICKSTART_SHA256 = "7271439570b665b80782ea00275c13bda74c6a78c2352bc1ea681be4d3681ae2"
# name -> (model fields, weights file, sha256)
_MODELS = {"small": (MODEL_FIELDS, WEIGHTS, WEIGHTS_SHA256),
           "quickstart": (QUICKSTART_FIELDS, QUICKSTART_WEIGHTS, QUICKSTART_SHA256)}


def _spec(name: str):
    if name not in _MODELS:
        raise ValueError(f"name must be one of {sorted(_MODELS)}, got {name!r}")
    return _MODELS[name]


def make_model(name: str = "small"):
    """The Flax module of the committed model `name` ("small" or "quickstart")."""
    from advjax.models.cnn import CNN4C3F
    return CNN4C3F(**_spec(name)[0])


def load_split(split: str, limit: int = 0):
    """(x, y): NHWC float32 images in [0, 1] and int32 labels of the Fashion-MNIST `split`."""
    from advjax.data import idx
    stems = idx.SPLIT_FILES[split]
    paths = [idx.find_idx_file(FMNIST_DIR, s) for s in stems]
    if None in paths:
        raise FileNotFoundError(f"Fashion-MNIST IDX files not found in {FMNIST_DIR}; install the "
                                "Debian package dataset-fashion-mnist (scripts/setup.sh)")
    x = idx.read_idx(paths[0]).astype(np.float32)[..., None] / 255.0
    y = idx.read_idx(paths[1]).astype(np.int32)
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_variables(name: str = "small"):
    """The committed Flax variables {"params": ...} of model `name`, after checking the file's
    hash."""
    import jax
    import jax.numpy as jnp
    _, path, sha = _spec(name)
    digest = _sha256(path)
    if digest != sha:
        raise ValueError(f"{path}: sha256 {digest} differs from the committed {sha}")
    flat = dict(np.load(path))
    template = make_model(name).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: jnp.asarray(flat[jax.tree_util.keystr(p)], leaf.dtype), template)


def logits_fn(name: str = "small"):
    """The jitted logits function of the committed model `name` (NHWC in [0, 1] -> 10 logits)."""
    import jax
    model, variables = make_model(name), load_variables(name)
    return jax.jit(lambda x: model.apply(variables, x))


def torch_model(name: str = "small"):
    """The committed model `name` in PyTorch (NCHW input, eval mode), via
    `advjax.testing.torch_twins`."""
    from advjax.testing import torch_twins
    return torch_twins.torch_twin(make_model(name), load_variables(name))


def _save_params(params, out: str) -> None:
    import jax
    np.savez(out, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in
                     jax.tree_util.tree_flatten_with_path({"params": params})[0]})
    print(f"wrote {out}, sha256 {_sha256(out)}")


def export_quickstart(workdir: str, out: str = QUICKSTART_WEIGHTS) -> None:
    """Writes the parameters of the quickstart run in `workdir` (its newest checkpoint) to `out`,
    after checking that its model is the quickstart's."""
    from advjax import cli
    from advjax import train as train_lib
    config = cli.load_config_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                               "quickstart.py"))
    state, _ = train_lib.restore_state(config, workdir)
    _save_params(state.params, out)


def train(seed: int = 0, epochs: int = EPOCHS, out: str = WEIGHTS):
    """PGD-AT as in the module docstring; writes `out` and prints its sha256."""
    import jax
    import jax.numpy as jnp
    import optax
    from advjax import attacks
    x_tr, y_tr = load_split("train")
    x_te, y_te = load_split("test", 1000)
    model = make_model()
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))["params"]
    opt = optax.adam(LR)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb, key):
        f = lambda xx: model.apply({"params": params}, xx)
        x_adv = attacks.pgd(f, xb, yb, key=key, eps=EPS, step_size=STEP, steps=PGD_STEPS)

        def loss(p):
            logits = model.apply({"params": p}, x_adv)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        value, g = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed + 1)
    t0 = time.time()
    for epoch in range(epochs):
        perm = rng.permutation(len(x_tr))
        for i in range(len(x_tr) // BATCH):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            params, opt_state, value = step(params, opt_state, x_tr[idx], y_tr[idx],
                                            jax.random.fold_in(key, epoch * 100000 + i))
        f = jax.jit(lambda xx: model.apply({"params": params}, xx))
        acc = float(np.mean(np.argmax(f(x_te), -1) == y_te))
        x_adv = attacks.pgd(f, jnp.asarray(x_te), jnp.asarray(y_te), key=key, eps=EPS,
                            step_size=STEP, steps=20)
        rob = float(np.mean(np.argmax(f(x_adv), -1) == y_te))
        print(f"epoch {epoch + 1}: loss {float(value):.3f}, clean {acc:.3f}, PGD-20 {rob:.3f} "
              f"(1000 test images), {time.time() - t0:.0f} s", flush=True)
    _save_params(params, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="retrain and overwrite the weights")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--export-quickstart", metavar="WORKDIR",
                        help="export the quickstart model trained in WORKDIR")
    args = parser.parse_args()
    if args.train:
        train(epochs=args.epochs)
    elif args.export_quickstart:
        export_quickstart(args.export_quickstart)
    else:
        parser.print_help()
