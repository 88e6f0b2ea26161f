"""Datasets through tensorflow-datasets, without TensorFlow, and a NumPy input pipeline.

    x, y = load_numpy("fashion_mnist", "train")          # float32 NHWC in [0, 1], int32 labels
    info = dataset_info("fashion_mnist")                  # num_classes, shape, num_train, num_test
    for batch in batches(x, y, 128, rng=seed, shuffle=True, drop_remainder=True,
                         augment=None, epoch=epoch, start_step=0):
        batch["image"], batch["label"]

Datasets: digits (default, zero setup), mnist, fashion_mnist (local IDX files), cifar10, cifar100,
svhn_cropped (tfds-prepared copies). See advjax/data/README.md for sources, caching and numbers.
Importing this package does not import tensorflow_datasets; loading does.
"""

from advjax.data.catalog import DATA_DIR_ENV, DATASETS, dataset_info
from advjax.data.errors import CorruptDatasetError, DataError, DatasetNotFoundError
from advjax.data.loading import load_numpy, resolve_data_dir, to_float01
from advjax.data.pipeline import (AUGMENTATIONS, apply_augmentation, augment_images, batch_rng,
                                  batches, draw_augmentation, epoch_batches, epoch_permutation,
                                  num_batches)

__all__ = [
    "AUGMENTATIONS", "CorruptDatasetError", "DATASETS", "DATA_DIR_ENV", "DataError",
    "DatasetNotFoundError", "apply_augmentation", "augment_images", "batch_rng", "batches",
    "dataset_info", "draw_augmentation", "epoch_batches", "epoch_permutation", "load_numpy",
    "num_batches", "resolve_data_dir", "to_float01",
]
