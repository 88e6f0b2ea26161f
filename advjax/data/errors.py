"""The two ways loading a dataset can fail, each with a message that says what to do.

Both subclass the builtin a caller would expect (`FileNotFoundError`, `ValueError`), so generic
handlers still work, and `DataError` catches either.
"""


class DataError(Exception):
    """Base class of every error raised by `advjax.data` about the data itself."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset is neither prepared in the tfds data_dir nor available from a local source.

    The message lists where we looked and how to get the data onto this (offline) machine.
    """


class CorruptDatasetError(DataError, ValueError):
    """Source files exist but are not the dataset they claim to be (truncated, wrong shape, wrong
    label counts). Raised before anything is written to the tfds data_dir."""
