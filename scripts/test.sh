#!/usr/bin/env bash
# Sets everything up (including the peer libraries the cross-check tests need) and runs the default
# test suite (slow checks excluded; run them with: .venv/bin/python -m pytest -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
