"""A fully connected ReLU network on the flattened input."""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from advjax.models.layers import flatten, normalize


class MLP(nn.Module):
    """Dense -> ReLU, one per entry of ``hidden``, then a dense layer to ``num_classes`` logits.

    Accepts any input shape (N, ...): images are flattened, and 2-D toy data (N, 2) is used as is
    (e.g. ``MLP(hidden=(10, 10, 10), num_classes=2)``, the toy network of the UDR chapter of the
    thesis in /work/shared/papers). Features (``return_features=True``): the last hidden layer after
    its ReLU (the flattened, normalized input when ``hidden`` is empty).

    Parameters: ``fc1 ... fc{len(hidden)}`` for the hidden layers and ``fc{len(hidden) + 1}`` for
    the logits; flax dense kernels are (in, out): the transpose of a ``torch.nn.Linear`` weight.
    mean / std: optional input normalization (scalar or one value per trailing channel).
    """

    hidden: Sequence[int] = (256, 256)
    num_classes: int = 10
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_features: bool = False):
        del train  # no dropout or batch norm
        h = flatten(normalize(x, self.mean, self.std))
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"fc{i + 1}")(h))
        logits = nn.Dense(self.num_classes, name=f"fc{len(self.hidden) + 1}")(h)
        return (logits, h) if return_features else logits
