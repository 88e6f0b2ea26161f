"""An image-to-image residual generator for ADT's amortized adversarial distributions.

ADT (Dong et al., NeurIPS 2020, Sec. 5 (B)) uses "a popular image-to-image architecture with residual
blocks" (Johnson et al. 2016; Zhu et al. 2017) for its generators. This is a small version that keeps
the spatial size throughout (no down/up-sampling; 8x8 digits and 28x28 Fashion-MNIST both work):

    stem:   conv 3x3 (width) -> BN -> ReLU
    blocks: num_blocks x [conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN, + identity, ReLU]
    head:   conv 3x3 (out_channels), zero-initialized

Uses in ADT (advjax.objectives.adt, advjax.attacks.adt):
  * EXP-AM: inputs x (or [x, grad, grad at the FGSM point]), out_channels = 2 C: (mu, rho) per pixel
    with sigma = softplus(rho). The zero head makes the initial distribution mu = 0, sigma = log 2, the
    same start as ADT_EXP's per-example optimization.
  * IMP-AM: inputs [x, ..., z] with z ~ U(-1, 1) noise channels, out_channels = C, delta = eps tanh(out).
  * IMP-AM's entropy encoder q(z | delta, x): inputs [delta / eps, x], out_channels = 2 z_channels.

``__call__(inputs, z=None, *, train=True)``: batch norm uses batch statistics when ``train`` (ADT
always runs its generators in training mode, so batch norm normalizes over the batch) and updates
``batch_stats`` (pass ``mutable=["batch_stats"]``); ``train=False`` uses the running averages.

The authors' released generator (``models/generator.py`` of dongyp13/Adversarial-Distributional-
Training, ``define_G(..., ngf=256, 'resnet_3blocks')``) is this architecture with
``block_widths=(2 w, 2 w, w)`` for w = 256 (blocks of 256 -> 512 -> 512 -> 256 channels, a 1x1
convolution + batch norm on the shortcut where the width changes), N(0, 0.02) weights
(``weight_init="normal_0.02"``, batch-norm scales N(1, 0.02)), and a bias-free head that is not zero
(``zero_head=False``): `released_generator_fields` gives these fields. For IMP-AM the released
generator also embeds a noise vector z (``z_dim`` = 64) by an MLP (z -> 256 -> H W, ReLU after
both) into one extra input channel (``z_dim > 0``; ``__call__(inputs, z)`` with z of shape
(N, z_dim)). `VectorEncoder` is the released IMP-AM entropy encoder q(z | delta) for such a z.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ("lecun", "normal_0.02")


def _kernel_init(init: str):
    if init == "lecun":
        return nn.initializers.lecun_normal()
    if init == "normal_0.02":
        return nn.initializers.normal(0.02)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _scale_init(init: str):
    if init == "normal_0.02":   # the released code: batch-norm weights N(1, 0.02)
        return lambda key, shape, dtype=jnp.float32: 1.0 + 0.02 * jax.random.normal(key, shape,
                                                                                    dtype)
    return nn.initializers.ones


def _batch_norm(train: bool, axis_name: Optional[str], name: str, init: str = "lecun"):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name, scale_init=_scale_init(init), name=name)


class ResidualBlock(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN, plus the shortcut, then ReLU (He et al. 2016).

    The shortcut is the identity when the input already has ``width`` channels, else a 1x1
    convolution + batch norm (as the released ADT generator's blocks that change width)."""
    width: int
    bn_axis_name: Optional[str] = None
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, h: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        k = _kernel_init(self.weight_init)
        out = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, kernel_init=k,
                      name="conv1")(h)
        out = nn.relu(_batch_norm(train, self.bn_axis_name, "bn1", self.weight_init)(out))
        out = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, kernel_init=k,
                      name="conv2")(out)
        out = _batch_norm(train, self.bn_axis_name, "bn2", self.weight_init)(out)
        if h.shape[-1] != self.width:
            h = nn.Conv(self.width, (1, 1), use_bias=False, kernel_init=k, name="shortcut")(h)
            h = _batch_norm(train, self.bn_axis_name, "shortcut_bn", self.weight_init)(h)
        return nn.relu(h + out)


class ResidualGenerator(nn.Module):
    """Stem (conv-BN-ReLU), residual blocks, conv head.

    Maps (N, H, W, C_in) to (N, H, W, out_channels) without changing H, W. Blocks: ``block_widths``
    if given, else ``num_blocks`` blocks of ``width`` channels (the stem has ``width`` channels).
    The head is zero-initialized (see the module docstring) unless ``zero_head=False``; it has a
    bias unless ``head_bias=False``. ``weight_init``: "lecun" (Flax's default) or "normal_0.02" (the
    released code). ``z_dim > 0``: ``__call__(inputs, z)`` also takes a noise vector z (N, z_dim),
    embedded by dense z_dim -> z_hidden -> H W (ReLU after both) as one extra input channel.
    """
    out_channels: int
    width: int = 64
    num_blocks: int = 3
    zero_head: bool = True
    bn_axis_name: Optional[str] = None
    block_widths: Optional[Sequence[int]] = None
    weight_init: str = "lecun"
    head_bias: bool = True
    z_dim: int = 0
    z_hidden: int = 256

    @nn.compact
    def __call__(self, inputs: jnp.ndarray, z: Optional[jnp.ndarray] = None, *,
                 train: bool = True) -> jnp.ndarray:
        if inputs.ndim != 4:
            raise ValueError(f"ResidualGenerator expects NHWC inputs, got shape {inputs.shape}")
        if self.z_dim > 0:
            if z is None or z.shape != (inputs.shape[0], self.z_dim):
                raise ValueError(f"ResidualGenerator(z_dim={self.z_dim}) needs z of shape "
                                 f"({inputs.shape[0]}, {self.z_dim}), got "
                                 f"{None if z is None else z.shape}")
            n, h, w, _ = inputs.shape
            e = nn.relu(nn.Dense(self.z_hidden, name="z_fc1")(z))
            e = nn.relu(nn.Dense(h * w, name="z_fc2")(e))
            inputs = jnp.concatenate([inputs, e.reshape(n, h, w, 1).astype(inputs.dtype)], -1)
        elif z is not None:
            raise ValueError("z given to a ResidualGenerator with z_dim = 0; put per-pixel noise "
                             "in the input channels instead")
        k = _kernel_init(self.weight_init)
        h = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, kernel_init=k,
                    name="stem")(inputs)
        h = nn.relu(_batch_norm(train, self.bn_axis_name, "stem_bn", self.weight_init)(h))
        widths = self.block_widths if self.block_widths is not None else \
            (self.width,) * self.num_blocks
        for i, width in enumerate(widths):
            h = ResidualBlock(width, self.bn_axis_name, self.weight_init,
                              name=f"block{i + 1}")(h, train=train)
        init = nn.initializers.zeros if self.zero_head else k
        return nn.Conv(self.out_channels, (3, 3), padding="SAME", kernel_init=init,
                       use_bias=self.head_bias, name="head")(h)


def released_generator_fields(width: int = 256) -> Dict[str, Any]:
    """ResidualGenerator fields of the released ADT generator (module docstring) for base width w:
    stem w, blocks (2 w, 2 w, w), N(0, 0.02) init, a bias-free head that is not zero-initialized."""
    return dict(width=width, block_widths=(2 * width, 2 * width, width), weight_init="normal_0.02",
                zero_head=False, head_bias=False)


class VectorEncoder(nn.Module):
    """The released IMP-AM entropy encoder q(z | delta) for a noise vector z: conv 5x5 (w) -> conv
    4x4 stride 2 (2 w) -> conv 4x4 (4 w) -> conv 4x4 stride 2 (8 w), each bias-free with batch
    norm and LeakyReLU (slope 0.01), then global average pooling and a dense layer to
    ``out_features`` (mean and pre-softplus scale of z). Deviation: "SAME" padding and the global
    pool, so that any input size works (the release's "VALID" convolutions and 4x4 average pool fit
    its 32x32 inputs only)."""
    out_features: int
    width: int = 32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, inputs: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        h = inputs
        for i, (mult, kernel, stride) in enumerate(((1, 5, 1), (2, 4, 2), (4, 4, 1), (8, 4, 2))):
            h = nn.Conv(self.width * mult, (kernel, kernel), strides=(stride, stride),
                        padding="SAME", use_bias=False, name=f"conv{i + 1}")(h)
            h = nn.leaky_relu(_batch_norm(train, self.bn_axis_name, f"bn{i + 1}")(h), 0.01)
        return nn.Dense(self.out_features, name="fc")(jnp.mean(h, axis=(1, 2)))
