"""XLA:CPU's VALID convolution against the same convolution with full padding and a crop (what
`advjax.models.layers._conv_forward` does above `CROP_MIN_CHANNELS` / `CROP_MIN_SIZE`).

For batch 128, 3x3 kernels, inputs HxHxC -> C channels over a grid of H and C: the median
milliseconds of the plain VALID convolution and of the padded-and-cropped one (both jitted, XLA's
own `lax.conv_general_dilated`), their ratio, the largest difference of their outputs, and whether
`_conv_forward` crops at that size.

    python benchmarks/conv_padding.py [--threads N] [--repeats 7]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

_bench.configure_threads(_bench.threads_from_argv())

import argparse  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="CPUs (0: all)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    import jax
    import jax.numpy as jnp

    from advjax.models import layers
    full = ((2, 2), (2, 2))
    plain = jax.jit(lambda a, b: layers._conv_xla(a, b, "VALID"))
    cropped = jax.jit(lambda a, b: layers._conv_xla(a, b, full)[:, 2:-2, 2:-2, :])
    rng = np.random.default_rng(0)
    print(_bench.header(f"3x3 VALID convolution, batch {args.batch}, median of {args.repeats}"))
    print("| input | VALID (ms) | full padding + crop (ms) | speed-up | max difference | "
          "`_conv_forward` crops |")
    print("|---|---:|---:|---:|---:|---|")
    for h in (8, 12, 16, 20, 26):
        for c in (16, 20, 32, 64):
            x = jnp.asarray(rng.standard_normal((args.batch, h, h, c), dtype=np.float32))
            k = jnp.asarray(rng.standard_normal((3, 3, c, c), dtype=np.float32))
            t = _bench.interleaved({"valid": lambda: jax.block_until_ready(plain(x, k)),
                                    "crop": lambda: jax.block_until_ready(cropped(x, k))},
                                   args.repeats)
            a, b = (1000 * float(np.median(t[n])) for n in ("valid", "crop"))
            diff = float(jnp.max(jnp.abs(plain(x, k) - cropped(x, k))))
            crops = layers._crops_valid(x.shape, k.shape, "VALID")
            print(f"| {h}x{h}x{c} -> {c} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {diff:.1e} | "
                  f"{'yes' if crops else 'no'} |", flush=True)
    print(f"load at the end {_bench.load()}")


if __name__ == "__main__":
    main()
