#!/usr/bin/env bash
# Sets up everything advjax needs on a fresh Debian machine: the real Fashion-MNIST (Debian package),
# a virtual environment in .venv with advjax (editable) and its test and docs extras, and the independent
# implementations the tests compare against (local CPU torch, torchattacks, foolbox, pyautoattack).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--no-peers]
set -euo pipefail
cd "$(dirname "$0")/.."

peers=1
[[ "${1:-}" == "--no-peers" ]] && peers=0

SUDO=""
[[ "$(id -u)" != 0 ]] && SUDO="sudo"
if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  echo "== apt: dataset-fashion-mnist"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "== venv: .venv"
  python3 -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "== pip: advjax and its dependencies"
pip install -q -e ".[test,docs]" 2>&1 | grep -v "^WARNING: Location" || true
if [[ $peers == 1 ]]; then
  echo "== pip: peers for cross-checks (local CPU torch, torchattacks, foolbox, pyautoattack = the reference AutoAttack)"
  # torch==2.13.0 is the local CPU build; a bare `torch` would pull GBs of CUDA packages.
  pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
  pip install -q --no-deps torchattacks foolbox pyautoattack==0.2.0 2>&1 | grep -v "^WARNING: Location" || true
  pip install -q gitpython scipy requests eagerpy 2>&1 | grep -v "^WARNING: Location" || true
  for peer in torch torchattacks foolbox pyautoattack; do
    python -c "import $peer" 2>/dev/null || echo "WARNING: $peer did not install; its cross-checks in tests/test_peers.py will be skipped (pytest -rs names them)"
  done
fi
python -c "import advjax, jax; print('advjax', advjax.__version__, 'on jax', jax.__version__, jax.devices())"
