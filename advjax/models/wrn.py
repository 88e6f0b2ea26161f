"""Wide residual networks (Zagoruyko & Komodakis, "Wide residual networks", BMVC 2016)."""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from advjax.models.layers import CIFAR10_MEAN, CIFAR10_STD, batch_norm, normalize
from advjax.models.resnet import _conv


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut.

    When the shape changes, the shortcut is a 1x1 conv of the pre-activated input (the layout of the
    authors' code and of the Madry / TRADES / MART / AWP PyTorch WRN used for the WRN-28-10 and
    WRN-34-10 results in the papers).
    """

    features: int
    stride: int = 1
    dropout_rate: float = 0.0
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        pre = nn.relu(batch_norm(train, self.bn_axis_name)(x))
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.stride, name="shortcut_conv")(pre)
        else:
            shortcut = x
        h = _conv(self.features, 3, self.stride)(pre)
        h = nn.relu(batch_norm(train, self.bn_axis_name)(h))
        if self.dropout_rate > 0:
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = _conv(self.features, 3, 1)(h)
        return h + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: conv 3x3 16; 3 stages of n = (depth - 4) / 6 wide blocks with
    16k, 32k, 64k channels (k = widen_factor; strides 1, 2, 2); BN -> ReLU -> global average pool
    (= features, 64k) -> dense num_classes.

    WRN-28-10 (ADT, 36.5M parameters) and WRN-34-10 (ADR / ASCL, 46.2M) are the paper
    configurations; WRN-10-1 or WRN-16-1 are cheap stand-ins for tests.
    """

    depth: int = 28
    widen_factor: int = 10
    num_classes: int = 10
    dropout_rate: float = 0.0
    mean: Optional[Sequence[float]] = CIFAR10_MEAN
    std: Optional[Sequence[float]] = CIFAR10_STD
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        if (self.depth - 4) % 6 != 0 or self.depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, "
                             f"...), got {self.depth}")
        n = (self.depth - 4) // 6
        widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
        h = normalize(x, self.mean, self.std)
        h = _conv(16, 3, 1, name="stem_conv")(h)
        for s, width in enumerate(widths):
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                h = WideBlock(width, stride, self.dropout_rate, self.bn_axis_name,
                              name=f"stage{s + 1}_block{b + 1}")(h, train)
        h = nn.relu(batch_norm(train, self.bn_axis_name, name="final_bn")(h))
        features = jnp.mean(h, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(features)
        return (logits, features) if return_features else logits
