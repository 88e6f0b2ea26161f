"""Reads a tfds split that was prepared in TFRecord format, without TensorFlow.

`tfds build NAME` writes TFRecord files by default, and tfds' random-access data sources only read
array_record, so a dataset prepared on another machine and copied here would otherwise need
TensorFlow. A TFRecord file is a sequence of records, each framed as
`uint64 length | uint32 masked CRC of length | data | uint32 masked CRC of data` (little endian);
the data are serialized `tf.train.Example`s, which tfds' own NumPy parser decodes. The CRCs are not
checked (that would need CRC-32C); truncation is detected from the framing.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator

from advjax.data.errors import CorruptDatasetError

_LENGTH_AND_CRC = 12
_DATA_CRC = 4


def iter_records(path: str) -> Iterator[bytes]:
    """Yields the raw records of one TFRecord file in order."""
    with open(path, "rb") as f:
        while True:
            header = f.read(_LENGTH_AND_CRC)
            if not header:
                return
            if len(header) < _LENGTH_AND_CRC:
                raise CorruptDatasetError(f"{path}: truncated TFRecord file (partial record header)")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(_DATA_CRC)) < _DATA_CRC:
                raise CorruptDatasetError(f"{path}: truncated TFRecord file (partial record)")
            yield data


class TfRecordSplit:
    """One split of a TFRecord-format tfds dataset, iterated in file order as decoded examples.

    Supports `len()` and iteration (not random access), which is all `load_numpy` needs.
    """

    def __init__(self, builder, split: str):
        split_info = builder.info.splits[split]
        self._paths = [os.fspath(p) for p in split_info.filepaths]
        self._num_examples = split_info.num_examples
        self._features = builder.info.features
        missing = [p for p in self._paths if not os.path.isfile(p)]
        if missing:
            raise CorruptDatasetError(f"{builder.data_dir}: dataset_info.json lists files that are "
                                      f"missing: {missing[:3]}")

    def __len__(self) -> int:
        return self._num_examples

    def __iter__(self) -> Iterator[dict]:
        for path in self._paths:
            for record in iter_records(path):
                yield self._features.deserialize_example_np(record)
