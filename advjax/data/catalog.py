"""What advjax knows about each dataset without touching the data: shapes, sizes, class names, where
the data comes from and how to get it onto an offline machine.

`dataset_info(name)` is answered from this table alone, so configs and models can be built before
(or without) any data being present.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

DATA_DIR_ENV = "ADVJAX_DATA_DIR"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())
assert len(CIFAR100_CLASSES) == 100

# Per-class example counts of the original IDX files; checked when preparing from them.
FASHION_MNIST_COUNTS = {"train": (6000,) * 10, "test": (1000,) * 10}
MNIST_COUNTS = {"train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
                "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)}


def _tfds_copy_instructions(tfds_name: str) -> str:
    return (f"On a machine with internet: `pip install tensorflow-datasets array-record` and run\n"
            f"  tfds build {tfds_name} --file_format=array_record\n"
            f"(plain `tfds build {tfds_name}` writes TFRecord files, which advjax also reads, "
            f"without TensorFlow), then copy the folder ~/tensorflow_datasets/{tfds_name} into this "
            f"machine's data_dir (the `data_dir` argument, ${DATA_DIR_ENV}, or "
            f"~/tensorflow_datasets).")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset as advjax sees it.

    Attributes:
      name: advjax's name (`load_numpy(name, ...)`).
      num_classes, shape, num_train, num_test, class_names: what `dataset_info` reports.
      source: "idx" (our tfds builder over local IDX files, falling back to tfds' own prepared
        copy), "digits" (our builder over scikit-learn's bundled digits) or "tfds" (tfds' standard
        builder; the data must already be prepared in data_dir).
      tfds_name: name of tfds' standard builder for this dataset, if there is one.
      idx_dir_env: environment variable naming the IDX folder (source "idx").
      default_idx_dir: IDX folder used when that variable is unset (None: no default).
      idx_class_counts: expected per-class counts of the IDX files, per split.
      how_to_get: how to get the data onto an offline machine (shown when it cannot be found).
    """
    name: str
    num_classes: int
    shape: Tuple[int, int, int]
    num_train: int
    num_test: int
    class_names: Optional[Tuple[str, ...]]
    source: str
    tfds_name: Optional[str] = None
    idx_dir_env: Optional[str] = None
    default_idx_dir: Optional[str] = None
    idx_class_counts: Optional[Dict[str, Tuple[int, ...]]] = None
    how_to_get: str = ""

    def idx_dir(self, override: Optional[str] = None) -> Optional[str]:
        """The IDX folder to use: `override`, else $idx_dir_env, else the default (may be None)."""
        if override:
            return os.path.expanduser(override)
        from_env = os.environ.get(self.idx_dir_env or "", "")
        return os.path.expanduser(from_env) if from_env else self.default_idx_dir


DATASETS: Dict[str, DatasetSpec] = {spec.name: spec for spec in [
    DatasetSpec(
        name="digits", num_classes=10, shape=(8, 8, 1), num_train=1442, num_test=355,
        class_names=DIGIT_CLASSES, source="digits",
        how_to_get="Install scikit-learn (`pip install scikit-learn`), which ships this dataset."),
    DatasetSpec(
        name="fashion_mnist", num_classes=10, shape=(28, 28, 1), num_train=60000, num_test=10000,
        class_names=FASHION_MNIST_CLASSES, source="idx", tfds_name="fashion_mnist",
        idx_dir_env="ADVJAX_FASHION_MNIST_DIR",
        default_idx_dir="/usr/share/datasets/fashion-mnist",
        idx_class_counts=FASHION_MNIST_COUNTS,
        how_to_get=("Install the Debian package: `apt-get install dataset-fashion-mnist` (puts the "
                    "IDX files in /usr/share/datasets/fashion-mnist), or put train-images-idx3-ubyte"
                    "[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
                    "t10k-labels-idx1-ubyte[.gz] in a folder and set ADVJAX_FASHION_MNIST_DIR to it.\n"
                    "Alternatively: " + _tfds_copy_instructions("fashion_mnist"))),
    DatasetSpec(
        name="mnist", num_classes=10, shape=(28, 28, 1), num_train=60000, num_test=10000,
        class_names=DIGIT_CLASSES, source="idx", tfds_name="mnist", idx_dir_env="ADVJAX_MNIST_DIR",
        default_idx_dir=None, idx_class_counts=MNIST_COUNTS,
        how_to_get=("Put the four MNIST IDX files (train-images-idx3-ubyte[.gz], "
                    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                    "t10k-labels-idx1-ubyte[.gz]) in a folder and set ADVJAX_MNIST_DIR to it.\n"
                    "Alternatively: " + _tfds_copy_instructions("mnist"))),
    DatasetSpec(
        name="cifar10", num_classes=10, shape=(32, 32, 3), num_train=50000, num_test=10000,
        class_names=CIFAR10_CLASSES, source="tfds", tfds_name="cifar10",
        how_to_get=_tfds_copy_instructions("cifar10")),
    DatasetSpec(
        name="cifar100", num_classes=100, shape=(32, 32, 3), num_train=50000, num_test=10000,
        class_names=CIFAR100_CLASSES, source="tfds", tfds_name="cifar100",
        how_to_get=_tfds_copy_instructions("cifar100")),
    DatasetSpec(
        name="svhn_cropped", num_classes=10, shape=(32, 32, 3), num_train=73257, num_test=26032,
        class_names=DIGIT_CLASSES, source="tfds", tfds_name="svhn_cropped",
        how_to_get=_tfds_copy_instructions("svhn_cropped")),
]}


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; a ValueError naming the known datasets otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def dataset_info(name: str) -> dict:
    """Static facts about dataset `name`, available without the data.

    Returns dict(num_classes=int, shape=(H, W, C), num_train=int, num_test=int,
    class_names=tuple of str).
    """
    spec = get_spec(name)
    return dict(num_classes=spec.num_classes, shape=spec.shape, num_train=spec.num_train,
                num_test=spec.num_test, class_names=spec.class_names)
