"""PGD-AT on the real Fashion-MNIST (linf eps 0.1), evaluated by advjax and cross-checked by
torchattacks on the same weights. Writes results.json and results.md next to this file.

    python experiments/fmnist_at/run.py [--workdir workdirs/fmnist_at]

1. `advjax.train.train_and_evaluate(configs/fmnist_at.py)`: training, then clean accuracy, every
   attack of config.eval.attacks and A_rob (per-example worst case, ADT Eq. 12) on all 10,000 test
   images.
2. The same weights in PyTorch (advjax.testing.torch_twins), attacked by torchattacks PGD-20
   (random start, step eps/4) and FGSM, so the robust accuracy is not an artifact of our own attack.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)


def load_config():
    spec = importlib.util.spec_from_file_location("fmnist_at", os.path.join(ROOT, "configs",
                                                                            "fmnist_at.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(), mod.EPS


def torchattacks_check(config, eps, workdir):
    import torch
    import torchattacks

    from advjax import data, train
    from advjax.testing.torch_twins import to_nchw, torch_twin
    state, model = train.restore_state(config, workdir)
    twin = torch_twin(model, {"params": state.params})
    x, y = data.load_numpy("fashion_mnist", "test")
    xt, yt = to_nchw(x), torch.tensor(y).long()
    torch.manual_seed(0)
    out = {}
    attacks = {"fgsm": torchattacks.FGSM(twin, eps=eps),
               "pgd-20": torchattacks.PGD(twin, eps=eps, alpha=eps / 4, steps=20,
                                          random_start=True)}
    with torch.no_grad():
        out["clean"] = float((twin(xt).argmax(1) == yt).float().mean())
    for name, atk in attacks.items():
        correct = []
        for i in range(0, len(xt), 500):
            xa = atk(xt[i:i + 500], yt[i:i + 500])
            with torch.no_grad():
                correct.append((twin(xa).argmax(1) == yt[i:i + 500]).numpy())
        out[name] = float(np.concatenate(correct).mean())
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "fmnist_at"))
    args = p.parse_args()
    from advjax import train
    config, eps = load_config()
    t0 = time.time()
    res = train.train_and_evaluate(config, args.workdir)
    wall_train_eval = time.time() - t0
    t1 = time.time()
    peer = torchattacks_check(config, eps, args.workdir)
    wall_peer = time.time() - t1
    table = res.pop("table")
    out = {"advjax": res, "torchattacks": peer, "wall_seconds_train_and_eval": wall_train_eval,
           "wall_seconds_torchattacks": wall_peer}
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    lines = [table, "", "Same weights in PyTorch, attacked by torchattacks (accuracy %):", "",
             "| evaluation | advjax | torchattacks |", "|---|---:|---:|",
             f"| clean | {100 * res['clean']:.2f} | {100 * peer['clean']:.2f} |",
             f"| fgsm | {100 * res['attack/fgsm']:.2f} | {100 * peer['fgsm']:.2f} |",
             f"| pgd-20 | {100 * res['attack/pgd-20']:.2f} | {100 * peer['pgd-20']:.2f} |", "",
             f"training {res['train_seconds']:.0f} s; training + advjax evaluation "
             f"{wall_train_eval:.0f} s; torchattacks check {wall_peer:.0f} s (wall)."]
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
