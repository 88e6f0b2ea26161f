"""Plain convolutional networks from the papers: C&W / ADR CNN-4C3F, Madry's MNIST CNN, the DAA
Fashion-MNIST CNN and the DRA 13-layer CIFAR-10 CNN.

All take NHWC inputs in [0, 1] and normalize inside the model. ``return_features=True`` returns
``(logits, features)`` with features = the output of the last convolutional block (after its
pooling), flattened in NHWC order: the intermediate layer that ADR / ASCL regularize.

Weight layout for PyTorch twins (used by the peer tests): flax conv kernels are HWIO (torch:
OIHW, ``w.transpose(3, 2, 0, 1)``), dense kernels are (in, out) (torch: (out, in), ``w.T``), and
flattening is NHWC, so the first dense layer after the convolutions sees features in (h, w, c)
order; a torch model must either flatten ``x.permute(0, 2, 3, 1)`` or permute that dense layer's
input rows.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from advjax.models.layers import (CIFAR10_MEAN, CIFAR10_STD, Conv, batch_norm, flatten, max_pool,
                                  normalize)


class CNN4C3F(nn.Module):
    """CNN-4C3F: Carlini & Wagner's MNIST / CIFAR-10 network ("Towards evaluating the robustness of
    neural networks", S&P 2017, Table 1), as used by ADR (thesis Ch. 3, Supp. Sec. 2) and CCE
    (thesis Ch. 4, Table 8).

    For each entry w of ``widths``: ``convs_per_block`` x (conv 3x3 w -> ReLU), then 2x2 max-pool.
    Then flatten (= features), and for each entry f of ``fc_widths`` dense f -> ReLU, with dropout
    after the first one, then a dense layer to the logits.

    Configurations:
      - ADR "CNN-4C3F(32)" (MNIST), as its supplement writes it: widths=(32, 32),
        fc_widths=(200, 200) (the default).
      - C&W's original MNIST model and CCE Table 8 MNIST: widths=(32, 64), fc_widths=(200, 200).
      - ADR "CNN-4C3F(64)" (CIFAR-10): widths=(64, 64), fc_widths=(256, 256), mean/std=CIFAR-10.
      - C&W CIFAR-10 and CCE Table 8 CIFAR-10: widths=(64, 128), fc_widths=(256, 256).
      - CCE Table 8 CIFAR-100: widths=(64, 128), convs_per_block=3, fc_widths=(256, 256, 256).
    Convolutions are 'VALID' like C&W's Keras code (28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 on MNIST);
    padding='SAME' keeps sizes for small inputs.

    Parameters: conv1 ... conv{2 * len(widths)}, fc1 ... fc{len(fc_widths) + 1}.
    pool_impl / first_conv_impl / conv_impl: implementation switches with identical parameters and
    values (see ``layers.max_pool`` and ``layers.Conv``); "auto" takes the XLA:CPU workarounds on
    CPU only (``layers.resolve_conv_impl``).
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 32)
    convs_per_block: int = 2
    fc_widths: Sequence[int] = (200, 200)
    dropout_rate: float = 0.5
    padding: str = "VALID"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    pool_impl: str = "reshape"
    first_conv_impl: str = "auto"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        h = normalize(x, self.mean, self.std)
        n_conv = 0
        for width in self.widths:
            for _ in range(self.convs_per_block):
                impl = self.first_conv_impl if n_conv == 0 else self.conv_impl
                n_conv += 1
                h = nn.relu(Conv(width, (3, 3), padding=self.padding, impl=impl,
                                 name=f"conv{n_conv}")(h))
            h = max_pool(h, self.pool_impl)
        features = flatten(h)
        h = features
        for i, width in enumerate(self.fc_widths):
            h = nn.relu(nn.Dense(width, name=f"fc{i + 1}")(h))
            if i == 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, name=f"fc{len(self.fc_widths) + 1}")(h)
        return (logits, features) if return_features else logits


class MadryCNN(nn.Module):
    """The MNIST network of Madry et al., "Towards deep learning models resistant to adversarial
    attacks" (ICLR 2018; MadryLab's mnist_challenge ``model.py``), also DAA's MNIST target model.

    conv 5x5 32 (SAME) -> ReLU -> max-pool 2x2 -> conv 5x5 64 (SAME) -> ReLU -> max-pool 2x2 ->
    flatten (= features, 7*7*64 = 3136 on MNIST) -> dense 1024 -> ReLU -> dense num_classes.
    3,274,634 parameters on 28x28x1 inputs with 10 classes. Pooling is 'SAME' like the TensorFlow
    original (identical to 'VALID' for even sizes, so 28 -> 14 -> 7).

    Parameters: conv1, conv2, fc1, fc2 (kernels HWIO / (in, out); fc1's input rows are in NHWC
    (h, w, c) order, which is also the TensorFlow original's order, so MadryLab's checkpoint loads
    without permutation while a torch twin must permute).

    pool_impl: "reshape" (default, ``layers.max_pool_2x2``) or "nn" (``nn.max_pool``); same values
      and gradients.
    first_conv_impl / conv_impl: "auto" (default: on CPU "patches_grad" for the 1-channel input and
      "explicit_grad" for the second convolution, elsewhere "xla"), or any `layers.Conv` impl; same
      parameters, values and gradients up to float rounding. See ``layers.resolve_conv_impl``.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    fc_width: int = 1024
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    pool_impl: str = "reshape"
    first_conv_impl: str = "auto"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        del train  # no dropout or batch norm
        h = normalize(x, self.mean, self.std)
        for i, width in enumerate(self.widths):
            impl = self.first_conv_impl if i == 0 else self.conv_impl
            h = nn.relu(Conv(width, (5, 5), padding="SAME", impl=impl, name=f"conv{i + 1}")(h))
            h = max_pool(h, self.pool_impl, padding="SAME")
        features = flatten(h)
        h = nn.relu(nn.Dense(self.fc_width, name="fc1")(features))
        logits = nn.Dense(self.num_classes, name="fc2")(h)
        return (logits, features) if return_features else logits


class ROCNN(nn.Module):
    """The MNIST "baseline net" of Shaham, Yamada, Negahban, "Understanding adversarial training:
    increasing local stability of supervised models through robust optimization" (Neurocomputing
    2018, Sec. 5.1; the released Lua code, runopti/RobustTraining ``mnist/train-mnist-robust-*.lua``):

    conv 5x5 32 (VALID) -> ReLU -> max-pool 3x3 stride 3 -> conv 5x5 64 (VALID) -> ReLU -> max-pool
    2x2 -> flatten (= features) -> dense 200 -> ReLU -> dense num_classes. No dropout (commented out
    in the release). On 28x28 inputs: 24 -> 8 -> 4 -> 2, 2*2*64 = 256 features (the release pads
    MNIST to 32x32: 28 -> 9 -> 5 -> 2, the same 256); 105,506 parameters with 10 classes.
    The release normalizes the inputs by the training set's mean and std (and its "-BN" scripts by a
    non-affine batch norm on the input); here ``mean`` / ``std`` normalize inside the model.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    fc_width: int = 200
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    first_conv_impl: str = "patches_grad"
    conv_impl: str = "explicit_grad"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        del train  # no dropout or batch norm
        h = normalize(x, self.mean, self.std)
        h = nn.relu(Conv(self.widths[0], (5, 5), padding="VALID", impl=self.first_conv_impl,
                         name="conv1")(h))
        n, hh, ww, c = h.shape   # 3x3 / stride-3 pool by reshape (an odd remainder is dropped)
        h = h[:, : hh - hh % 3, : ww - ww % 3, :]
        h = jnp.max(h.reshape(n, hh // 3, 3, ww // 3, 3, c), axis=(2, 4))
        h = nn.relu(Conv(self.widths[1], (5, 5), padding="VALID", impl=self.conv_impl,
                         name="conv2")(h))
        h = max_pool(h, "reshape")
        features = flatten(h)
        h = nn.relu(nn.Dense(self.fc_width, name="fc1")(features))
        logits = nn.Dense(self.num_classes, name="fc2")(h)
        return (logits, features) if return_features else logits


class DAACNN(nn.Module):
    """A small stand-in for DAA's Fashion-MNIST target (Zheng, Chen & Ren, "Distributionally
    adversarial attack", AAAI 2019, Sec. 5: "four convolutional layers and a fully connected layer
    with batch normalization"), written before the authors' release was read and used by the first
    DAA study. The authors' model is `DAAReleaseCNN` ("daa_release_cnn"); this one is

    conv 3x3 (SAME, no bias) -> batch norm -> ReLU for each of ``widths`` = (32, 32, 64, 64), with a
    2x2 max-pool after the 2nd and the 4th (28 -> 14 -> 7), flatten (= features, 7*7*64 = 3136),
    dense num_classes.

    Parameters: conv{i}, bn{i} (batch_stats: bn{i}/mean, bn{i}/var), fc.
    bn_axis_name: pmap axis for cross-device batch statistics (None: per-device).
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 32, 64, 64)
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    bn_axis_name: Optional[str] = None
    pool_impl: str = "reshape"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        h = normalize(x, self.mean, self.std)
        for i, width in enumerate(self.widths):
            h = Conv(width, (3, 3), padding="SAME", use_bias=False, name=f"conv{i + 1}")(h)
            h = nn.relu(batch_norm(train, self.bn_axis_name, name=f"bn{i + 1}")(h))
            if i % 2 == 1:
                h = max_pool(h, self.pool_impl, padding="SAME")
        features = flatten(h)
        logits = nn.Dense(self.num_classes, name="fc")(features)
        return (logits, features) if return_features else logits


class _InferenceBatchNorm(nn.Module):
    """``tf.layers.batch_normalization(h)`` as DAA's release calls it: without ``training=True``, so
    it always normalizes with its moving statistics, which stay at their initial mean 0 / variance 1
    (their update ops only run in training mode). What is left is a trainable per-feature affine map
    gamma * h / sqrt(1 + 1e-3) + beta (TensorFlow's epsilon 1e-3), gamma = 1 and beta = 0 at init."""

    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        gamma = self.param("scale", nn.initializers.ones_init(), (h.shape[-1],))
        beta = self.param("bias", nn.initializers.zeros_init(), (h.shape[-1],))
        return gamma * h * (1.0 / jnp.sqrt(1.0 + self.epsilon)) + beta


class DAAReleaseCNN(nn.Module):
    """DAA's Fashion-MNIST target model as the authors released it (Zheng, Chen & Ren, AAAI 2019,
    Sec. 5 / Table 3; ``tianzheng4/Distributionally-Adversarial-Attack``,
    ``fashion-mnist-master/model.py``, the ``a_very_robust_model`` checkpoints):

    conv 5x5 32 -> ReLU -> conv 5x5 32 -> ReLU -> max-pool 2x2 -> conv 3x3 64 -> ReLU -> conv 3x3 64
    -> ReLU -> max-pool 2x2 -> flatten (= features, 7*7*64 = 3136) -> dense 1024 -> ReLU -> batch norm
    in inference mode (`_InferenceBatchNorm`: a trainable affine map, see there) -> dense 10.
    All convolutions and pools 'SAME' (28 -> 14 -> 7); 3,306,474 parameters on 28x28x1 inputs with 10
    classes (``param_count``).

    initializer="release" (default): every kernel truncated normal with stddev 0.1 and every bias
    0.1, as the release's ``_weight_variable`` / ``_bias_variable``; "flax": Flax's LeCun normal / zeros.
    The training of the release (PGD-AT at eps 0.2, 30 steps of 0.01 from a random start, Adam 1e-4,
    batch 50, 100k iterations) is ``configs/daa_release_fmnist.py``.

    Parameters: conv1 ... conv4, fc1, bn (scale, bias), fc2; no ``batch_stats``.
    """

    num_classes: int = 10
    initializer: str = "release"
    pool_impl: str = "reshape"
    first_conv_impl: str = "auto"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        del train  # no dropout; the batch norm never uses batch statistics
        if self.initializer == "release":
            inits = dict(kernel_init=nn.initializers.truncated_normal(0.1),
                         bias_init=nn.initializers.constant(0.1))
        elif self.initializer == "flax":
            inits = {}
        else:
            raise ValueError(f"initializer must be 'release' or 'flax', got {self.initializer!r}")
        h = x
        for i, (width, size) in enumerate(((32, 5), (32, 5), (64, 3), (64, 3))):
            impl = self.first_conv_impl if i == 0 else self.conv_impl
            h = nn.relu(Conv(width, (size, size), padding="SAME", impl=impl, name=f"conv{i + 1}",
                             **inits)(h))
            if i % 2 == 1:
                h = max_pool(h, self.pool_impl, padding="SAME")
        features = flatten(h)
        h = nn.relu(nn.Dense(1024, name="fc1", **inits)(features))
        h = _InferenceBatchNorm(name="bn")(h)
        logits = nn.Dense(self.num_classes, name="fc2", **inits)(h)
        return (logits, features) if return_features else logits


# VGG-13 (configuration B of Simonyan & Zisserman 2015): 10 convolutions in 5 stages.
VGG13_STAGES = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))


class DRACNN(nn.Module):
    """The 13-layer CIFAR-10 CNN of DRA (Si, Zhang & Zhang, "DRA: Distributionally robust
    adversarial training", Sec. 4): "10 convolutional layers and 3 fully connected layers
    intercepted with max pooling layers". Its Figure 1 with the details is not in the text we have,
    and the layer counts rule out the 9-conv + 1-dense "conv-large" of Laine & Aila; they are
    exactly those of VGG-13 (Simonyan & Zisserman, ICLR 2015, configuration B), which is used here
    in its CIFAR form with batch norm (the widths and the dense sizes are our choice):

    for each stage of ``stages`` = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)):
    (conv 3x3 SAME, no bias -> batch norm -> ReLU) per width, then 2x2 max-pool (32 -> 1), flatten
    (= features, 512 on 32x32 inputs), dense 512 -> ReLU -> dropout -> dense 512 -> ReLU -> dropout
    -> dense num_classes (``fc_widths`` = (512, 512)). About 9.9M parameters. Inputs are normalized
    with the CIFAR-10 mean / std by default.

    Parameters: conv1 ... conv10, bn1 ... bn10, fc1, fc2, fc3.
    """

    num_classes: int = 10
    stages: Sequence[Sequence[int]] = VGG13_STAGES
    fc_widths: Sequence[int] = (512, 512)
    dropout_rate: float = 0.5
    mean: Optional[Sequence[float]] = CIFAR10_MEAN
    std: Optional[Sequence[float]] = CIFAR10_STD
    bn_axis_name: Optional[str] = None
    pool_impl: str = "reshape"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        h = normalize(x, self.mean, self.std)
        n_conv = 0
        for stage in self.stages:
            for width in stage:
                n_conv += 1
                h = Conv(width, (3, 3), padding="SAME", use_bias=False, name=f"conv{n_conv}")(h)
                h = nn.relu(batch_norm(train, self.bn_axis_name, name=f"bn{n_conv}")(h))
            h = max_pool(h, self.pool_impl, padding="SAME")
        features = flatten(h)
        h = features
        for i, width in enumerate(self.fc_widths):
            h = nn.relu(nn.Dense(width, name=f"fc{i + 1}")(h))
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, name=f"fc{len(self.fc_widths) + 1}")(h)
        return (logits, features) if return_features else logits
