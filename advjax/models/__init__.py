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
fields. ``register_model(name, cls)`` adds a user's own Flax module, so that a config naming it
(``config.model.name = name``) trains it with ``advjax train`` (register it in the config file, or in
any module the config file imports).
``init_variables(model, key, input_shape)`` initializes from a per-example shape, e.g. (28, 28, 1);
``logits_fn(model, variables)`` closes over the variables and gives the ``x -> logits`` function
attacks take; ``param_count(model, input_shape)`` counts parameters without allocating them.

Speed on XLA:CPU: 2x2 max-pooling is ``layers.max_pool_2x2`` (reshape + select), whose gradient is
several times faster than ``nn.max_pool``'s ``select_and_scatter``; the CNNs' convolutions are
``layers.Conv`` with ``impl="auto"``: on CPU, derivatives written in forms XLA:CPU runs fast (im2col
for the thin first layer, an explicit input-gradient convolution, a batch-chunked kernel gradient),
on GPU / TPU XLA's own convolution (``layers.resolve_conv_impl``; "xla" forces the plain one).
Measure with ``python -m advjax.models.benchmark``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

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
_BUILTIN_MODELS = frozenset(MODELS)


def _call_parameters(cls: type) -> Dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls.__call__).parameters)


def _adapt_module_class(cls: type, features: Optional[str]) -> type:
    """A subclass of cls whose ``__call__(x, *, train=False, return_features=False)`` speaks the
    model-zoo contract, with the same fields and parameter tree.

    ``train`` goes on to cls's ``__call__`` as ``train`` (or as ``deterministic = not train``) if it
    takes one; features, for ``return_features=True``, are the output of the submodule at path
    ``features`` (e.g. "Dense_0" or "block/conv"), caught with ``nn.intercept_methods``, flattened
    to (batch, -1).
    """
    params = _call_parameters(cls)
    train_arg = next((a for a in ("train", "deterministic") if a in params), None)
    parent_call = cls.__call__

    def __call__(self, x, *, train: bool = False, return_features: bool = False):
        kwargs = {}
        if train_arg == "train":
            kwargs["train"] = train
        elif train_arg == "deterministic":
            kwargs["deterministic"] = not train
        if not return_features:
            return parent_call(self, x, **kwargs)
        if features is None:
            raise ValueError(f"model {cls.__name__} was registered without features: pass "
                             f"register_model(..., features=SUBMODULE_PATH) to use an objective "
                             f"that regularizes features (ADR, ASCL)")
        caught = []

        def catch(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            if (context.method_name == "__call__" and not caught
                    and "/".join(context.module.path) == features):
                caught.append(out)
            return out

        with nn.intercept_methods(catch):
            logits = parent_call(self, x, **kwargs)
        if not caught:
            raise ValueError(f"features={features!r}: {cls.__name__} has no submodule at that path")
        return logits, caught[0].reshape(caught[0].shape[0], -1)

    __call__.__doc__ = parent_call.__doc__
    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                                       "registered_features": features})


def register_model(name: str, cls: type, *, features: Optional[str] = None,
                   overwrite: bool = False) -> type:
    """Adds a user's Flax module class to ``MODELS`` under ``name``; returns the registered class.

    ``cls`` must be a ``flax.linen.Module`` subclass with a ``num_classes`` field (the training loop
    sets it from the dataset) whose ``__call__(x)`` maps NHWC images in [0, 1] to logits. It may take
    ``train`` (or ``deterministic``) and ``return_features``; if it lacks them, a subclass with the
    same fields and parameters adds them (``features``: the path of the submodule whose output an
    objective such as ADR regularizes). Built-in names cannot be replaced; registering another class
    under a user name needs ``overwrite=True`` (the same class, or a class of the same qualified name
    from a re-executed config file, replaces it silently).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"cls must be a flax.linen.Module subclass, got {cls!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    if "num_classes" not in fields:
        raise ValueError(f"{cls.__name__} must have a num_classes field (advjax train sets it from "
                         f"the dataset); its fields: {[f for f in fields if f not in _NOT_FIELDS]}")
    if features is not None and not isinstance(features, str):
        raise ValueError(f"features must be a submodule path such as 'Dense_0', got {features!r}")
    if name in _BUILTIN_MODELS:
        raise ValueError(f"{name!r} is a built-in model; register yours under another name")
    old = MODELS.get(name)
    if old is not None and not overwrite:
        old_cls = getattr(old, "registered_as", old)
        if old_cls is not cls and old_cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"model {name!r} is already registered ({old_cls.__qualname__}); pass "
                             f"overwrite=True to replace it")
    params = _call_parameters(cls)
    native = "train" in params and "return_features" in params
    registered = cls if native and features is None else _adapt_module_class(cls, features)
    if registered is cls:
        MODELS[name] = cls
    else:
        registered.registered_as = cls
        MODELS[name] = registered
    return registered


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
                   dtype: Any = jnp.float32) -> Dict[str, Any]:
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
    "register_model",
    "max_pool_2x2", "layers", "CIFAR10_MEAN", "CIFAR10_STD",
]
