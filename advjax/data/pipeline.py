"""The input pipeline: shuffled, sharded, optionally augmented NumPy batches of in-memory arrays.

Randomness is a pure function of (seed, epoch, batch index), never of how many batches were drawn
before, so a resumed run (`start_step`) sees exactly the batches the interrupted one would have:
* the order of epoch e is `default_rng([1, seed, e]).permutation(N)`;
* the augmentation of global batch i of epoch e comes from `default_rng([2, seed, e, i])`.
(The leading 1 / 2 keeps the two streams apart: NumPy's SeedSequence maps [s, e] and [s, e, 0] to
the same stream.)

Sharding (multi-host): with S shards of local batch B, global batch i of an epoch is
order[i*B*S:(i+1)*B*S] and shard k takes its k-th slice of B. The shards of one step are therefore
disjoint and together form the batch a single host with batch B*S would see, augmentation included
(crop offsets and flips are drawn for the whole global batch, each shard keeping its slice).

Images may be uint8 (0..255, converted per batch) or float in [0, 1]; batches are always float32
images in [0, 1] and int32 labels.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import numpy as np

from advjax.data.loading import to_float01

AUGMENTATIONS = ("crop_flip", "crop", "flip")
CROP_PADDING = 4
_PERMUTATION_STREAM = 1
_AUGMENTATION_STREAM = 2

RngLike = Union[np.random.Generator, int, None]


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool,
                num_shards: int = 1) -> int:
    """Steps in one epoch: global batches of batch_size * num_shards examples."""
    global_batch = batch_size * num_shards
    if drop_remainder:
        return num_examples // global_batch
    return -(-num_examples // global_batch)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of `epoch`: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([_PERMUTATION_STREAM, seed, epoch]).permutation(num_examples)


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The augmentation randomness of global batch `step` of `epoch`."""
    return np.random.default_rng([_AUGMENTATION_STREAM, seed, epoch, step])


def _seed_from(rng: RngLike) -> int:
    """A non-negative int seed: `rng` itself, one draw from a Generator, or fresh entropy for None."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63))
    if rng is None:
        return int(np.random.default_rng().integers(2**63))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"seed must be >= 0, got {rng}")
        return int(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _normalize_augment(augment: Optional[str]) -> Optional[str]:
    if augment in (None, "", "none"):
        return None
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS} or None, got {augment!r}")
    return augment


def draw_augmentation(rng: np.random.Generator, num_images: int, *,
                      padding: int = CROP_PADDING) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image crop offsets (num_images, 2) in [0, 2 * padding] and horizontal-flip coins."""
    offsets = rng.integers(0, 2 * padding + 1, size=(num_images, 2))
    flips = rng.random(num_images) < 0.5
    return offsets, flips


def apply_augmentation(images: np.ndarray, augment: Optional[str], offsets: np.ndarray, flips: np.ndarray, *,
                       padding: int = CROP_PADDING) -> np.ndarray:
    """Crops each image of an NHWC batch from its zero-padded copy at `offsets` and/or mirrors it.

    "crop_flip" uses both, "crop" ignores `flips` (SVHN: digits must not be mirrored), "flip"
    ignores `offsets`; None returns the images unchanged. Same shape and dtype out as in.
    """
    augment = _normalize_augment(augment)
    if augment is None:
        return images
    if augment == "flip":
        offsets = np.full_like(offsets, padding)
    if augment == "crop":
        flips = np.zeros_like(flips)
    height, width = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.empty_like(images)
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
        crop = padded[i, dy:dy + height, dx:dx + width]
        out[i] = crop[:, ::-1] if flip else crop
    return out


def augment_images(images: np.ndarray, augment: str, rng: np.random.Generator, *,
                   padding: int = CROP_PADDING) -> np.ndarray:
    """Random `padding`-pixel zero-padded crops and/or horizontal flips of an NHWC batch."""
    offsets, flips = draw_augmentation(rng, len(images), padding=padding)
    return apply_augmentation(images, augment, offsets, flips, padding=padding)


def _shard_bounds(global_size: int, num_shards: int, shard_index: int) -> Tuple[int, int]:
    """[lo, hi) of shard `shard_index` in a global batch of global_size: equal contiguous parts
    (a partial last batch is split as evenly as possible)."""
    base, extra = divmod(global_size, num_shards)
    lo = shard_index * base + min(shard_index, extra)
    return lo, lo + base + (shard_index < extra)


def _validate(images, labels, batch_size, num_shards, shard_index, start_step, epoch) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (4 dims), got shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
    if start_step < 0 or epoch < 0:
        raise ValueError(f"start_step and epoch must be >= 0, got {start_step}, {epoch}")


def _epoch_steps(images, labels, batch_size, *, seed, shuffle, drop_remainder, augment, num_shards,
                 shard_index, start_step, epoch) -> Iterator[Tuple[int, dict]]:
    """(step within the epoch, batch) for steps start_step.. of one epoch; empty shard parts of a
    final partial batch are skipped."""
    num_examples = len(images)
    order = epoch_permutation(num_examples, seed, epoch) if shuffle else np.arange(num_examples)
    global_batch = batch_size * num_shards
    for step in range(start_step, num_batches(num_examples, batch_size, num_shards=num_shards,
                                              drop_remainder=drop_remainder)):
        start = step * global_batch
        global_size = min(global_batch, num_examples - start)
        lo, hi = _shard_bounds(global_size, num_shards, shard_index)
        if lo == hi:
            continue
        indices = order[start + lo:start + hi]
        batch_images = images[indices]
        if augment is not None:
            # Drawn for the whole global batch, so sharding does not change any image.
            offsets, flips = draw_augmentation(batch_rng(seed, epoch, step), global_size)
            batch_images = apply_augmentation(batch_images, augment, offsets[lo:hi], flips[lo:hi])
        yield step, {"image": to_float01(batch_images), "label": labels[indices].astype(np.int32)}


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, rng: RngLike,
            shuffle: bool, drop_remainder: bool, augment: Optional[str] = None,
            num_shards: int = 1, shard_index: int = 0, start_step: int = 0,
            epoch: int = 0) -> Iterator[dict]:
    """One epoch of batches `dict(image=float32 (B, H, W, C) in [0, 1], label=int32 (B,))`.

    Args:
      images, labels: the whole split (`load_numpy`), images uint8 or float in [0, 1].
      batch_size: examples per batch on this shard (process).
      rng: int seed (reproducible and resumable), a numpy Generator (one seed is drawn from it per
        call, so successive calls differ), or None (fresh entropy).
      shuffle: visit the examples in the epoch's permutation instead of in order.
      drop_remainder: skip the final partial batch (training); otherwise it is yielded (eval).
      augment: None, "crop_flip", "crop" or "flip" (see `apply_augmentation`).
      num_shards, shard_index: this process's disjoint part of every global batch.
      start_step: first batch to yield (a batch index within the epoch); earlier batches are not
        computed, and batch i is the same as in an uninterrupted run.
      epoch: which epoch's permutation and augmentation to use.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _validate(images, labels, batch_size, num_shards, shard_index, start_step, epoch)
    steps = _epoch_steps(images, labels, batch_size, seed=_seed_from(rng), shuffle=shuffle,
                         drop_remainder=drop_remainder, augment=_normalize_augment(augment),
                         num_shards=num_shards, shard_index=shard_index, start_step=start_step,
                         epoch=epoch)
    return (batch for _, batch in steps)


def epoch_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int,
                  num_epochs: int, start_step: int = 0, shuffle: bool = True,
                  drop_remainder: bool = True, augment: Optional[str] = None, num_shards: int = 1,
                  shard_index: int = 0) -> Iterator[Tuple[int, dict]]:
    """`(global_step, batch)` over epochs 0..num_epochs-1, starting at global step `start_step`.

    The training-loop form of `batches`: epoch e uses `batches(..., rng=seed, epoch=e)`, and
    global step = e * steps_per_epoch + step within the epoch, with
    steps_per_epoch = num_batches(len(images), batch_size, num_shards=..., drop_remainder=...).
    Resuming at a checkpoint's step yields exactly the batches the uninterrupted run would have.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _validate(images, labels, batch_size, num_shards, shard_index, start_step, 0)
    seed = _seed_from(seed)
    augment = _normalize_augment(augment)
    per_epoch = num_batches(len(images), batch_size, num_shards=num_shards,
                            drop_remainder=drop_remainder)
    if per_epoch == 0:
        return
    for epoch in range(start_step // per_epoch, num_epochs):
        first = max(start_step - epoch * per_epoch, 0)
        for step, batch in _epoch_steps(images, labels, batch_size, seed=seed, shuffle=shuffle,
                                        drop_remainder=drop_remainder, augment=augment,
                                        num_shards=num_shards, shard_index=shard_index,
                                        start_step=first, epoch=epoch):
            yield epoch * per_epoch + step, batch
