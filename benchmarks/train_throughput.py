"""PGD-AT training throughput: advjax's jitted train step (the loop's) against a minimal PyTorch PGD-AT loop.

Same network (the Madry MNIST CNN), same batch (128 Fashion-MNIST-sized images), PGD-10 (linf
eps 0.1, step 0.025, random start) with the model in inference mode for the attack, then one SGD
step on the adversarial batch. Both run in this process, interleaved, so the ratio is meaningful on a
shared, noisy machine. The input pipeline's images/s (real Fashion-MNIST through advjax.data) is
printed beside it.

    python benchmarks/train_throughput.py [--batch 128] [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def advjax_step_fn(batch_size, pgd_steps):
    import jax
    import optax

    from advjax import models, objectives, train

    model = models.get_model("madry_cnn")
    objective = objectives.make_objective(
        "pgd_at", model.apply, dict(eps=0.1, step_size=0.025, steps=pgd_steps))
    tx = optax.sgd(0.01, momentum=0.9)
    state = train.create_train_state(model, objective, tx, jax.random.PRNGKey(0), (28, 28, 1))
    mesh = train.make_mesh(jax.local_devices()[:1])
    step = train.compile_step(objective, jax.random.PRNGKey(1), mesh)
    rstate = [train.replicate(state, mesh)]
    rng = np.random.default_rng(0)
    batch = train.shard_batch({"image": rng.random((batch_size, 28, 28, 1), dtype=np.float32),
                               "label": rng.integers(0, 10, batch_size).astype(np.int32)}, mesh)

    def run():
        rstate[0], metrics = step(rstate[0], batch)
        jax.block_until_ready(metrics["loss"])

    return run


def torch_step_fn(batch_size, pgd_steps):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    class MadryCNN(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(1, 32, 5, padding=2)
            self.conv2 = tnn.Conv2d(32, 64, 5, padding=2)
            self.fc1 = tnn.Linear(7 * 7 * 64, 1024)
            self.fc2 = tnn.Linear(1024, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc2(F.relu(self.fc1(x.flatten(1))))

    torch.manual_seed(0)
    model = MadryCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.random((batch_size, 1, 28, 28), dtype=np.float32))
    y = torch.tensor(rng.integers(0, 10, batch_size))
    eps, alpha = 0.1, 0.025

    def run():
        model.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(pgd_steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            g, = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * g.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x_adv.detach()), y).backward()
        opt.step()

    return run


def pipeline_images_per_sec(batch_size, seconds=2.0):
    from advjax import data
    try:
        x, y = data.load_numpy("fashion_mnist", "train", dtype=np.uint8)
    except data.DataError as e:
        return None, str(e).splitlines()[0]
    n, t0 = 0, time.perf_counter()
    epoch = 0
    while time.perf_counter() - t0 < seconds:
        for b in data.batches(x, y, batch_size, rng=0, epoch=epoch, shuffle=True,
                              drop_remainder=True):
            n += len(b["label"])
            if time.perf_counter() - t0 >= seconds:
                break
        epoch += 1
    return n / (time.perf_counter() - t0), "fashion_mnist train, uint8 -> float32, shuffled"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="PGD steps per training step")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    runners = {"advjax": advjax_step_fn(args.batch, args.steps)}
    try:
        runners["pytorch"] = torch_step_fn(args.batch, args.steps)
    except ImportError:
        print("torch not installed: `pip install torch==2.13.0` for the PyTorch column")
    for run in runners.values():  # compile / warm up
        run()
        run()
    times = {k: [] for k in runners}
    for _ in range(args.repeats):  # interleaved, so load changes hit both
        for k, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    print(f"PGD-AT train step, Madry CNN, batch {args.batch}, PGD-{args.steps}, "
          f"median of {args.repeats}")
    print(f"| implementation | ms/step | images/s |")
    print(f"|---|---:|---:|")
    ips = {}
    for k, ts in times.items():
        med = float(np.median(ts))
        ips[k] = args.batch / med
        print(f"| {k} | {1000 * med:.1f} | {ips[k]:.1f} |")
    if "pytorch" in ips:
        print(f"ratio advjax / pytorch: {ips['advjax'] / ips['pytorch']:.2f}x")
    rate, what = pipeline_images_per_sec(args.batch)
    if rate is None:
        print(f"input pipeline: unavailable ({what})")
    else:
        print(f"input pipeline: {rate:,.0f} images/s ({what}, batch {args.batch})")


if __name__ == "__main__":
    main()
