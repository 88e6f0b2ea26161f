"""advjax's own tfds builders, which prepare datasets from local files without internet or TensorFlow.

* `AdvjaxFashionMnist`, `AdvjaxMnist`: MNIST-style IDX files in a local folder (tfds' manual_dir),
  e.g. Debian's `dataset-fashion-mnist` in /usr/share/datasets/fashion-mnist. Both splits are read and
  checked (shapes, per-class label counts) before anything is written.
* `AdvjaxDigits`: scikit-learn's bundled 8x8 digits, scaled to [0, 1], with a fixed stratified split.

Images are stored as raw-bytes `tfds.features.Tensor`s rather than `tfds.features.Image`, because
PNG encoding in tfds needs TensorFlow, and raw bytes encode and decode fastest (the default Tensor
encoding writes every pixel as an int64 and makes preparing Fashion-MNIST 3x slower). Examples keep their source order
(`disable_shuffling`), so `limit=N` means "the first N" as in the original files.

The builders are registered with tfds under their snake_case names (`advjax_fashion_mnist`, ...), so
their prepared copies never collide with tfds' own `fashion_mnist`/`mnist` in the same data_dir.
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from advjax.data import catalog, idx
from advjax.data.errors import CorruptDatasetError, DatasetNotFoundError

_DIGITS_TEST_EVERY = 5  # within each class, every 5th example (ranks 4, 9, 14, ...) is a test example


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What our builders share: examples are (image, label) pairs yielded in source order."""

    # tfds derives this from the module through `importlib_resources`, a package it does not
    # install on Python >= 3.9; it is only used to look for a checksums file next to the code.
    code_path = epath.Path(__file__)

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator:
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


class _LocalIdxBuilder(_LocalBuilder, skip_registration=True):
    """Common part of the IDX builders; subclasses set SPEC and MANUAL_DOWNLOAD_INSTRUCTIONS."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Prepared from local IDX files, in file order."}
    SPEC: catalog.DatasetSpec

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.SPEC.name} prepared by advjax from local IDX files.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=self.SPEC.shape, dtype=np.uint8,
                                               encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=list(self.SPEC.class_names)),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager) -> Dict[str, Iterator]:
        directory = os.fspath(dl_manager.manual_dir)
        fix_hint = f"How to get intact files: {self.SPEC.how_to_get}"
        # Read and check every split first, so a bad folder fails before any file is written.
        checked = {split: idx.read_checked_split(directory, split, image_hw=self.SPEC.shape[:2],
                                                 class_counts=self.SPEC.idx_class_counts[split],
                                                 fix_hint=fix_hint)
                   for split in idx.SPLIT_FILES}
        return {split: self._generate_examples(images, labels)
                for split, (images, labels) in checked.items()}


class AdvjaxFashionMnist(_LocalIdxBuilder):
    """Fashion-MNIST (Xiao et al., 2017) from local IDX files."""
    SPEC = catalog.DATASETS["fashion_mnist"]
    MANUAL_DOWNLOAD_INSTRUCTIONS = SPEC.how_to_get


class AdvjaxMnist(_LocalIdxBuilder):
    """MNIST (LeCun et al., 1998) from local IDX files."""
    SPEC = catalog.DATASETS["mnist"]
    MANUAL_DOWNLOAD_INSTRUCTIONS = SPEC.how_to_get


def digits_test_mask(labels: np.ndarray) -> np.ndarray:
    """The fixed digits test split: within each class, in scikit-learn's order, every 5th example.

    Stratified and free of random number generators, so it is identical on every machine and
    NumPy version. For the 1797 digits this gives 1442 train / 355 test examples.
    """
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        mask[members[_DIGITS_TEST_EVERY - 1::_DIGITS_TEST_EVERY]] = True
    return mask


def load_sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 (1797, 8, 8, 1) in [0, 1] (pixel / 16) and int labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DatasetNotFoundError("Dataset 'digits' comes with scikit-learn, which is not "
                                   "installed: pip install scikit-learn") from err
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return images, bunch.target.astype(np.int64)


class AdvjaxDigits(_LocalBuilder):
    """scikit-learn's 8x8 handwritten digits (UCI optdigits test set), the zero-setup dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "8x8x1 float32 in [0, 1]; stratified split, every 5th per class is test."}

    def _info(self) -> tfds.core.DatasetInfo:
        spec = catalog.DATASETS["digits"]
        return tfds.core.DatasetInfo(
            builder=self,
            description=("scikit-learn's 8x8 digits scaled to [0, 1]. Test split: within each "
                         "class, in scikit-learn's order, every 5th example."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=spec.shape, dtype=np.float32,
                                               encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=list(spec.class_names)),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager) -> Dict[str, Iterator]:
        del dl_manager  # nothing to download
        spec = catalog.DATASETS["digits"]
        images, labels = load_sklearn_digits()
        test = digits_test_mask(labels)
        if (int((~test).sum()), int(test.sum())) != (spec.num_train, spec.num_test):
            raise CorruptDatasetError(
                f"scikit-learn's digits gave {(~test).sum()} train / {test.sum()} test examples, "
                f"expected {spec.num_train} / {spec.num_test}; has scikit-learn changed the data?")
        return {"train": self._generate_examples(images[~test], labels[~test]),
                "test": self._generate_examples(images[test], labels[test])}


IDX_BUILDERS = {"fashion_mnist": AdvjaxFashionMnist, "mnist": AdvjaxMnist}
