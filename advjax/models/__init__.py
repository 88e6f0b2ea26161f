"""The Flax model zoo: the networks of the papers advjax reproduces.

Every model is a ``flax.linen.Module`` with a ``num_classes`` field and

    model.apply(variables, x, *, train=False, return_features=False)

- ``x``: NHWC images in [0, 1] (the MLP takes any (N, ...) array and flattens it). Input
  normalization (``mean`` / ``std`` fields) happens inside the model: none by default for the
  MNIST-style models (MLP, CNN4C3F, MadryCNN, DAACNN), the CIFAR-10 statistics for DRACNN and the
  ResNets.
- returns logits (N, num_classes), or ``(logits, features)`` with ``return_features=True``; features
  are the layer ADR / ASCL regularize: the flattened output of the last convolutional block for the
  CNNs, the pooled penultimate representation for the ResNets, the last hidden layer for the MLP.
- ``train=False`` (the default, and what attacks use): batch norm uses its running averages and
  nothing is mutated; dropout is off. ``train=True``: batch statistics, and the ``batch_stats``
  collection is updated (pass ``mutable=["batch_stats"]``); dropout draws from the ``"dropout"``
  rng.
  Batch norm is ``nn.BatchNorm(momentum=0.9, epsilon=1e-5)`` (PyTorch's defaults); models with it
  have a ``bn_axis_name`` field for cross-device statistics under pmap.

Registry: ``MODELS`` maps config names to classes; ``get_model(name, **fields)`` builds one and
rejects unknown names or fields with the list of valid ones; ``model_fields(name)`` lists the
fields.
``init_variables(model, key, input_shape)`` initializes from a per-example shape, e.g. (28, 28, 1);
``logits_fn(model, variables)`` closes over the variables and gives the ``x -> logits`` function
attacks take; ``param_count(model, input_shape)`` counts parameters without allocating them.

Speed on XLA:CPU: 2x2 max-pooling is ``layers.max_pool_2x2`` (reshape + select), whose gradient is
several times faster than ``nn.max_pool``'s ``select_and_scatter``; MadryCNN / CNN4C3F differentiate
their first (thin-input) convolution with respect to its input as im2col + matmul
(``first_conv_impl="patches_grad"``, the default; "xla" is the plain convolution). Measure with
``python -m advjax.models.benchmark``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import layers
from advjax.models.cnn import CNN4C3F, DAACNN, DAAReleaseCNN, DRACNN, MadryCNN, ROCNN
from advjax.models.ensemble import Ensemble
from advjax.models.layers import CIFAR10_MEAN, CIFAR10_STD, max_pool_2x2
from advjax.models.mlp import MLP
from advjax.models.resnet import PreActResNet18, ResNet20
from advjax.models.wrn import WideResNet

MODELS: Dict[str, type] = {
    "mlp": MLP,
    "cnn4c3f": CNN4C3F,
    "madry_cnn": MadryCNN,
    "ro_cnn": ROCNN,
    "daa_cnn": DAACNN,
    "daa_release_cnn": DAAReleaseCNN,
    "dra_cnn": DRACNN,
    "resnet20": ResNet20,
    "preact_resnet18": PreActResNet18,
    "wrn": WideResNet,
    "ensemble": Ensemble,
}

_NOT_FIELDS = ("parent", "name")


def _model_class(name: str) -> type:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}") \
            from None


def model_fields(name: str) -> Tuple[str, ...]:
    """The configurable fields (dataclass attributes) of the model registered as ``name``."""
    return tuple(f.name for f in dataclasses.fields(_model_class(name))
                 if f.name not in _NOT_FIELDS)


def _as_tuples(value: Any) -> Any:
    # Config values may arrive as lists; modules must stay hashable (jit static arguments).
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds ``MODELS[name](**kwargs)``; lists become tuples. Unknown names or fields raise a
    ValueError that lists the valid ones."""
    cls = _model_class(name)
    valid = model_fields(name)
    bad = sorted(k for k in kwargs if k not in valid)
    if bad:
        raise ValueError(f"model {name!r} ({cls.__name__}) has no field(s) {', '.join(bad)}; "
                         f"valid fields: {', '.join(valid)}")
    return cls(**{k: _as_tuples(v) for k, v in kwargs.items()})


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int],
                   dtype=jnp.float32) -> Dict[str, Any]:
    """``model.init`` on a zero batch of one example of ``input_shape`` (no batch axis), in eval
    mode; returns the variable dict ({"params": ...}, plus "batch_stats" for batch-norm models)."""
    x = jnp.zeros((1, *input_shape), dtype)
    return dict(model.init({"params": key}, x, train=False))


def param_count(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of parameters, from shapes alone (``jax.eval_shape``: nothing is allocated)."""
    shapes = jax.eval_shape(lambda k: init_variables(model, k, input_shape), jax.random.PRNGKey(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


def logits_fn(model: nn.Module, variables: Dict[str, Any], *, train: bool = False,
              dropout_key: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
    """The ``x -> logits`` function of a model with fixed variables, for attacks.

    train=False (default): running batch-norm statistics, no dropout, nothing mutated.
    train=True: batch statistics of the attacked batch and dropout from ``dropout_key`` (needed if
    the model has dropout); the batch-norm update is computed and discarded.
    """
    if not train:
        return lambda x: model.apply(variables, x, train=False)
    rngs = {} if dropout_key is None else {"dropout": dropout_key}
    mutable = [k for k in variables if k != "params"]

    def logits(x):
        out, _ = model.apply(variables, x, train=True, rngs=rngs, mutable=mutable)
        return out

    return logits


__all__ = [
    "MLP", "CNN4C3F", "MadryCNN", "DAACNN", "DAAReleaseCNN", "DRACNN", "ResNet20", "PreActResNet18", "WideResNet",
    "MODELS", "get_model", "model_fields", "init_variables", "param_count", "logits_fn",
    "max_pool_2x2", "layers", "CIFAR10_MEAN", "CIFAR10_STD",
]
