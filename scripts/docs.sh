#!/usr/bin/env bash
# Builds the API reference (HTML, from the docstrings, with pdoc) into docs/api/ (git-ignored), or
# into the folder given as the first argument. Fails if pdoc warns.
# Needs pdoc: `pip install -e ".[docs]"` (scripts/setup.sh installs it). Runs .venv/bin/python, or
# the interpreter named by $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && PY=.venv/bin/python
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS=cpu exec "$PY" scripts/docs.py "$@"
