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

``__call__(inputs, *, train=True)``: batch norm uses batch statistics when ``train`` (ADT always runs its
generators in training mode, so batch norm normalizes over the batch) and updates ``batch_stats``
(pass ``mutable=["batch_stats"]``); ``train=False`` uses the running averages.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp


def _batch_norm(train: bool, axis_name: Optional[str], name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name, name=name)


class ResidualBlock(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN, plus the identity, then ReLU (He et al. 2016)."""
    width: int
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, h: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        out = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, name="conv1")(h)
        out = nn.relu(_batch_norm(train, self.bn_axis_name, "bn1")(out))
        out = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, name="conv2")(out)
        out = _batch_norm(train, self.bn_axis_name, "bn2")(out)
        return nn.relu(h + out)


class ResidualGenerator(nn.Module):
    """Stem (conv-BN-ReLU), ``num_blocks`` residual blocks of ``width`` channels, conv head.

    Maps (N, H, W, C_in) to (N, H, W, out_channels) without changing H, W. The head is zero-initialized
    (see the module docstring) unless ``zero_head=False``.
    """
    out_channels: int
    width: int = 64
    num_blocks: int = 3
    zero_head: bool = True
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, inputs: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        if inputs.ndim != 4:
            raise ValueError(f"ResidualGenerator expects NHWC inputs, got shape {inputs.shape}")
        h = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, name="stem")(inputs)
        h = nn.relu(_batch_norm(train, self.bn_axis_name, "stem_bn")(h))
        for i in range(self.num_blocks):
            h = ResidualBlock(self.width, self.bn_axis_name, name=f"block{i + 1}")(h, train=train)
        init = nn.initializers.zeros if self.zero_head else nn.initializers.lecun_normal()
        return nn.Conv(self.out_channels, (3, 3), padding="SAME", kernel_init=init,
                       name="head")(h)
