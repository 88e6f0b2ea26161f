"""Layers shared by the model zoo: input normalization, flattening, batch norm, a fast 2x2
max-pool and a convolution with a fast input gradient for thin (1-channel) inputs.

Conventions used by every model in `advjax.models`:

- Inputs are NHWC images in [0, 1] (or any (N, ...) array for the MLP); normalization
  ``(x - mean) / std`` happens inside the model, so attacks work in the [0, 1] pixel box.
- Batch norm is ``nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)``: the
  PyTorch defaults (torch's ``momentum=0.1`` weights the new batch by 0.1, flax's ``momentum=0.9``
  keeps 0.9 of the old average). Its statistics live in the ``batch_stats`` collection.
"""

from __future__ import annotations

import functools
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


CONV_IMPLS = ("explicit_grad", "xla", "patches_grad")


class Conv(nn.Module):
    """A stride-1 2-D convolution with ``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and
    initializers.

    impl:
      "explicit_grad" (default): the forward convolution of "xla", with a custom VJP whose input
        gradient is an ordinary forward convolution of the output gradient with the spatially
        flipped, in/out-swapped kernel, computed behind `lax.optimization_barrier`. Inside a
        `lax.fori_loop` (every iterative attack) XLA:CPU otherwise folds that kernel transpose into
        the convolution's dimension labels ("01oi"), a layout its fast convolution path does not
        take: the loop body then runs about 3x slower than the same step outside a loop (measured on
        the Madry CNN: 281 vs 88 ms per PGD step, batch 256; `benchmarks/attack_throughput.py`).
        Reverse mode only (no `jax.jvp` through it); use "xla" for forward-mode derivatives.
      "xla": ``lax.conv_general_dilated`` (what ``nn.Conv`` does).
      "patches_grad": the same forward convolution, but derivatives with respect to the *input*
        (JVP, hence also the VJP / input gradient an attack takes) are computed as im2col: a matmul
        with the (kh*kw*C_in, C_out) kernel plus kh*kw shifted adds. Meant for a first layer with
        few input channels (MNIST: 1), whose input gradient XLA:CPU computes slowly as a convolution
        with a single output channel (``python -m advjax.models.benchmark --only first_conv``).
        Costs kh*kw*C_in times the input's memory in the backward pass, so keep it for thin inputs.
    kernel_init / bias_init: ``nn.Conv``'s defaults (LeCun normal, zeros) unless a model follows
    its authors' initialization (e.g. `DAAReleaseCNN`).
    The parameter tree and the values (up to float rounding) are the same for both, so variables
    move freely between them; forward mode and higher derivatives work for both.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    padding: str = "SAME"
    use_bias: bool = True
    impl: str = "explicit_grad"
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kh, kw = self.kernel_size
        c_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features))
        kernel = kernel.astype(x.dtype)
        if self.impl == "xla":
            y = _conv_xla(x, kernel, self.padding)
        elif self.impl == "patches_grad":
            y = _conv_patches_grad(x, kernel, self.padding)
        elif self.impl == "explicit_grad":
            y = _conv_explicit_grad(x, kernel, self.padding)
        else:
            raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {self.impl!r}")
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


def _conv_xla(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_by_patches(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    """The same convolution as `_conv_xla`, written as im2col by shifted slices and one matmul."""
    kh, kw, c_in, c_out = kernel.shape
    if padding == "SAME":
        # lax's SAME for stride 1: total padding k - 1, the extra one (even k) at the end.
        x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    elif padding != "VALID":
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    # Patch feature order (i, j, c) matches the HWIO kernel reshaped to (kh * kw * c_in, c_out).
    patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)],
                              axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_patches_grad(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    return _conv_xla(x, kernel, padding)


def _conv_patches_grad_jvp(padding, primals, tangents):
    # Linear in each argument: d conv(x, k) = conv(dx, k) + conv(x, dk). The dx term is written as
    # patches, so its transpose (the input gradient) is a matmul and shifted adds rather than XLA's
    # transposed convolution. Symbolic zeros skip the term of an argument not differentiated.
    x, kernel = primals
    dx, dkernel = tangents
    y = _conv_xla(x, kernel, padding)
    dy = None
    if not isinstance(dx, SymbolicZero):
        dy = _conv_by_patches(dx, kernel, padding)
    if not isinstance(dkernel, SymbolicZero):
        dk_term = _conv_xla(x, dkernel, padding)
        dy = dk_term if dy is None else dy + dk_term
    return y, (jnp.zeros_like(y) if dy is None else dy)


_conv_patches_grad.defjvp(_conv_patches_grad_jvp, symbolic_zeros=True)


def _adjoint_padding(kh: int, kw: int, padding: str):
    """Padding of the convolution that maps an output gradient back to the input (stride 1)."""
    if padding == "SAME":
        # lax's SAME pads (k - 1) // 2 before and k // 2 after; the adjoint mirrors it.
        return ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))
    if padding == "VALID":
        return ((kh - 1, kh - 1), (kw - 1, kw - 1))
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_explicit_grad(x: jnp.ndarray, kernel: jnp.ndarray, padding: str) -> jnp.ndarray:
    return _conv_xla(x, kernel, padding)


def _conv_explicit_grad_fwd(x, kernel, padding):
    return _conv_xla(x, kernel, padding), (x, kernel)


def _conv_explicit_grad_bwd(padding, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    # The barrier keeps XLA from folding the flip/transpose back into the convolution's dimension
    # labels (see `Conv`), so the input gradient stays a plain HWIO convolution.
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    dx = jax.lax.conv_general_dilated(g, flipped, (1, 1), _adjoint_padding(kh, kw, padding),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _, kernel_vjp = jax.vjp(lambda k: _conv_xla(x, k, padding), kernel)
    return dx, kernel_vjp(g)[0]


_conv_explicit_grad.defvjp(_conv_explicit_grad_fwd, _conv_explicit_grad_bwd)
