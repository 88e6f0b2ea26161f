"""The committed Fashion-MNIST models of `advjax.testing.fmnist_at` ("small" and "quickstart"): their
loaders check the weights' hashes, and the models are the trained ones (not a fresh initialization)."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from advjax.testing import fmnist_at

NAMES = ("small", "quickstart")


@pytest.fixture(scope="module")
def test_images():
    try:
        return fmnist_at.load_split("test", 500)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", NAMES)
def test_committed_model_is_trained(name, test_images):
    x_te, y_te = test_images
    f = fmnist_at.logits_fn(name)
    acc = float(np.mean(np.argmax(np.asarray(f(jnp.asarray(x_te))), -1) == y_te))
    # Trained (about 0.77-0.8 clean after adversarial training); a fresh initialization gives ~0.1.
    assert acc > 0.7, acc


@pytest.mark.parametrize("name", NAMES)
def test_torch_twin_matches(name, test_images):
    torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh)")
    from advjax.testing import torch_twins
    x = test_images[0][:64]
    with torch.no_grad():
        theirs = fmnist_at.torch_model(name)(torch_twins.to_nchw(x)).numpy()
    np.testing.assert_allclose(np.asarray(fmnist_at.logits_fn(name)(jnp.asarray(x))), theirs,
                               atol=1e-4, rtol=1e-4)


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    fields, path, sha = fmnist_at._MODELS["quickstart"]
    copy = str(tmp_path / os.path.basename(path))
    shutil.copy(path, copy)
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    monkeypatch.setitem(fmnist_at._MODELS, "quickstart", (fields, copy, sha))
    with pytest.raises(ValueError, match="sha256"):
        fmnist_at.load_variables("quickstart")


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="name must be one of"):
        fmnist_at.make_model("cifar")
