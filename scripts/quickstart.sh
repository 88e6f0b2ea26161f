#!/usr/bin/env bash
# Sets everything up, then trains and evaluates the quickstart (PGD-AT on real Fashion-MNIST, small
# CNN, a few minutes on 2 CPU cores), prints its table and writes its pictures to workdirs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-peers
. .venv/bin/activate
W=workdirs/quickstart
advjax train --config configs/quickstart.py --workdir "$W" "$@"
advjax attack --config configs/quickstart.py --workdir "$W" --limit 500
echo "pictures: $W/attack_grid.png $W/accuracy_vs_eps.png; table: $W/eval.md"
