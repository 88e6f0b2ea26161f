"""Builds the API reference from the docstrings with pdoc: `python scripts/docs.py [OUT_DIR]`.

Writes HTML to OUT_DIR (default docs/api/, git-ignored) for advjax and every submodule. Exits
non-zero if pdoc warns (an unresolvable reference, a docstring it cannot parse, a module it cannot
import): the reference builds without warnings or the build fails. `scripts/docs.sh` runs this with
the project's interpreter; tests/test_packaging.py runs `build` in-process.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent


def modules() -> List[str]:
    """advjax and all its public submodules (a package's __all__ would hide the modules it does not
    list). advjax.testing (torch twins for the cross-check tests) is left out: it needs torch."""
    import pkgutil

    import advjax
    names = ["advjax"]
    for info in pkgutil.walk_packages(advjax.__path__, "advjax."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name.startswith("advjax.testing"):
            continue
        names.append(info.name)
    return names


def build(output_dir: os.PathLike) -> List[str]:
    """Renders the reference into output_dir; returns pdoc's warnings as strings (empty when clean)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import pdoc
    import pdoc.extract
    import pdoc.render

    import advjax
    # Import the lazy submodules first, so that their third-party import-time warnings (not pdoc's)
    # are not counted.
    for name in advjax._LAZY_MODULES:
        getattr(advjax, name)
    pdoc.render.configure(docformat="google", show_source=False,
                          footer_text=f"advjax {advjax.__version__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # "advjax" walks the submodules its packages' __all__ name; add the others (all leaves).
        walked = set(pdoc.extract.walk_specs(["advjax"]))
        specs = ["advjax"] + [m for m in modules() if m not in walked]
        pdoc.pdoc(*specs, output_directory=Path(output_dir))
    return [f"{w.category.__name__}: {w.message}" for w in caught if not _third_party(str(w.message))]


# pdoc evaluates the annotations of every documented callable. A few objects advjax re-exposes carry
# annotations written inside jax / flax in names pdoc cannot resolve from advjax (jax's initializers
# as dataclass defaults of layers.Conv: "Array", "core.Shape"; the fields flax's TrainState gives
# advjax.train.TrainState: "ArrayTree"). Those warnings say nothing about advjax's docstrings.
_THIRD_PARTY_ANNOTATIONS = ("advjax.models.layers.Conv.kernel_init",
                            "advjax.models.layers.Conv.bias_init",
                            "advjax.train.TrainState.", "flax.")


def _third_party(message: str) -> bool:
    if not message.startswith("Error parsing type annotation"):
        return False
    target = message.split(" for ", 1)[-1].split(". Import of", 1)[0]
    return target.startswith(_THIRD_PARTY_ANNOTATIONS)


def main(argv: List[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "api"
    problems = build(out)
    for p in problems:
        print(f"docs: {p}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} warning(s); the API reference must build cleanly",
              file=sys.stderr)
        return 1
    print(f"docs: API reference written to {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
