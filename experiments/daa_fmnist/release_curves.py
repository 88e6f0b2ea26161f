"""The released runs' training curves: what training the released config for fewer iterations costs.

The DAA release (`tianzheng4/Distributionally-Adversarial-Attack`) ships the TensorBoard event files
of its Fashion-MNIST training runs in `fashion-mnist-master/models/a_very_robust_model/`. Their
scalar "accuracy_adv_train" is the accuracy on the training batch of 50 under the training attack
(PGD-30, eps 0.2), logged every 100 iterations. This script reads those scalars (TFRecord framing +
tensorboardX's Event protobuf; no TensorFlow), writes them to release_curves.json (the numbers
only, with their source) and prints the accuracy at a few iterations, mean over +-1,000
iterations, per run. run.py's curve stage puts them beside our own run's curve.

    # fetch the release first (the search tool's fetch gives a bare git directory), then:
    python experiments/daa_fmnist/release_curves.py --git-dir /work/.mirror/<owner+name>/repo
    python experiments/daa_fmnist/release_curves.py --events-dir path/to/a_very_robust_model
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = "tianzheng4/Distributionally-Adversarial-Attack"
FOLDER = "fashion-mnist-master/models/a_very_robust_model"
TAG = "accuracy_adv_train"
MARKS = (1000, 2400, 5000, 6000, 10000, 12000, 20000, 30000, 50000, 75000, 99000)


def scalars(blob: bytes, tag: str) -> List[Tuple[int, float]]:
    """(step, value) of every simple-value summary `tag` in a TFRecord file of Event protos."""
    from tensorboardX.proto import event_pb2
    out, i = [], 0
    while i + 12 <= len(blob):
        (length,) = struct.unpack("<Q", blob[i:i + 8])
        record = blob[i + 12:i + 12 + length]  # skip the length's crc
        i += 12 + length + 4  # and the record's
        event = event_pb2.Event()
        event.ParseFromString(record)
        for v in event.summary.value:
            if v.tag == tag and v.HasField("simple_value"):
                out.append((int(event.step), float(v.simple_value)))
    return sorted(out)


def read_files(args) -> Dict[str, bytes]:
    if args.events_dir:
        return {f: open(os.path.join(args.events_dir, f), "rb").read()
                for f in sorted(os.listdir(args.events_dir)) if f.startswith("events.")}
    git = ["git", f"--git-dir={args.git_dir}"]
    names = subprocess.run(git + ["ls-tree", "--name-only", "HEAD", FOLDER + "/"], check=True,
                           capture_output=True, text=True).stdout.split()
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    args.commit = commit
    return {os.path.basename(n): subprocess.run(git + ["show", f"HEAD:{n}"], check=True,
                                                capture_output=True).stdout
            for n in names if os.path.basename(n).startswith("events.")}


def window(series: List[Tuple[int, float]], step: int, half: int = 1000):
    vals = [v for s, v in series if abs(s - step) <= half]
    return sum(vals) / len(vals) if vals else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--git-dir", help="a clone (or bare mirror) of the release")
    src.add_argument("--events-dir", help="a folder holding the events.* files")
    p.add_argument("--out", default=os.path.join(HERE, "release_curves.json"))
    args = p.parse_args(argv)
    args.commit = None
    runs = {}
    for name, blob in read_files(args).items():
        series = scalars(blob, TAG)
        if len(series) < 10:  # empty or single-point files of aborted starts
            continue
        runs[name] = {"complete": series[-1][0] >= 99_000, "last_step": series[-1][0],
                      "adv_acc_train": [[s, round(v, 4)] for s, v in series]}
    with open(args.out, "w") as f:
        json.dump({"source": f"github.com/{REPO} {FOLDER} (commit {args.commit})",
                   "tag": TAG, "what": "training-batch (50 images) accuracy under the training "
                   "attack (PGD-30, eps 0.2), logged every 100 iterations",
                   "command": "python experiments/daa_fmnist/release_curves.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
                   "runs": runs}, f, separators=(",", ":"))
        f.write("\n")
    print("| run | last iteration | " + " | ".join(f"{m:,}" for m in MARKS) + " |")
    print("|---|---:|" + "---:|" * len(MARKS))
    for name, run in runs.items():
        cells = [window(run["adv_acc_train"], m) for m in MARKS]
        print(f"| {name.split('.')[3]} | {run['last_step']:,} | "
              + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
