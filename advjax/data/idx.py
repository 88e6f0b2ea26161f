"""Reading and checking MNIST-style IDX files (the format of MNIST and Fashion-MNIST), NumPy only.

A split is two files, e.g. `train-images-idx3-ubyte` (N x 28 x 28 uint8) and
`train-labels-idx1-ubyte` (N uint8), each optionally gzipped (`.gz`). Everything here raises
`CorruptDatasetError` with the offending path when the files are not what they should be: truncated,
a bad header, the wrong number of images, or per-class label counts that differ from the known ones.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from advjax.data.errors import CorruptDatasetError

# File stems of each split, as distributed by the MNIST and Fashion-MNIST authors.
SPLIT_FILES: Dict[str, Tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE_TYPE_CODE = 0x08


def find_idx_file(directory: str, stem: str) -> Optional[str]:
    """Path of `stem` or `stem.gz` inside `directory` (the raw file wins), or None."""
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def missing_idx_files(directory: str) -> list:
    """The file stems (all splits) that `directory` lacks; empty when every split is present."""
    return [stem for stems in SPLIT_FILES.values() for stem in stems
            if find_idx_file(directory, stem) is None]


def _read_file_bytes(path: str) -> bytes:
    """The decompressed content of `path` (gzip if it ends in .gz), failing clearly if damaged."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise CorruptDatasetError(f"{path}: cannot be read or decompressed ({err}); the file is "
                                  "truncated or damaged") from err


def read_idx(path: str) -> np.ndarray:
    """Parses one uint8 IDX file into an array of the shape its header declares.

    Checks the magic number and that the payload has exactly as many bytes as the header's
    dimensions imply, so a truncated file cannot be mistaken for a smaller dataset.
    """
    raw = _read_file_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CorruptDatasetError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code != _UBYTE_TYPE_CODE or ndim not in (1, 3):
        raise CorruptDatasetError(f"{path}: expected an unsigned-byte IDX file of 1 or 3 "
                                  f"dimensions, header says type 0x{type_code:02x}, {ndim} dims")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise CorruptDatasetError(f"{path}: truncated inside the IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_end])
    expected_bytes = int(np.prod(dims))
    payload_bytes = len(raw) - header_end
    if payload_bytes != expected_bytes:
        raise CorruptDatasetError(
            f"{path}: header declares shape {dims} ({expected_bytes} bytes) but the file holds "
            f"{payload_bytes} bytes; the file is truncated or damaged")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(dims)


def read_checked_split(directory: str, split: str, *, image_hw: Tuple[int, int],
                       class_counts: Sequence[int], fix_hint: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """Reads one split and checks it is the dataset we expect.

    Args:
      directory: folder holding the IDX files (gzipped or raw).
      split: "train" or "test".
      image_hw: expected (height, width) of every image.
      class_counts: expected number of examples of each label 0..K-1; their sum is the split size.
      fix_hint: appended to error messages (how to replace damaged files).

    Returns:
      images uint8 (N, H, W, 1) and labels uint8 (N,), in file order.
    """
    suffix = f"\n{fix_hint}" if fix_hint else ""
    image_stem, label_stem = SPLIT_FILES[split]
    paths = [find_idx_file(directory, stem) for stem in (image_stem, label_stem)]
    if None in paths:
        raise CorruptDatasetError(f"{directory}: missing {image_stem}[.gz] or {label_stem}[.gz]"
                                  + suffix)
    try:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
    except CorruptDatasetError as err:
        raise CorruptDatasetError(f"{err}{suffix}") from None
    num_examples = int(sum(class_counts))
    if images.shape != (num_examples, *image_hw):
        raise CorruptDatasetError(
            f"{paths[0]}: expected {split} images of shape {(num_examples, *image_hw)}, found "
            f"{images.shape}{suffix}")
    if labels.shape != (num_examples,):
        raise CorruptDatasetError(f"{paths[1]}: expected {num_examples} {split} labels, found "
                                  f"{labels.shape[0]}{suffix}")
    found_counts = np.bincount(labels, minlength=len(class_counts))
    if len(found_counts) != len(class_counts) or not np.array_equal(found_counts, class_counts):
        raise CorruptDatasetError(
            f"{paths[1]}: per-class label counts {found_counts.tolist()} differ from the expected "
            f"{list(class_counts)}; these are not the files of this dataset{suffix}")
    return images[..., None], labels
