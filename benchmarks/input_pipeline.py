"""Input-pipeline benchmark: import times, load times and images/s of `advjax.data.batches`.

    python benchmarks/input_pipeline.py [--data-dir DIR] [--batch-size 128] [--epochs 1]

Prints one line per measurement. Fashion-MNIST is the real dataset (prepared on first use, which is
also timed); "cifar-like" is random uint8 50000x32x32x3 in memory, so it needs no CIFAR download.
Single process, no worker threads: the figures are what one CPU core delivers.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np


def import_seconds(module: str, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of `import module` in a fresh interpreter."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                  text=True).stdout.split()[-1]) for _ in range(repeats)]
    return min(times)


def images_per_second(images, labels, batch_size: int, epochs: int, **kwargs) -> float:
    """Throughput of iterating `epochs` epochs of `batches` (every batch fully materialized)."""
    from advjax import data
    count = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        for batch in data.batches(images, labels, batch_size, rng=0, shuffle=True,
                                  drop_remainder=True, epoch=epoch, **kwargs):
            count += len(batch["label"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="tfds data_dir (default: ADVJAX_DATA_DIR "
                        "or ~/tensorflow_datasets)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    # `advjax` itself imports jax (via advjax.attacks); the data layer adds little on top of it.
    for module in ("numpy", "tensorflow_datasets", "advjax", "advjax.data"):
        print(f"import {module:<24s} {import_seconds(module):6.2f} s (fresh interpreter, best of 3)")

    from advjax import data
    for attempt in ("first", "second"):
        start = time.perf_counter()
        x, y = data.load_numpy("fashion_mnist", "train", data_dir=args.data_dir, dtype=np.uint8)
        print(f"load_numpy fashion_mnist train ({attempt} call in this process) "
              f"{time.perf_counter() - start:6.2f} s  {x.shape} {x.dtype}")

    bs, epochs = args.batch_size, args.epochs
    print(f"fashion_mnist uint8 batch {bs}, no augmentation:   "
          f"{images_per_second(x, y, bs, epochs):>12,.0f} images/s")
    x_float = data.to_float01(x)
    print(f"fashion_mnist float32 batch {bs}, no augmentation: "
          f"{images_per_second(x_float, y, bs, epochs):>12,.0f} images/s")
    print(f"fashion_mnist uint8 batch {bs}, crop_flip:         "
          f"{images_per_second(x, y, bs, epochs, augment='crop_flip'):>12,.0f} images/s")

    rng = np.random.default_rng(0)
    cifar_x = rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
    cifar_y = rng.integers(0, 10, 50000)
    for augment in (None, "crop", "crop_flip"):
        rate = images_per_second(cifar_x, cifar_y, bs, epochs, augment=augment)
        print(f"cifar-like uint8 batch {bs}, augment={str(augment):<9s}    {rate:>12,.0f} images/s")


if __name__ == "__main__":
    main()
