"""advjax: adversarial attacks and defences as pure JAX functions.

`import advjax` is enough for everything:

    x_adv = advjax.pgd(logits_fn, x, y, key=key, eps=0.3, steps=40)      # attacks: flat API
    advjax.attacks, advjax.losses, advjax.threat                          # jax only, imported now
    advjax.evaluate, advjax.models, advjax.objectives, advjax.train, advjax.data, ...
                                                                          # imported on first use

The attacks (and `normalized`, `targeted`, `targets`, `get_attack`, `register_attack`) are imported
with the package: they need only jax. The Flax models, training objectives, loops and data pipeline
are submodules loaded on first attribute access (PEP 562), so `import advjax` does not import Flax,
optax's training loop, tensorflow-datasets or matplotlib. A few of their entry points are also
top-level names, loaded the same way: `register_model`, `get_model` (advjax.models),
`make_objective` (advjax.objectives), `robust_accuracy` and `autoattack` (advjax.evaluate),
`train_and_evaluate` (advjax.train).

Layers (imports point down only): cli -> train/evaluate -> objectives -> attacks -> threat/losses;
models and data sit beside attacks and are only imported by objectives' callers and the loops.
"""

from __future__ import annotations

import importlib
from typing import Any, List

from advjax import attacks, losses, threat
from advjax.attacks import *  # noqa: F401,F403  (the flat attack API; attacks.__all__)

# The one place the version is written; pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"

# Submodules imported on first access: they pull in Flax, tensorflow-datasets, matplotlib, ...
_LAZY_MODULES = ("cli", "config", "data", "distributed", "evaluate", "models", "objectives",
                 "plots", "train")
# Top-level names that live in a lazy submodule.
_LAZY_ATTRIBUTES = {
    "register_model": "models",
    "get_model": "models",
    "make_objective": "objectives",
    "robust_accuracy": "evaluate",
    "autoattack": "evaluate",
    "train_and_evaluate": "train",
}


def __getattr__(name: str) -> Any:
    """PEP 562: import a lazy submodule (or a name from one) on first access."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f"{__name__}.{_LAZY_ATTRIBUTES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_ATTRIBUTES))


# The lazy names of _LAZY_ATTRIBUTES are documented in their modules, not listed here.
__all__ = (["attacks", "losses", "threat", "__version__"] + list(attacks.__all__)
           + list(_LAZY_MODULES))
