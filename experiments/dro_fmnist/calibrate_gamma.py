"""Calibrates the Lagrangian penalty gamma of the WRM/DRA configs for the dro_fmnist study.

DRA (Sec. 4) "set the parameters of each attacker so that the generated adversarial images have
identical distortions" and chose its gammas "to match the maximum attack distortion". gamma has no
transferable value (DRA's CIFAR-10 gamma is for another input scale and optimizer), so we pick it by
the size of the perturbations it lets the training attack make: one short training run per value
(the first --train-limit images, one epoch, otherwise the config unchanged, so the study's
optimizer) and the mean linf norm of the training perturbations logged every 20 steps ("linf" in
metrics.jsonl), averaged over the second half of the run. Target: the point-wise methods' eps = 0.1,
so that the study compares budgets of one scale. A run whose training accuracy stays at chance is
rejected. `experiments/dro_fmnist/run.py` calls `calibrate` and records the choice in gamma.json.

    python experiments/dro_fmnist/calibrate_gamma.py --config wrm_fmnist --gamma 0.1 0.3 1.0
    python experiments/dro_fmnist/calibrate_gamma.py --config dra_inf_fmnist --gamma 0.3 1.0 3.0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import study  # noqa: E402

TARGET_LINF = 0.1


def calibrate(config: str, gammas, *, train_limit: int = 12800, target: float = TARGET_LINF,
              overrides=None, verbose: bool = True):
    """One short run per gamma; returns (chosen gamma, [per-gamma summaries])."""
    from advjax import train
    runs = []
    for gamma in gammas:
        cfg = study.load_config(config, {
            **(overrides or {}), "objective.gamma": gamma, "train.epochs": 1,
            "data.train_limit": train_limit, "eval.limit": 500, "eval.attacks": [],
            "train.progress": False, "train.log_every": 20, "train.checkpoint_every_steps": 0,
            "optim.decay_epochs": ()})
        with tempfile.TemporaryDirectory(prefix=f"calibrate_{config}_") as workdir:
            train.train_and_evaluate(cfg, workdir)
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                logged = [json.loads(line) for line in f if line.strip()]
        half = logged[len(logged) // 2:]
        summary = {"gamma": gamma,
                   "linf": statistics.fmean(m["linf"] for m in half),
                   "l2": statistics.fmean(m["l2"] for m in half),
                   "adv_acc": statistics.fmean(m["adv_acc"] for m in half),
                   "loss": half[-1]["loss"]}
        summary["collapsed"] = summary["adv_acc"] <= 0.12 and summary["loss"] > 2.2
        runs.append(summary)
        if verbose:
            print(f"{config} gamma = {gamma}: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in summary.items() if k != "gamma"), flush=True)
    ok = [r for r in runs if not r["collapsed"]] or runs
    chosen = min(ok, key=lambda r: abs(r["linf"] - target))["gamma"]
    return chosen, runs


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--gamma", type=float, nargs="+", required=True)
    p.add_argument("--train-limit", type=int, default=12800)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    study.pin_threads(args.threads)
    chosen, _ = calibrate(args.config, args.gamma, train_limit=args.train_limit)
    print(f"chosen gamma for {args.config}: {chosen} (mean linf closest to {TARGET_LINF})")


if __name__ == "__main__":
    main()
