"""Calibrates the Lagrangian penalty gamma of the WRM/DRA configs for the dro_fmnist study.

gamma has no transferable value (DRA's CIFAR-10 gamma is for another input scale and optimizer), so
we pick it by the size of the perturbations it lets the training attack make: one short training run
per value (the first --train-limit images, one epoch, otherwise the config unchanged) and the mean
linf / l2 norm of the training perturbations logged every 20 steps ("linf", "l2" in metrics.jsonl).
Target: mean linf near the point-wise methods' eps = 0.1, so that the study compares budgets of one
scale.

    python experiments/dro_fmnist/calibrate_gamma.py --config wrm_fmnist --gamma 1.0 0.3
    python experiments/dro_fmnist/calibrate_gamma.py --config dra_inf_fmnist --gamma 1.0 3.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import study  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--gamma", type=float, nargs="+", required=True)
    p.add_argument("--train-limit", type=int, default=12800)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    study.pin_threads(args.threads)
    from advjax import train
    for gamma in args.gamma:
        config = study.load_config(args.config, {
            "objective.gamma": gamma, "train.epochs": 1, "data.train_limit": args.train_limit,
            "eval.limit": 500, "eval.attacks": [], "train.progress": False,
            "train.log_every": 20})
        workdir = tempfile.mkdtemp(prefix=f"calibrate_{args.config}_")
        train.train_and_evaluate(config, workdir)
        print(f"{args.config} gamma = {gamma}:")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                m = json.loads(line)
                print("  " + ", ".join(f"{k}={m[k]:.4g}" for k in ("step", "loss", "linf", "l2",
                                                                   "cost") if k in m))


if __name__ == "__main__":
    main()
