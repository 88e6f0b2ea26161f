"""advjax: adversarial attacks and defences as pure JAX functions.

Layers (imports point down only): cli -> train/evaluate -> objectives -> attacks -> threat/losses;
models and data sit beside attacks and are only imported by objectives' callers and the loops.
"""

from advjax import attacks, losses, threat

__version__ = "0.1.0"

__all__ = ["attacks", "losses", "threat", "__version__"]
