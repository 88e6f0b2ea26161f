"""Attack throughput: linf PGD-20 on the Madry MNIST CNN, batch 256, advjax vs torchattacks vs Foolbox;
APGD-CE and APGD-T on the quickstart's CNN-4C3F, advjax vs the reference AutoAttack.

One process, identical weights (a randomly initialized Madry CNN: conv5x5-32, max-pool, conv5x5-64,
max-pool, FC1024, FC10; the cost does not depend on the weights' values), identical inputs, no random
start, eps 0.3, step 0.01. Rows:

  advjax                 `advjax.attacks.pgd` on `advjax.models.MadryCNN` (its default layers:
                         reshape max-pool, im2col input-gradient for the first conv, explicit
                         input-gradient conv for the second: see advjax/models/layers.py)
  advjax, plain layers   the same attack and weights with XLA's own nn.max_pool / convolution
                         (pool_impl="nn", first_conv_impl="xla", conv_impl="xla"): what a user's
                         vanilla Flax model gets
  torchattacks           torchattacks.PGD(random_start=False) on the same weights in PyTorch
  torchattacks, torch.compile
                         the same with the PyTorch model wrapped in `torch.compile` (inductor, CPU),
                         what a PyTorch user would reach for; skipped with the reason if it fails
  foolbox-jax            foolbox.attacks.LinfPGD on the advjax model through foolbox.JAXModel

Timings are interleaved over `--repeats` rounds and the median is reported, with images/s and the
ratio to torchattacks; agreement with torchattacks (fraction of examples whose adversarial image is
within 1e-3 everywhere) is printed so the speed is for the same result. advjax and the peers run on
the same number of threads (`--threads`, default all CPUs; benchmarks/_bench.py).

APGD section (`--apgd-n`, default 1000; 0 skips it): APGD-CE-100 and APGD-T-100 (9 target classes),
linf eps 0.1, one restart, on the quickstart's CNN-4C3F with its committed trained weights
(`advjax.testing.fmnist_at`, name "quickstart") and the first `--apgd-n` Fashion-MNIST test images;
both implementations attack the correctly classified ones in one batch, as AutoAttack does. advjax
is `advjax.attacks.apgd_ce` / `apgd_t` under `jax.jit`, timed from its first call (compilation
included: what a user waits for); the reference is pyautoattack's `APGDAttack` /
`APGDAttack_targeted` on the PyTorch twin. Robust accuracy is printed beside the time (the random
starts differ, so it agrees within a few tenths of a percent, not exactly).

    python benchmarks/attack_throughput.py [--batch 256] [--steps 20] [--repeats 3] [--threads N]
        [--apgd-n 1000]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402

_bench.configure_threads(_bench.threads_from_argv())

import argparse  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EPS, STEP = 0.3, 0.01


def make_inputs(batch):
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    return x, y


def advjax_runner(variables, x, y, steps, **model_fields):
    import jax
    import jax.numpy as jnp

    from advjax import attacks, models
    model = models.get_model("madry_cnn", **model_fields)
    f = lambda z: model.apply(variables, z)
    attack = jax.jit(lambda xx, yy: attacks.pgd(f, xx, yy, eps=EPS, step_size=STEP, steps=steps,
                                                random_start=False))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    return lambda: np.asarray(jax.block_until_ready(attack(xj, yj)))


def torchattacks_runner(variables, x, y, steps, compile_model=False):
    torch = _bench.torch_threads()
    import torchattacks

    from advjax import models
    from advjax.testing.torch_twins import to_nchw, torch_twin
    m = torch_twin(models.get_model("madry_cnn"), variables)
    if compile_model:
        m = torch.compile(m)
    atk = torchattacks.PGD(m, eps=EPS, alpha=STEP, steps=steps, random_start=False)
    xt = to_nchw(x)
    yt = torch.tensor(y).long()
    return lambda: atk(xt, yt).permute(0, 2, 3, 1).numpy()


def foolbox_runner(variables, x, y, steps):
    import foolbox as fb
    import jax
    import jax.numpy as jnp

    from advjax import models
    model = models.get_model("madry_cnn")
    fmodel = fb.JAXModel(jax.jit(lambda z: model.apply(variables, z)), bounds=(0, 1))
    attack = fb.attacks.LinfPGD(abs_stepsize=STEP, steps=steps, random_start=False)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def run():
        _, clipped, _ = attack(fmodel, xj, yj, epsilons=EPS)
        return np.asarray(clipped)

    return run


APGD_EPS, APGD_STEPS, APGD_TARGETS = 0.1, 100, 9


def apgd_section(n: int) -> None:
    """Prints the APGD table (module docstring)."""
    import jax
    import jax.numpy as jnp

    from advjax import attacks
    from advjax.testing import fmnist_at, torch_twins
    x, y = fmnist_at.load_split("test", n)
    f = fmnist_at.logits_fn("quickstart")
    correct = np.argmax(np.asarray(f(jnp.asarray(x))), -1) == y
    x, y = x[correct], y[correct]
    attacks_ = {
        "APGD-CE": lambda xx, yy, k: attacks.apgd_ce(f, xx, yy, key=k, eps=APGD_EPS,
                                                     steps=APGD_STEPS),
        f"APGD-T ({APGD_TARGETS} targets)": lambda xx, yy, k: attacks.apgd_t(
            f, xx, yy, key=k, eps=APGD_EPS, steps=APGD_STEPS, num_target_classes=APGD_TARGETS),
    }
    try:
        torch = _bench.torch_threads()
        from pyautoattack import autopgd_base
        tm = fmnist_at.torch_model("quickstart")
        references = {
            "APGD-CE": autopgd_base.APGDAttack(tm, n_iter=APGD_STEPS, norm="Linf", n_restarts=1,
                                               eps=APGD_EPS, seed=0, loss="ce", device="cpu"),
            f"APGD-T ({APGD_TARGETS} targets)": autopgd_base.APGDAttack_targeted(
                tm, n_iter=APGD_STEPS, norm="Linf", n_restarts=1, eps=APGD_EPS, seed=0,
                n_target_classes=APGD_TARGETS, device="cpu"),
        }
        skipped = None
    except ImportError as e:
        references, skipped = {}, f"{type(e).__name__}: {e}"

    def robust(x_adv):
        return float(np.mean(np.argmax(np.asarray(f(jnp.asarray(x_adv))), -1) == y))

    print(_bench.header(f"linf APGD, eps {APGD_EPS}, {APGD_STEPS} iterations, 1 restart; "
                        f"quickstart CNN-4C3F (committed weights), the {len(y)} correctly "
                        f"classified of the first {n} Fashion-MNIST test images; one run each, "
                        "advjax's time including its compilation"))
    print("| attack | implementation | seconds | images/s | ratio to reference | "
          "robust accuracy (of the attacked) |")
    print("|---|---|---:|---:|---:|---:|")
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    for name, attack in attacks_.items():
        run = jax.jit(attack)
        t0 = time.perf_counter()
        x_adv = np.asarray(jax.block_until_ready(run(xj, yj, jax.random.PRNGKey(0))))
        ours = time.perf_counter() - t0
        theirs = None
        if name in references:
            xt, yt = torch_twins.to_nchw(x), torch.tensor(y).long()
            t0 = time.perf_counter()
            x_ref = references[name].perturb(xt, yt).detach().permute(0, 2, 3, 1).numpy()
            theirs = time.perf_counter() - t0
        ratio = f"{theirs / ours:.2f}x" if theirs else "n/a"
        print(f"| {name} | advjax | {ours:.1f} | {len(y) / ours:.1f} | {ratio} | "
              f"{100 * robust(x_adv):.2f}% |")
        if theirs:
            print(f"| {name} | reference (pyautoattack) | {theirs:.1f} | {len(y) / theirs:.1f} | "
                  f"1.00x | {100 * robust(x_ref):.2f}% |")
    if skipped:
        print(f"| APGD | reference (pyautoattack) | skipped: {skipped} | | | |")
    print(f"load at the end {_bench.load()}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPUs for advjax and peers (0: all)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--apgd-n", type=int, default=1000,
                   help="test images for the APGD section (0: skip it)")
    args = p.parse_args()

    import jax

    from advjax import models
    x, y = make_inputs(args.batch)
    variables = models.init_variables(models.get_model("madry_cnn"), jax.random.PRNGKey(0),
                                      (28, 28, 1))
    runners, skipped = {}, {}
    runners["advjax"] = advjax_runner(variables, x, y, args.steps)
    runners["advjax, plain layers"] = advjax_runner(variables, x, y, args.steps, pool_impl="nn",
                                                    first_conv_impl="xla", conv_impl="xla")
    peers = [("torchattacks", torchattacks_runner), ("foolbox-jax", foolbox_runner)]
    if not args.no_compile:
        peers.insert(1, ("torchattacks, torch.compile",
                         lambda *a: torchattacks_runner(*a, compile_model=True)))
    for name, make in peers:
        try:
            runners[name] = make(variables, x, y, args.steps)
            runners[name]()
        except Exception as e:  # a missing or broken peer is reported, not fatal
            runners.pop(name, None)
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    outputs = {k: run() for k, run in runners.items()}  # warm-up (compilation) and results
    times = {k: [] for k in runners}
    for _ in range(args.repeats):
        for k, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    ref = outputs.get("torchattacks")
    print(_bench.header(f"linf PGD-{args.steps}, Madry MNIST CNN, batch {args.batch}, eps {EPS}, "
                        f"step {STEP}, no random start; median of {args.repeats} interleaved "
                        "runs"))
    print("| implementation | seconds | images/s | ratio to torchattacks | "
          "examples equal to torchattacks (1e-3) |")
    print("|---|---:|---:|---:|---:|")
    ips = {k: args.batch / float(np.median(ts)) for k, ts in times.items()}
    for k in runners:
        ratio = f"{ips[k] / ips['torchattacks']:.2f}x" if "torchattacks" in ips else "n/a"
        agree = "n/a"
        if ref is not None:
            close = np.all(np.abs(outputs[k] - ref).reshape(args.batch, -1) <= 1e-3, axis=1)
            agree = f"{100 * close.mean():.1f}%"
        print(f"| {k} | {float(np.median(times[k])):.2f} | {ips[k]:.1f} | {ratio} | {agree} |")
    for k, why in skipped.items():
        print(f"| {k} | skipped: {why} | | | |")
    print(f"load at the end {_bench.load()}")
    if args.apgd_n:
        print()
        apgd_section(args.apgd_n)


if __name__ == "__main__":
    main()
