"""Layers shared by the model zoo: input normalization, flattening, batch norm, a fast 2x2
max-pool and a convolution (`Conv`) whose derivatives are written in forms XLA:CPU runs fast; on
other backends it is XLA's own convolution (`resolve_conv_impl`).

Conventions used by every model in `advjax.models`:

- Inputs are NHWC images in [0, 1] (or any (N, ...) array for the MLP); normalization
  ``(x - mean) / std`` happens inside the model, so attacks work in the [0, 1] pixel box.
- Batch norm is ``nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)``: the
  PyTorch defaults (torch's ``momentum=0.1`` weights the new batch by 0.1, flax's ``momentum=0.9``
  keeps 0.9 of the old average). Its statistics live in the ``batch_stats`` collection.
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

# CIFAR-10 training-set channel statistics (the values used by the TRADES / MART / AWP code bases).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def normalize(x: jnp.ndarray, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
    """``(x - mean) / std`` over the last (channel) axis; a ``None`` mean or std is skipped.

    mean / std are either scalars or one value per channel; a per-channel length that does not match
    the input's channel count raises (e.g. CIFAR statistics on a 1-channel MNIST image).
    """
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        n = np.size(value)
        if n != 1 and n != x.shape[-1]:
            raise ValueError(f"normalization {name} has {n} values but the input has "
                             f"{x.shape[-1]} channels (input shape {x.shape}); set {name}=None "
                             f"or give one value per channel")
    if mean is not None:
        x = x - jnp.asarray(mean, dtype=x.dtype)
    if std is not None:
        x = x / jnp.asarray(std, dtype=x.dtype)
    return x


def flatten(x: jnp.ndarray) -> jnp.ndarray:
    """(N, ...) -> (N, prod(...)) in row-major order, i.e. NHWC order for images.

    A PyTorch model flattens NCHW, so a torch twin of a flax model must permute its activations
    (``x.permute(0, 2, 3, 1).flatten(1)``) or the rows of the first dense kernel.
    """
    return x.reshape((x.shape[0], -1))


def max_pool_2x2(x: jnp.ndarray, padding: str = "VALID") -> jnp.ndarray:
    """Non-overlapping 2x2 max-pool with stride 2 on an NHWC array, without ``reduce_window``.

    Same values as ``nn.max_pool(x, (2, 2), strides=(2, 2), padding=padding)``. The gradient of
    ``nn.max_pool`` is XLA's ``select_and_scatter``, which is very slow on XLA:CPU (about 5-10x
    slower than this function's gradient on a (256, 28, 28, 32) input; ``python -m
    advjax.models.benchmark --only max_pool``). Here the four window entries are read as reshaped
    slices, the maximum is taken elementwise, and the output *selects* the first entry equal to it
    (row-major window order) with ``jnp.where``; the selection mask is a stop-gradient constant, so
    the gradient is one elementwise select. It is an ordinary JAX function: forward mode (jvp) and
    higher derivatives work.

    Ties: the whole gradient goes to the first maximal entry in row-major window order, as in
    ``nn.max_pool``'s ``select_and_scatter`` and in ``torch.nn.MaxPool2d`` (rather than JAX's
    ``jnp.max`` rule of splitting it between the tied entries): gradients agree with both exactly.

    padding:
      "VALID" (default, like ``nn.max_pool`` and ``torch.nn.MaxPool2d(2)``): an odd trailing row or
        column is dropped, H -> H // 2.
      "SAME": an odd H or W is padded at the end with -inf, H -> ceil(H / 2).
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects an NHWC array, got shape {x.shape}")
    n, h, w, c = x.shape
    if padding == "VALID":
        x = x[:, : h - h % 2, : w - w % 2, :]
    elif padding == "SAME":
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    else:
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
    a, b = windows[:, :, 0, :, 0], windows[:, :, 0, :, 1]   # top-left, top-right
    d, e = windows[:, :, 1, :, 0], windows[:, :, 1, :, 1]   # bottom-left, bottom-right
    top = jax.lax.stop_gradient(jnp.maximum(jnp.maximum(a, b), jnp.maximum(d, e)))
    return jnp.where(a == top, a, jnp.where(b == top, b, jnp.where(d == top, d, e)))


def batch_norm(train: bool, axis_name: Optional[str] = None, name: Optional[str] = None):
    """The project's batch norm: running averages with momentum 0.9 (torch's 0.1), epsilon 1e-5.

    train=True normalizes with the batch's statistics and updates ``batch_stats`` (the caller must
    pass ``mutable=["batch_stats"]``); train=False uses the running averages and mutates nothing.
    axis_name: a pmap/shard_map axis to average batch statistics over (cross-device batch norm).
    """
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name, name=name)


def max_pool(x: jnp.ndarray, impl: str = "reshape", padding: str = "VALID") -> jnp.ndarray:
    """2x2 / stride-2 max-pool by ``impl``: "reshape" (`max_pool_2x2`, fast gradient on CPU) or "nn"
    (``nn.max_pool``, XLA's reduce_window / select_and_scatter). Same values and gradients."""
    if impl == "reshape":
        return max_pool_2x2(x, padding=padding)
    if impl == "nn":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding=padding)
    raise ValueError(f"pool impl must be 'reshape' or 'nn', got {impl!r}")


CONV_IMPLS = ("auto", "explicit_grad", "patches_grad", "xla")
# Inputs with at most this many channels count as thin (`resolve_conv_impl`, `_conv_thin`).
THIN_INPUT_CHANNELS = 4
# Batch chunk of the kernel-gradient convolutions (`_conv_kernel_tangent`).
KERNEL_GRAD_CHUNK = 16
# On XLA:CPU, "explicit_grad" runs a VALID convolution with at least this many input channels and an
# input at least this large (height and width) with full padding and a crop (`_conv_forward`).
CROP_MIN_CHANNELS = 20
CROP_MIN_SIZE = 16


def resolve_conv_impl(impl: str, in_features: int, backend: Optional[str] = None) -> str:
    """The implementation `Conv` runs for ``impl`` on ``backend`` (default ``jax.default_backend()``).

    "auto" (the default of `Conv` and of the CNNs) picks the XLA:CPU workarounds only where they
    help, on the CPU backend: "patches_grad" for a thin input (at most `THIN_INPUT_CHANNELS`
    channels, e.g. a first layer on MNIST or CIFAR), "explicit_grad" otherwise; on any other backend
    (GPU, TPU) it is "xla", XLA's own convolution and derivatives. The backend is read when the
    model is traced. Any other name is returned unchanged (after a check).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if (jax.default_backend() if backend is None else backend) != "cpu":
        return "xla"
    return "patches_grad" if in_features <= THIN_INPUT_CHANNELS else "explicit_grad"


class Conv(nn.Module):
    """A stride-1 2-D convolution with ``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and
    initializers, and derivatives chosen for the backend.

    impl (see `resolve_conv_impl`):
      "auto" (default): "xla" on GPU / TPU; on CPU "patches_grad" for a thin input and
        "explicit_grad" otherwise.
      "xla": ``lax.conv_general_dilated`` and its built-in derivatives (what ``nn.Conv`` does).
      "explicit_grad": XLA's forward convolution (a VALID one computed with full padding and
        cropped where XLA:CPU's VALID convolution is slow: `_conv_forward`), with a custom JVP so its
        transpose (the reverse-mode derivatives) takes forms XLA:CPU runs fast:
        - input gradient: an ordinary forward convolution of the output gradient with the spatially
          flipped, in/out-swapped kernel, behind `lax.optimization_barrier`. Inside a
          `lax.fori_loop` (every iterative attack) XLA:CPU otherwise folds that kernel transpose
          into the convolution's dimension labels ("01oi"), a layout its fast convolution path does
          not take: the loop body then runs about 3x slower than the same step outside a loop (the
          Madry CNN: 281 vs 88 ms per PGD step, batch 256; `benchmarks/attack_throughput.py`).
        - kernel gradient: a sum of kernel-gradient convolutions over batch chunks of
          `KERNEL_GRAD_CHUNK` examples (`_conv_kernel_tangent`), 2-4x faster on XLA:CPU than one
          over the whole batch (``python -m advjax.models.benchmark --only kernel_grad``).
      "patches_grad": for thin inputs (e.g. MNIST's 1 channel). The forward convolution is a sum of
        kh*kw*C_in broadcast multiply-adds (`_conv_thin`; XLA:CPU runs a 1-channel convolution ~10x
        slower), and the input derivative is im2col: a matmul with the (kh*kw*C_in, C_out) kernel
        plus kh*kw shifted adds, instead of XLA's convolution with C_in output channels. Costs
        kh*kw*C_in times the input's memory in the backward pass, so keep it for thin inputs. The
        kernel gradient as in "explicit_grad".
    All are ordinary JAX functions with a JVP (``jax.custom_jvp``): forward mode (`jax.jvp`,
    `jax.jacfwd`), reverse mode, `jax.vmap` and higher derivatives work with each, and they give
    the same values and derivatives up to float rounding. The parameter tree is the same for all,
    so variables move freely between them.
    kernel_init / bias_init: ``nn.Conv``'s defaults (LeCun normal, zeros) unless a model follows
    its authors' initialization (e.g. `DAAReleaseCNN`).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    padding: str = "SAME"
    use_bias: bool = True
    impl: str = "auto"
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kh, kw = self.kernel_size
        c_in = x.shape[-1]
        impl = resolve_conv_impl(self.impl, c_in)
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features))
        kernel = kernel.astype(x.dtype)
        if impl == "xla":
            y = _conv_xla(x, kernel, self.padding)
        elif impl == "patches_grad":
            y = _conv_patches_grad(x, kernel, self.padding)
        else:
            y = _conv_explicit_grad(x, kernel, self.padding)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


def _conv_xla(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _crops_valid(x_shape, kernel_shape, padding: str) -> bool:
    """Whether `_conv_forward` computes this VALID convolution with full padding and a crop."""
    c_in = kernel_shape[2]
    return (padding == "VALID" and c_in >= CROP_MIN_CHANNELS
            and min(x_shape[1], x_shape[2]) >= CROP_MIN_SIZE
            and jax.default_backend() == "cpu")


def _conv_forward(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """`_conv_xla`, except that on XLA:CPU a VALID convolution with at least `CROP_MIN_CHANNELS`
    input channels and an input of at least `CROP_MIN_SIZE` pixels a side is computed with full
    padding (k - 1 zeros on each side, the padding of an input gradient) and cropped by k - 1 on
    each side. The crop keeps exactly the outputs whose windows see no padding, so the values are
    the VALID convolution's up to float rounding; but XLA:CPU runs that padded convolution 1.3-5.6x
    faster above the thresholds although it computes more outputs, e.g. 16 vs 91 ms for
    CNN-4C3F(32)'s 26x26x32 -> 32 3x3 layer on 128 images (2 threads), 24 vs 70 ms for
    16x16x64 -> 64, while thin (16-channel) or small (8x8, 12x12) inputs are as fast or faster with
    the plain VALID convolution and keep it (`python benchmarks/conv_padding.py`; `python
    benchmarks/train_throughput.py --profile` times a model's convolutions)."""
    if not _crops_valid(x.shape, kernel.shape, padding):
        return _conv_xla(x, kernel, padding)
    kh, kw = kernel.shape[:2]
    y = _conv_xla(x, kernel, ((kh - 1, kh - 1), (kw - 1, kw - 1)))
    return y[:, kh - 1:y.shape[1] - (kh - 1), kw - 1:y.shape[2] - (kw - 1), :]


def _pad_same(x: jnp.ndarray, kh: int, kw: int, padding: str) -> jnp.ndarray:
    """The input padding of a stride-1 convolution: lax's SAME pads k - 1 in all, the extra one
    (even k) at the end; VALID pads nothing."""
    if padding == "SAME":
        return jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    if padding != "VALID":
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return x


def _shifted_windows(x: jnp.ndarray, kh: int, kw: int, padding: str):
    """The kh*kw shifted views x[:, i:i+Ho, j:j+Wo, :] of the (padded) input, in (i, j) order."""
    x = _pad_same(x, kh, kw, padding)
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]


def _conv_by_patches(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """The same convolution as `_conv_xla`, written as im2col by shifted slices and one matmul."""
    kh, kw, c_in, c_out = kernel.shape
    # Patch feature order (i, j, c) matches the HWIO kernel reshaped to (kh * kw * c_in, c_out).
    patches = jnp.concatenate(_shifted_windows(x, kh, kw, padding), axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


def _conv_thin(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """The same convolution as `_conv_xla`; for a thin input (C_in <= `THIN_INPUT_CHANNELS`) and a
    kernel of at most 3x3 as the sum over taps (i, j) and input channels c of
    x[:, i:i+Ho, j:j+Wo, c] * kernel[i, j, c, :]: kh*kw*C_in broadcast multiply-adds that XLA fuses
    into one loop over the output (with the bias and ReLU that follow). On XLA:CPU, one core, this
    is ~10x faster than the convolution for CNN-4C3F's 3x3 1 -> 16 first layer (0.3 vs 4.2 ms on 128
    images); for a 5x5 kernel (Madry's CNN) XLA's convolution is as fast or faster, and is used."""
    kh, kw, c_in, _ = kernel.shape
    if c_in > THIN_INPUT_CHANNELS or kh * kw > 9:
        return _conv_xla(x, kernel, padding)
    windows = _shifted_windows(x, kh, kw, padding)
    terms = [windows[i * kw + j][..., c:c + 1] * kernel[i, j, c]
             for i in range(kh) for j in range(kw) for c in range(c_in)]
    return functools.reduce(operator.add, terms)


def _conv_kernel_tangent(x: jnp.ndarray, dkernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """conv(x, dkernel), the kernel term of a convolution's JVP, computed batch chunk by chunk.

    Its transpose, the kernel gradient, is then a sum over chunks of kernel-gradient convolutions of
    `KERNEL_GRAD_CHUNK` examples each. XLA:CPU runs one kernel-gradient convolution over a large
    batch (a reduction over batch x height x width) 2-4x slower than the chunked sum (e.g. 33 vs
    10 ms for the 16 -> 16 channel 3x3 layer of CNN-4C3F on 128 images of 26x26, one core).
    """
    n = x.shape[0]
    c = KERNEL_GRAD_CHUNK
    if n <= c:
        return _conv_xla(x, dkernel, padding)
    return jnp.concatenate([_conv_xla(x[i:i + c], dkernel, padding) for i in range(0, n, c)],
                           axis=0)


def _add_tangents(*terms):
    terms = [t for t in terms if t is not None]
    return functools.reduce(operator.add, terms)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_patches_grad(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    return _conv_thin(x, kernel, padding)


def _conv_jvp_rule(forward, input_tangent):
    """The JVP rule of a convolution y = forward(x, kernel, padding), linear in each argument:
    d conv(x, k) = input_tangent(dx, k) + conv(x, dk). `input_tangent` is the implementation's own
    way to write the dx term, chosen so that its transpose (the input gradient) avoids XLA:CPU's
    slow transposed convolution. Symbolic zeros skip the term of an argument not differentiated."""

    def rule(padding, primals, tangents):
        x, kernel = primals
        dx, dkernel = tangents
        y = forward(x, kernel, padding)
        dy_x = None if isinstance(dx, SymbolicZero) else input_tangent(dx, kernel, padding)
        dy_k = (None if isinstance(dkernel, SymbolicZero)
                else _conv_kernel_tangent(x, dkernel, padding))
        if dy_x is None and dy_k is None:
            return y, jnp.zeros_like(y)
        return y, _add_tangents(dy_x, dy_k)

    return rule


# The dx term as patches: its transpose is a matmul and shifted adds.
_conv_patches_grad.defjvp(_conv_jvp_rule(_conv_thin, _conv_by_patches), symbolic_zeros=True)


def _adjoint_padding(kh: int, kw: int, padding: str):
    """Padding of the convolution that maps an output gradient back to the input (stride 1)."""
    if padding == "SAME":
        # lax's SAME pads (k - 1) // 2 before and k // 2 after; the adjoint mirrors it.
        return ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))
    if padding == "VALID":
        return ((kh - 1, kh - 1), (kw - 1, kw - 1))
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


def _conv_input_adjoint(g: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """The input gradient of `_conv_xla` for output gradient g, as a forward HWIO convolution with the
    flipped, in/out-swapped kernel. The barrier keeps XLA from folding the flip/transpose back into
    the convolution's dimension labels (see `Conv`)."""
    kh, kw = kernel.shape[:2]
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return jax.lax.conv_general_dilated(g, flipped, (1, 1), _adjoint_padding(kh, kw, padding),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_input_tangent(dx: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """conv(dx, kernel), the input term of the JVP, written as the transpose of
    `_conv_input_adjoint`: reverse mode transposes it back, so the input gradient is that explicit
    convolution rather than the one XLA's transpose rule would build."""
    out = jax.eval_shape(lambda: _conv_xla(dx, kernel, padding))
    adjoint = lambda g: _conv_input_adjoint(g, kernel, padding)  # noqa: E731
    return jax.linear_transpose(adjoint, out)(dx)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_explicit_grad(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    return _conv_forward(x, kernel, padding)


# The dx term as the transpose of the explicit flipped-kernel convolution (`_conv_input_tangent`).
_conv_explicit_grad.defjvp(_conv_jvp_rule(_conv_forward, _conv_input_tangent),
                           symbolic_zeros=True)
