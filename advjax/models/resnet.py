"""Residual networks for 32x32 inputs: the CIFAR ResNet-20 of He et al. and PreAct ResNet-18.

Both return the global-average-pooled penultimate representation as features. Convolutions have no
bias (batch norm follows or precedes them), kernels are HWIO.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from advjax.models.layers import CIFAR10_MEAN, CIFAR10_STD, batch_norm, normalize


def _conv(features: int, kernel: int = 3, stride: int = 1, name: Optional[str] = None):
    # torch-style explicit padding (k // 2 each side): with stride 2 this differs from 'SAME',
    # which would pad only at the end, and keeps the networks weight-compatible with torch.
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, name=name)


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al., CVPR 2016): conv-BN-ReLU-conv-BN, + shortcut, ReLU.

    shortcut (used when the shape changes): "A" = parameter-free, subsample by the stride and
    zero-pad the new channels (He et al.'s CIFAR option A); "B" = 1x1 conv + batch norm.
    """

    features: int
    stride: int = 1
    shortcut: str = "A"
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        h = _conv(self.features, 3, self.stride)(x)
        h = nn.relu(batch_norm(train, self.bn_axis_name)(h))
        h = _conv(self.features, 3, 1)(h)
        h = batch_norm(train, self.bn_axis_name)(h)
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                x = x[:, :: self.stride, :: self.stride, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            elif self.shortcut == "B":
                x = _conv(self.features, 1, self.stride, name="shortcut_conv")(x)
                x = batch_norm(train, self.bn_axis_name, name="shortcut_bn")(x)
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        return nn.relu(h + x)


class ResNet20(nn.Module):
    """The CIFAR-10 ResNet of He et al., "Deep residual learning for image recognition" (CVPR 2016,
    Sec. 4.2), with n = ``blocks_per_stage`` (n = 3: ResNet-20, 0.27M parameters; 5: ResNet-32;
    9: ResNet-56). Used by ADR / ASCL (thesis Ch. 3) and CCE (thesis Ch. 4), following Pang et al.
    (ICML 2019).

    conv 3x3 16 -> BN -> ReLU; 3 stages of n basic blocks with 16, 32, 64 channels (strides 1,
    2, 2); global average pool (= features, 64) -> dense num_classes. Option-A shortcuts by
    default (the paper's CIFAR choice); shortcut="B" uses 1x1 conv + BN projections (269,722 vs
    272,474 parameters for ResNet-20).
    """

    num_classes: int = 10
    blocks_per_stage: int = 3
    widths: Sequence[int] = (16, 32, 64)
    shortcut: str = "A"
    mean: Optional[Sequence[float]] = CIFAR10_MEAN
    std: Optional[Sequence[float]] = CIFAR10_STD
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        h = normalize(x, self.mean, self.std)
        h = _conv(self.widths[0], 3, 1, name="stem_conv")(h)
        h = nn.relu(batch_norm(train, self.bn_axis_name, name="stem_bn")(h))
        for s, width in enumerate(self.widths):
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                h = BasicBlock(width, stride, self.shortcut, self.bn_axis_name,
                               name=f"stage{s + 1}_block{b + 1}")(h, train)
        features = jnp.mean(h, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(features)
        return (logits, features) if return_features else logits


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., "Identity mappings in deep residual networks", ECCV
    2016): BN-ReLU-conv-BN-ReLU-conv + shortcut; a 1x1 conv shortcut on the pre-activated input
    when the shape changes."""

    features: int
    stride: int = 1
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
        h = _conv(self.features, 3, 1)(h)
        return h + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 for 32x32 inputs (He et al., ECCV 2016), as in the robust-overfitting /
    fast-AT code bases (Rice et al. 2020; Wong et al. 2020) and the thesis' ResNet18 experiments.

    conv 3x3 64; 4 stages of 2 pre-activation blocks with 64, 128, 256, 512 channels (strides 1, 2,
    2, 2); BN -> ReLU -> global average pool (= features, 512) -> dense num_classes.
    About 11.17M parameters with 10 classes.
    """

    num_classes: int = 10
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    mean: Optional[Sequence[float]] = CIFAR10_MEAN
    std: Optional[Sequence[float]] = CIFAR10_STD
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        h = normalize(x, self.mean, self.std)
        h = _conv(self.widths[0], 3, 1, name="stem_conv")(h)
        for s, (width, n_blocks) in enumerate(zip(self.widths, self.blocks_per_stage)):
            for b in range(n_blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                h = PreActBlock(width, stride, self.bn_axis_name,
                                name=f"stage{s + 1}_block{b + 1}")(h, train)
        h = nn.relu(batch_norm(train, self.bn_axis_name, name="final_bn")(h))
        features = jnp.mean(h, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(features)
        return (logits, features) if return_features else logits
