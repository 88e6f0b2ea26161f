"""advjax.data: datasets through tfds without TensorFlow, clear errors, and the batch pipeline.

Every dataset test uses its own temporary tfds data_dir, so nothing depends on (or writes to) the
user's ~/tensorflow_datasets. The real Fashion-MNIST is prepared once per session (~10 s).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct

import numpy as np
import pytest

from advjax import data
from advjax.data import builders, catalog, idx

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"real Fashion-MNIST not installed in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")


def write_idx(path: str, array: np.ndarray, compress: bool = False) -> None:
    """Writes a uint8 array as an IDX file (gzipped if `compress`)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)


# ------------------------------------------------------------------------------------------------
# Real Fashion-MNIST through our tfds builder
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fashion_data_dir(tmp_path_factory):
    """A data_dir with Fashion-MNIST prepared from the Debian package's IDX files."""
    if not os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"real Fashion-MNIST not installed in {FASHION_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    return str(tmp_path_factory.mktemp("tfds_fashion"))


@needs_fashion_mnist
def test_fashion_mnist_loads_real_data_through_tfds(fashion_data_dir):
    x_train, y_train = data.load_numpy("fashion_mnist", "train", data_dir=fashion_data_dir,
                                       idx_dir=FASHION_DIR)
    x_test, y_test = data.load_numpy("fashion_mnist", "test", data_dir=fashion_data_dir)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0.0 == x_train.min() and x_train.max() == 1.0
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    # Source order is kept: the first training labels of Fashion-MNIST (ankle boot, T-shirt, ...).
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    # The prepared copy is a tfds dataset in array_record format, under our builder's name.
    prepared = os.path.join(fashion_data_dir, "advjax_fashion_mnist", "1.0.0")
    assert os.path.isfile(os.path.join(prepared, "dataset_info.json"))
    assert any(f.startswith("advjax_fashion_mnist-train.array_record") for f in os.listdir(prepared))
    # Pixel values equal the IDX file's bytes / 255.
    raw = idx.read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(x_test[..., 0], raw.astype(np.float32) / 255.0)


@needs_fashion_mnist
def test_fashion_mnist_cached_reload_limit_and_uint8(fashion_data_dir):
    x_full, y_full = data.load_numpy("fashion_mnist", "test", data_dir=fashion_data_dir)
    x_u8, y_u8 = data.load_numpy("fashion_mnist", "test", data_dir=fashion_data_dir,
                                 limit=500, dtype=np.uint8)
    assert x_u8.dtype == np.uint8 and x_u8.shape == (500, 28, 28, 1)
    np.testing.assert_array_equal(data.to_float01(x_u8), x_full[:500])
    np.testing.assert_array_equal(y_u8, y_full[:500])


def test_truncated_idx_file_raises_clear_error(tmp_path):
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    write_idx(str(idx_dir / "train-images-idx3-ubyte.gz"), np.zeros((60000, 28, 28), np.uint8),
              compress=True)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 6000)
    write_idx(str(idx_dir / "train-labels-idx1-ubyte.gz"), labels, compress=True)
    write_idx(str(idx_dir / "t10k-images-idx3-ubyte"), np.zeros((10000, 28, 28), np.uint8))
    write_idx(str(idx_dir / "t10k-labels-idx1-ubyte"), np.repeat(np.arange(10, dtype=np.uint8), 1000))
    # Cut the gzip stream of the training images in half.
    path = idx_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    data_dir = tmp_path / "tfds"
    with pytest.raises(data.CorruptDatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.load_numpy("fashion_mnist", "train", data_dir=str(data_dir), idx_dir=str(idx_dir))
    # Nothing half-prepared is left behind to be mistaken for the dataset later.
    assert not (data_dir / "advjax_fashion_mnist" / "1.0.0").exists()


def test_idx_with_wrong_image_count_raises(tmp_path):
    for split, (image_stem, label_stem) in idx.SPLIT_FILES.items():
        write_idx(str(tmp_path / image_stem), np.zeros((100, 28, 28), np.uint8))
        write_idx(str(tmp_path / label_stem), np.arange(100, dtype=np.uint8) % 10)
    with pytest.raises(data.CorruptDatasetError, match=r"expected train images of shape \(60000"):
        data.load_numpy("fashion_mnist", "train", data_dir=str(tmp_path / "tfds"),
                        idx_dir=str(tmp_path))


def test_idx_checks_header_and_class_counts(tmp_path):
    images = np.arange(20 * 4 * 4, dtype=np.uint8).reshape(20, 4, 4)
    labels = np.arange(20, dtype=np.uint8) % 10
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), images)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), labels, compress=True)
    x, y = idx.read_checked_split(str(tmp_path), "train", image_hw=(4, 4), class_counts=[2] * 10)
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(data.CorruptDatasetError, match="per-class label counts"):
        idx.read_checked_split(str(tmp_path), "train", image_hw=(4, 4),
                               class_counts=[3, 1] + [2] * 8)
    # A raw file cut short is caught from the header's declared size.
    raw = tmp_path / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-5])
    with pytest.raises(data.CorruptDatasetError, match="header declares shape"):
        idx.read_idx(str(raw))
    raw.write_bytes(b"\x12\x34\x08\x03")
    with pytest.raises(data.CorruptDatasetError, match="bad magic"):
        idx.read_idx(str(raw))


@needs_fashion_mnist
def test_mnist_builder_rejects_fashion_mnist_files(tmp_path):
    """The IDX builder serves mnist too, and its label-count check tells the two datasets apart."""
    with pytest.raises(data.CorruptDatasetError, match="per-class label counts"):
        data.load_numpy("mnist", "train", data_dir=str(tmp_path), idx_dir=FASHION_DIR)


# ------------------------------------------------------------------------------------------------
# Missing datasets: one clear error that says how to get them
# ------------------------------------------------------------------------------------------------

def test_missing_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_numpy("cifar10", "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert "tfds build cifar10" in message and str(tmp_path / "cifar10") in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVJAX_FASHION_MNIST_DIR", raising=False)
    empty = tmp_path / "no_idx_here"
    empty.mkdir()
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_numpy("fashion_mnist", "test", data_dir=str(tmp_path / "tfds"), idx_dir=str(empty))
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(empty) in message and "t10k-images-idx3-ubyte" in message


def test_missing_mnist_names_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVJAX_MNIST_DIR", raising=False)
    with pytest.raises(data.DatasetNotFoundError, match="ADVJAX_MNIST_DIR"):
        data.load_numpy("mnist", "train", data_dir=str(tmp_path))


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="fashion_mnist"):
        data.dataset_info("imagenet")


# ------------------------------------------------------------------------------------------------
# digits (zero setup), data_dir resolution, TFRecord-format copies
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_digits"))


def test_digits_loads_with_fixed_stratified_split(digits_data_dir):
    from sklearn.datasets import load_digits
    x_train, y_train = data.load_numpy("digits", "train", data_dir=digits_data_dir)
    x_test, y_test = data.load_numpy("digits", "test", data_dir=digits_data_dir)
    info = data.dataset_info("digits")
    assert x_train.shape == (info["num_train"], 8, 8, 1) == (1442, 8, 8, 1)
    assert x_test.shape == (info["num_test"], 8, 8, 1) == (355, 8, 8, 1)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() == 1.0
    assert set(np.unique(y_test)) == set(range(10))
    reference = load_digits()
    test_mask = builders.digits_test_mask(reference.target)
    np.testing.assert_array_equal(x_test[..., 0], (reference.images[test_mask] / 16).astype(np.float32))
    np.testing.assert_array_equal(y_train, reference.target[~test_mask])


def test_data_dir_comes_from_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.resolve_data_dir(None) == data.resolve_data_dir("") == str(tmp_path)
    x, _ = data.load_numpy("digits", "test", limit=3)
    assert x.shape == (3, 8, 8, 1)
    assert (tmp_path / "advjax_digits" / "1.0.0" / "dataset_info.json").is_file()


def test_tfrecord_format_copy_reads_without_tensorflow(digits_data_dir, tmp_path):
    """A dataset prepared by plain `tfds build` (TFRecord files) is read by our own reader."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    expected = data.load_numpy("digits", "train", data_dir=digits_data_dir)
    source = os.path.join(digits_data_dir, "advjax_digits", "1.0.0")
    target = tmp_path / "advjax_digits" / "1.0.0"
    target.mkdir(parents=True)
    for name in ("features.json", "label.labels.txt"):
        shutil.copy(os.path.join(source, name), target)
    info = json.loads(open(os.path.join(source, "dataset_info.json")).read())
    info["fileFormat"] = "tfrecord"
    (target / "dataset_info.json").write_text(json.dumps(info))
    for split in ("train", "test"):
        name = f"advjax_digits-{split}.array_record-00000-of-00001"
        records = ArrayRecordDataSource([os.path.join(source, name)])
        with open(target / name.replace("array_record", "tfrecord"), "wb") as f:
            for record in records.__getitems__(list(range(len(records)))):
                f.write(struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4)
    got = data.load_numpy("digits", "train", data_dir=str(tmp_path))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# ------------------------------------------------------------------------------------------------
# Standard tfds builders under tfds.testing.mock_data (no download, no TensorFlow)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,augment", [("cifar10", "crop_flip"), ("cifar100", "crop_flip"),
                                          ("svhn_cropped", "crop")])
def test_standard_builders_through_mock_data(name, augment, tmp_path):
    import tensorflow_datasets as tfds
    info = data.dataset_info(name)
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        x, y = data.load_numpy(name, "train", data_dir=str(tmp_path))
        x_u8, _ = data.load_numpy(name, "test", data_dir=str(tmp_path), limit=5, dtype=np.uint8)
    assert x.shape == (24, *info["shape"]) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert y.dtype == np.int32 and 0 <= y.min() and y.max() < info["num_classes"]
    assert x_u8.shape == (5, *info["shape"]) and x_u8.dtype == np.uint8
    batch = next(data.batches(x, y, 8, rng=0, shuffle=True, drop_remainder=True, augment=augment))
    assert batch["image"].shape == (8, *info["shape"]) and batch["label"].shape == (8,)
    assert not os.listdir(tmp_path), "mock data must not be prepared or cached on disk"


# ------------------------------------------------------------------------------------------------
# The batch pipeline
# ------------------------------------------------------------------------------------------------

def id_images(n: int, hw: int = 6, channels: int = 1) -> np.ndarray:
    """uint8 images whose pixels are all 1 + i % 250, so batch content identifies examples."""
    return np.broadcast_to((1 + np.arange(n) % 250).astype(np.uint8)[:, None, None, None],
                           (n, hw, hw, channels)).copy()


def collect(iterator):
    batches = list(iterator)
    return (np.concatenate([b["label"] for b in batches]) if batches else np.zeros(0, np.int32),
            batches)


def test_epoch_is_a_permutation_and_deterministic():
    n, labels = 103, np.arange(103)
    x = id_images(n)
    order, batches = collect(data.batches(x, labels, 10, rng=5, shuffle=True, drop_remainder=False))
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    assert [len(b["label"]) for b in batches] == [10] * 10 + [3]
    assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(batches[0]["image"][:, 0, 0, 0] * 255, 1 + batches[0]["label"])
    again, _ = collect(data.batches(x, labels, 10, rng=5, shuffle=True, drop_remainder=False))
    np.testing.assert_array_equal(order, again)
    other_seed, _ = collect(data.batches(x, labels, 10, rng=6, shuffle=True, drop_remainder=False))
    next_epoch, _ = collect(data.batches(x, labels, 10, rng=5, shuffle=True, drop_remainder=False,
                                         epoch=1))
    assert order.tolist() != other_seed.tolist() and order.tolist() != next_epoch.tolist()
    dropped, _ = collect(data.batches(x, labels, 10, rng=5, shuffle=True, drop_remainder=True))
    np.testing.assert_array_equal(dropped, order[:100])
    in_order, _ = collect(data.batches(x, labels, 10, rng=None, shuffle=False, drop_remainder=False))
    np.testing.assert_array_equal(in_order, labels)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_shards_are_disjoint_cover_and_recompose_the_global_batch(drop_remainder):
    n, shards, local = 107, 3, 4
    x, labels = id_images(n, hw=8), np.arange(n)
    kwargs = dict(rng=11, shuffle=True, drop_remainder=drop_remainder, augment="crop_flip")
    per_shard = [list(data.batches(x, labels, local, num_shards=shards, shard_index=k, **kwargs))
                 for k in range(shards)]
    seen = np.concatenate([b["label"] for shard in per_shard for b in shard])
    assert len(seen) == len(set(seen.tolist()))
    expected = (n // (local * shards)) * local * shards if drop_remainder else n
    assert len(seen) == expected
    if drop_remainder:
        assert len({len(shard) for shard in per_shard}) == 1, "shards must step in lockstep"
    # Step i of all shards together is exactly global batch i of a single process, pixels included.
    single = list(data.batches(x, labels, local * shards, **kwargs))
    for step, global_batch in enumerate(single):
        parts = [shard[step] for shard in per_shard if step < len(shard)]
        np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]),
                                      global_batch["label"])
        np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]),
                                      global_batch["image"])


def test_start_step_resumes_identically_with_augmentation():
    x, labels = id_images(64, hw=8, channels=3), np.arange(64)
    kwargs = dict(rng=3, shuffle=True, drop_remainder=True, augment="crop_flip", epoch=2)
    full = list(data.batches(x, labels, 8, **kwargs))
    resumed = list(data.batches(x, labels, 8, start_step=5, **kwargs))
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_epoch_batches_counts_global_steps_and_resumes():
    x, labels = id_images(50, hw=8), np.arange(50)
    kwargs = dict(seed=9, num_epochs=3, augment="crop")
    full = list(data.epoch_batches(x, labels, 8, **kwargs))
    per_epoch = data.num_batches(50, 8, drop_remainder=True)
    assert [step for step, _ in full] == list(range(3 * per_epoch))
    epoch1 = list(data.batches(x, labels, 8, rng=9, shuffle=True, drop_remainder=True,
                               augment="crop", epoch=1))
    np.testing.assert_array_equal(full[per_epoch][1]["image"], epoch1[0]["image"])
    resumed = list(data.epoch_batches(x, labels, 8, start_step=per_epoch + 2, **kwargs))
    assert [s for s, _ in resumed] == [s for s, _ in full[per_epoch + 2:]]
    for (_, a), (_, b) in zip(full[per_epoch + 2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_augmentation_keeps_shape_and_range_and_changes_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(64)
    plain = next(data.batches(x, labels, 64, rng=1, shuffle=False, drop_remainder=True))["image"]
    for mode in data.AUGMENTATIONS:
        aug = next(data.batches(x, labels, 64, rng=1, shuffle=False, drop_remainder=True,
                                augment=mode))["image"]
        assert aug.shape == plain.shape and aug.dtype == np.float32
        assert 0.0 <= aug.min() and aug.max() <= 1.0
        changed = np.any(aug != plain, axis=(1, 2, 3))
        assert changed.mean() > 0.3, f"{mode} left {1 - changed.mean():.0%} of images unchanged"
        mirrored = np.all(aug == plain[:, :, ::-1], axis=(1, 2, 3))
        if mode == "crop":
            assert not mirrored.any(), "crop must never mirror (SVHN digits)"
        if mode == "flip":
            assert np.all(mirrored | ~changed), "flip only mirrors"
    # Float input in [0, 1] gives the same batches as uint8 input.
    as_float = next(data.batches(data.to_float01(x), labels, 64, rng=1, shuffle=False,
                                 drop_remainder=True, augment="crop_flip"))["image"]
    as_uint8 = next(data.batches(x, labels, 64, rng=1, shuffle=False, drop_remainder=True,
                                 augment="crop_flip"))["image"]
    np.testing.assert_array_equal(as_float, as_uint8)


def test_crop_geometry():
    image = np.arange(1, 17, dtype=np.uint8).reshape(1, 4, 4, 1)
    centre = data.apply_augmentation(image, "crop", np.array([[4, 4]]), np.array([True]))
    np.testing.assert_array_equal(centre, image)  # crop only: the flip coin is ignored
    shifted = data.apply_augmentation(image, "crop_flip", np.array([[3, 5]]), np.array([False]))
    expected = np.zeros_like(image)
    expected[0, 1:, :3] = image[0, :3, 1:]  # content moves down one row and left one column
    np.testing.assert_array_equal(shifted, expected)
    flipped = data.apply_augmentation(image, "flip", np.array([[0, 0]]), np.array([True]))
    np.testing.assert_array_equal(flipped, image[:, :, ::-1])


def test_batches_argument_checks():
    x, y = id_images(10), np.arange(10)
    common = dict(shuffle=True, drop_remainder=True)
    with pytest.raises(ValueError, match="augment"):
        data.batches(x, y, 2, rng=0, augment="rotate", **common)
    with pytest.raises(ValueError, match="shard_index"):
        data.batches(x, y, 2, rng=0, num_shards=2, shard_index=2, **common)
    with pytest.raises(ValueError, match="labels"):
        data.batches(x, y[:5], 2, rng=0, **common)
    with pytest.raises(ValueError, match="seed"):
        data.batches(x, y, 2, rng=-1, **common)
    generator = np.random.default_rng(0)
    first, _ = collect(data.batches(x, y, 2, rng=generator, **common))
    second, _ = collect(data.batches(x, y, 2, rng=generator, **common))
    assert sorted(first.tolist()) == sorted(second.tolist()) and first.tolist() != second.tolist()


def test_dataset_info_is_static():
    for name, spec in catalog.DATASETS.items():
        info = data.dataset_info(name)
        assert info["shape"] == spec.shape and len(info["class_names"]) == info["num_classes"]
    assert data.dataset_info("cifar100")["num_classes"] == 100
    assert data.dataset_info("fashion_mnist")["class_names"][9] == "Ankle boot"
