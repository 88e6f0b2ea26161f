"""`load_numpy`: a whole split as NumPy arrays, through tfds, without TensorFlow.

Where the data comes from, per dataset (see `catalog.py`):
* digits: our `advjax_digits` tfds builder, prepared on first use from scikit-learn's bundled copy.
* fashion_mnist, mnist: our `advjax_fashion_mnist` / `advjax_mnist` builders, prepared on first use
  (a few seconds) from local IDX files; if no IDX files are found, tfds' own `fashion_mnist` / `mnist`
  if it is already prepared in data_dir.
* cifar10, cifar100, svhn_cropped: tfds' standard builders; the data must already be prepared in
  data_dir (this machine has no internet). Prepared in array_record or TFRecord format.

Records are read through tfds' random-access data source (array_record; TFRecord through
`tfrecord.TfRecordSplit`) and decoded once; the decoded split is then cached as two .npy files inside
the prepared dataset's folder (`advjax_numpy_cache/`), so later loads take milliseconds. The cache
lives and dies with the prepared data: re-preparing (deleting the folder) drops it too. The SHA-256
of each cached array is recorded beside it when it is built and checked on every load (~0.1 s for
Fashion-MNIST's training images); a cache that changed on disk is rebuilt with a warning.

The tfds data_dir is the `data_dir` argument, else $ADVJAX_DATA_DIR, else tfds' default
($TFDS_DATA_DIR or ~/tensorflow_datasets).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import itertools
import json
import os
import tempfile
import warnings
from typing import Any, Iterable, Iterator, Optional, Tuple

import numpy as np

from advjax.data import catalog, idx
from advjax.data.errors import CorruptDatasetError, DatasetNotFoundError

_CACHE_FOLDER = "advjax_numpy_cache"


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
    """The tfds data_dir to use: `data_dir`, else $ADVJAX_DATA_DIR, else tfds' default."""
    if data_dir:
        return os.path.expanduser(data_dir)
    from_env = os.environ.get(catalog.DATA_DIR_ENV, "")
    if from_env:
        return os.path.expanduser(from_env)
    from tensorflow_datasets.core import constants
    return os.path.expanduser(constants.DATA_DIR)


def to_float01(images: np.ndarray) -> np.ndarray:
    """float32 images in [0, 1]: uint8 pixels are divided by 255, float images are kept as they are."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32, copy=False)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return np.array(images)
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def load_numpy(name: str, split: str, *, data_dir: Optional[str] = None,
               limit: Optional[int] = None, dtype: Any = np.float32,
               idx_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The first `limit` examples (default: all) of `split` of dataset `name`, in the split's order.

    Args:
      name: one of `catalog.DATASETS` (digits, mnist, fashion_mnist, cifar10, cifar100, svhn_cropped).
      split: "train" or "test" (svhn_cropped also has "extra").
      data_dir: tfds data_dir ("" or None: $ADVJAX_DATA_DIR, else tfds' default).
      limit: keep only the first `limit` examples.
      dtype: np.float32 (default; images in [0, 1]) or np.uint8 (0..255; a quarter of the memory,
        and `batches` converts each batch to float32 [0, 1]).
      idx_dir: folder of IDX files for mnist / fashion_mnist (default: $ADVJAX_MNIST_DIR /
        $ADVJAX_FASHION_MNIST_DIR, and /usr/share/datasets/fashion-mnist for fashion_mnist).

    Returns:
      images (N, H, W, C) of `dtype`, labels (N,) int32.

    Raises:
      DatasetNotFoundError: the data is not on this machine; the message says how to get it.
      CorruptDatasetError: the local source files are damaged or not this dataset.
    """
    spec = catalog.get_spec(name)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"dtype must be float32 or uint8, got {dtype}")
    builder, source = _open_split(spec, split, resolve_data_dir(data_dir), idx_dir)
    if limit == 0:
        return np.zeros((0, *spec.shape), np.dtype(dtype)), np.zeros((0,), np.int32)
    images, labels = _read_split(builder, source, split, limit)
    _check_loaded(spec, split, images, labels)
    images = to_float01(images) if np.dtype(dtype) == np.float32 else _to_uint8(images)
    return images, labels.astype(np.int32)


def _check_loaded(spec: catalog.DatasetSpec, split: str, images: np.ndarray,
                  labels: np.ndarray) -> None:
    if images.shape[1:] != spec.shape:
        raise CorruptDatasetError(f"{spec.name}/{split}: images of shape {images.shape[1:]}, "
                                  f"expected {spec.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise CorruptDatasetError(f"{spec.name}/{split}: labels outside [0, {spec.num_classes})")


# ---------------------------------------------------------------------------------------------
# Finding (and if need be preparing) the split


def _open_split(spec: catalog.DatasetSpec, split: str, data_dir: str, idx_dir: Optional[str]):
    """(builder, data source) for one split, preparing our own builders on first use."""
    if spec.source == "digits":
        from advjax.data import builders
        builder = _prepared(builders.AdvjaxDigits, data_dir)
        return builder, _data_source(builder, split)
    if spec.source == "idx":
        return _open_idx_split(spec, split, data_dir, idx_dir)
    return _open_standard_split(spec, split, data_dir, searched=[])


def _open_idx_split(spec: catalog.DatasetSpec, split: str, data_dir: str, idx_dir: Optional[str]):
    """Our IDX builder (prepared, or preparable from the IDX folder), else tfds' own builder."""
    from advjax.data import builders
    builder_cls = builders.IDX_BUILDERS[spec.name]
    builder = builder_cls(data_dir=data_dir)
    searched = [f"prepared advjax copy: {builder.data_dir} (not there)"]
    if not builder.is_prepared():
        folder = spec.idx_dir(idx_dir)
        missing = idx.missing_idx_files(folder) if folder else []
        if folder and os.path.isdir(folder) and not missing:
            builder = _prepared(builder_cls, data_dir, manual_dir=folder)
        else:
            why = ("no folder configured" if not folder else "folder does not exist"
                   if not os.path.isdir(folder) else f"missing {', '.join(missing)}")
            searched.insert(0, f"IDX files: {folder or '$' + spec.idx_dir_env} ({why})")
            return _open_standard_split(spec, split, data_dir, searched)
    return builder, _data_source(builder, split)


def _open_standard_split(spec: catalog.DatasetSpec, split: str, data_dir: str, searched: list):
    """tfds' standard builder `spec.tfds_name`, which must already be prepared in data_dir."""
    import tensorflow_datasets as tfds
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    try:
        return builder, _data_source(builder, split)
    except _NotPrepared as err:
        searched = searched + [f"tfds' {spec.tfds_name}: {builder.data_dir} (not there)"]
        raise DatasetNotFoundError(
            f"Dataset {spec.name!r} is not available on this machine (no internet here).\n"
            f"Looked for:\n  - " + "\n  - ".join(searched) + f"\nHow to get it: {spec.how_to_get}"
        ) from err.__cause__


class _NotPrepared(Exception):
    """Internal: the builder has no prepared data in its data_dir."""


def _data_source(builder, split: str):
    """tfds' random-access data source for `split`, or a TFRecord reader for TFRecord-format data.

    Asks tfds first (so `tfds.testing.mock_data` can stand in), and only when tfds cannot give a
    source works out why: not prepared (-> _NotPrepared) or prepared as TFRecord (-> our reader).
    """
    from tensorflow_datasets.core import file_adapters
    try:
        return builder.as_data_source(split=split)
    except Exception as err:  # tfds raises several unrelated types here; we re-diagnose below
        if not builder.is_prepared():
            raise _NotPrepared() from err
        if builder.info.file_format == file_adapters.FileFormat.TFRECORD:
            from advjax.data.tfrecord import TfRecordSplit
            if split not in builder.info.splits:
                raise ValueError(f"{builder.name}: no split {split!r}; splits: "
                                 f"{list(builder.info.splits)}") from err
            return TfRecordSplit(builder, split)
        raise


@contextlib.contextmanager
def _exclusive_lock(data_dir: str, name: str):
    """An inter-process lock, so concurrent first uses (pytest-xdist, multi-host) prepare once."""
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".advjax-prepare-{name}.lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _prepared(builder_cls, data_dir: str, *, manual_dir: Optional[str] = None):
    """A `builder_cls` instance whose data is prepared in data_dir (preparing it if needed).

    Prepares in array_record format. Never downloads: our builders read only local files, and the
    GCS lookup is switched off. An existing preparation is used as it is, whatever its format.
    """
    import tensorflow_datasets as tfds
    if builder_cls(data_dir=data_dir).is_prepared():
        return builder_cls(data_dir=data_dir)
    with _exclusive_lock(data_dir, builder_cls.name):
        if not builder_cls(data_dir=data_dir).is_prepared():  # else another process just did it
            config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
            builder = builder_cls(data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare(download_config=config)
    # A fresh instance reads the prepared dataset_info.json (split sizes and files).
    return builder_cls(data_dir=data_dir)


# ---------------------------------------------------------------------------------------------
# Reading the split into arrays, with the decoded-array cache


def _cache_paths(builder, split: str) -> Optional[Tuple[str, str, str]]:
    """Paths of the cached images .npy, labels .npy and their digests (.json), or None when the split
    must not be cached.

    Only real prepared data is cached: a plain split name whose record files exist on disk (so a
    `tfds.testing.mock_data` stand-in, which has none, is never cached).
    """
    folder = os.fspath(builder.data_dir)
    if "[" in split or not os.path.isfile(os.path.join(folder, "dataset_info.json")):
        return None
    if not glob.glob(os.path.join(glob.escape(folder), f"{builder.name}-{split}.*")):
        return None
    cache = os.path.join(folder, _CACHE_FOLDER)
    return (os.path.join(cache, f"{split}-images.npy"), os.path.join(cache, f"{split}-labels.npy"),
            os.path.join(cache, f"{split}-sha256.json"))


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (C order)."""
    h = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()


def _load_cache(paths: Tuple[str, str, str], num_examples: int):
    """The cached arrays (memory-mapped), or None if absent, not of the expected length, or not what
    was written: each array's SHA-256 must match the digest recorded when the cache was built (a
    mismatch warns, and the caller rebuilds the cache)."""
    try:
        images = np.load(paths[0], mmap_mode="r")
        labels = np.load(paths[1], mmap_mode="r")
        with open(paths[2]) as f:
            digests = json.load(f)
    except (OSError, ValueError):
        return None  # absent, unreadable, or written before digests were recorded: rebuild
    if len(images) != num_examples or len(labels) != num_examples:
        return None
    changed = [name for name, array in (("images", images), ("labels", labels))
               if digests.get(name) != array_digest(array)]
    if changed:
        warnings.warn(f"the cached {' and '.join(changed)} in {os.path.dirname(paths[0])} do not "
                      f"match the SHA-256 recorded when the cache was built (changed on disk); "
                      f"rebuilding the cache from the prepared records", CacheMismatchWarning,
                      stacklevel=4)
        return None
    return images, labels


class CacheMismatchWarning(UserWarning):
    """A cached array differs from what was written; the cache is rebuilt."""


def _save_npy_atomically(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save_cache(paths: Tuple[str, str, str], images: np.ndarray, labels: np.ndarray) -> None:
    """Writes the cache, then the digests of what it wrote (last, so that a cache interrupted
    half-way never verifies); a read-only data_dir just means no cache."""
    try:
        _save_npy_atomically(paths[0], images)
        _save_npy_atomically(paths[1], labels)
        digests = {"images": array_digest(images), "labels": array_digest(labels)}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(paths[2]), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(digests, f)
        os.replace(tmp, paths[2])
    except OSError:
        pass


def _read_split(builder, source, split: str, limit: Optional[int]):
    """(images, labels) of the first `limit` examples, from the cache or by decoding records."""
    cache_paths = _cache_paths(builder, split)
    count = len(source) if limit is None else min(limit, len(source))
    if cache_paths is not None:
        cached = _load_cache(cache_paths, builder.info.splits[split].num_examples)
        if cached is not None:
            stop = len(cached[1]) if limit is None else min(limit, len(cached[1]))
            return np.array(cached[0][:stop]), np.array(cached[1][:stop])
        if os.path.exists(cache_paths[0]):  # a stale or damaged cache: rebuild it whole
            count = len(source)
    images, labels = _decode_examples(_iter_examples(source, count), count)
    if cache_paths is not None and count == len(source):
        _save_cache(cache_paths, images, labels)
    if limit is not None and limit < count:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _iter_examples(source, count: int, chunk: int = 4096) -> Iterator[dict]:
    """The first `count` decoded examples of `source`, read in chunks where the source allows.

    tfds' array_record source reads a list of records 4-5x faster through `__getitems__` than one
    by one. Sources without it (our TFRecord reader) are iterated. `tfds.testing.mock_data`
    (tfds 4.9.10) installs an unbound `__getitems__` that raises TypeError; we then iterate too.
    """
    get_many = getattr(source, "__getitems__", None)
    if get_many is not None:
        try:
            first = get_many(list(range(min(chunk, count))))
        except TypeError:
            get_many = None
    if get_many is None:
        yield from itertools.islice(iter(source), count)
        return
    yield from first
    for start in range(chunk, count, chunk):
        yield from get_many(list(range(start, min(start + chunk, count))))


def _decode_examples(examples: Iterable[dict], count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stacks `count` (> 0) decoded tfds examples ({"image": HWC array, "label": int}) into arrays."""
    images = labels = None
    num_read = 0
    for example in itertools.islice(examples, count):
        image = np.asarray(example["image"])
        if images is None:
            images = np.empty((count, *image.shape), dtype=image.dtype)
            labels = np.empty((count,), dtype=np.int64)
        images[num_read] = image
        labels[num_read] = example["label"]
        num_read += 1
    if num_read < count:
        raise CorruptDatasetError(f"read {num_read} examples where the split's metadata promises "
                                  f"{count}; the prepared files are incomplete")
    return images, labels
