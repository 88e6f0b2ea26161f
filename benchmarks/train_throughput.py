"""PGD-AT training throughput: advjax's train step against a PyTorch loop and torch.compile.

    python benchmarks/train_throughput.py [--models cnn4c3f_study,madry_cnn] [--threads N]
                                          [--batch 128] [--steps 10] [--repeats 5]
    python benchmarks/train_throughput.py --profile --models cnn4c3f_32

Models (`--models`, default all), the ones the studies and reproductions train:
  cnn4c3f_study     CNN-4C3F with the studies' widths (16, 32) and one FC-128 layer, no dropout
                    (configs/quickstart.py; ~5 MFLOP per forward pass)
  cnn4c3f_32        the thesis' CNN-4C3F(32): widths (32, 32), FC 200-200, dropout 0.5 (the
                    default fields of `advjax.models.CNN4C3F`)
  daa_release_cnn   DAA's released Fashion-MNIST CNN (`advjax.models.DAAReleaseCNN`)
  madry_cnn         Madry et al.'s MNIST CNN
Protocol, the same for every model and implementation: a batch of 128 28x28x1 images, PGD-10 (linf
eps 0.1, step 0.025, random start) with the model in inference mode, then one SGD step (momentum 0.9)
on the adversarial batch in training mode. Implementations:
  advjax            the jitted train step of `advjax train` (`train.compile_step`) on one device
  pytorch           a plain PyTorch loop (eager), the same architecture
  torch.compile     the same loop with the model wrapped in `torch.compile` (inductor, CPU), what a
                    PyTorch user would reach for; skipped with the reason if it does not work
`--profile` instead prints where a model's step spends its time: for each convolution of the model,
the milliseconds of its forward pass, input gradient and kernel gradient at batch `--batch`, in
advjax's layer (`advjax.models.layers.Conv`, the implementation "auto" resolves to on this backend)
and in PyTorch (`F.conv2d` and autograd), and those weighted by how often one PGD-AT step runs them
((PGD steps + 1) forwards, PGD steps + 1 input gradients -- PGD steps for the first layer, whose
input gradient the update does not need -- and one kernel gradient).
The implementations of a model take turns over `--repeats` rounds (median reported), all on the same
number of threads (`--threads`, see benchmarks/_bench.py). GFLOP/s counts (2 x PGD steps + 3) x the
model's forward FLOPs (XLA's cost analysis) per image: forward and input gradient per attack step,
forward and both gradients for the update; "% sgemm" relates it to this CPU's single-precision
matmul rate at the same thread count (the best of XLA and torch on 2048^3), measured here first.
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

MODELS = {
    "cnn4c3f_study": ("cnn4c3f", dict(widths=(16, 32), fc_widths=(128,), dropout_rate=0.0),
                      "CNN-4C3F (16, 32)/FC-128"),
    "cnn4c3f_32": ("cnn4c3f", {}, "CNN-4C3F(32)"),
    "daa_release_cnn": ("daa_release_cnn", {}, "DAA release CNN"),
    "madry_cnn": ("madry_cnn", {}, "Madry CNN"),
}
EPS, STEP = 0.1, 0.025


def advjax_step_fn(name, fields, batch_size, pgd_steps):
    import jax
    import optax

    from advjax import models, objectives, train

    model = models.get_model(name, **fields)
    objective = objectives.make_objective(
        "pgd_at", model.apply, dict(eps=EPS, step_size=STEP, steps=pgd_steps))
    state = train.create_train_state(model, objective, optax.sgd(0.01, momentum=0.9),
                                     jax.random.PRNGKey(0), (28, 28, 1))
    mesh = train.make_mesh(jax.local_devices()[:1])
    step = train.compile_step(objective, jax.random.PRNGKey(1), mesh)
    rstate = [train.replicate(state, mesh)]
    rng = np.random.default_rng(0)
    batch = train.shard_batch({"image": rng.random((batch_size, 28, 28, 1), dtype=np.float32),
                               "label": rng.integers(0, 10, batch_size).astype(np.int32)}, mesh)

    def run():
        rstate[0], metrics = step(rstate[0], batch)
        jax.block_until_ready(metrics["loss"])

    return run, model, {"params": state.params}


def torch_model(name, fields, flax_model, variables):
    """The architecture in PyTorch: the weight-copying twin where there is one, else written here."""
    torch = _bench.torch_threads()
    if name in ("cnn4c3f", "madry_cnn"):
        from advjax.testing.torch_twins import torch_twin
        return torch_twin(flax_model, variables)
    nn = torch.nn

    class Affine(nn.Module):  # DAA's inference-mode batch norm: gamma h / sqrt(1 + 1e-3) + beta
        def __init__(self, n):
            super().__init__()
            self.scale, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))

        def forward(self, h):
            return self.scale * h / (1.0 + 1e-3) ** 0.5 + self.bias

    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), Affine(1024), nn.Linear(1024, 10))


def torch_step_fn(model, batch_size, pgd_steps):
    """Madry et al.'s PGD-AT step as a PyTorch user writes it."""
    torch = _bench.torch_threads()
    F = torch.nn.functional
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.random((batch_size, 1, 28, 28), dtype=np.float32))
    y = torch.tensor(rng.integers(0, 10, batch_size))

    def run():
        model.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(pgd_steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            g, = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + STEP * g.sign()
            x_adv = (x + (x_adv - x).clamp(-EPS, EPS)).clamp(0, 1)
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x_adv.detach()), y).backward()
        opt.step()

    return run


def conv_layers(flax_model, variables):
    """(input shape, kernel shape, padding) of every `layers.Conv` call in one forward pass."""
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp

    from advjax.models import layers
    found = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.Conv) and context.method_name == "__call__":
            m = context.module
            found.append((tuple(args[0].shape), (*m.kernel_size, args[0].shape[-1], m.features),
                          m.padding, m.impl))
        return next_fun(*args, **kwargs)

    with fnn.intercept_methods(record):
        jax.eval_shape(lambda: flax_model.apply(variables, jnp.zeros((1, 28, 28, 1))))
    return found


def _ms(fn, repeats):
    """Median milliseconds of `repeats` calls of fn after a warm-up (`_bench.interleaved`)."""
    return 1000 * float(np.median(_bench.interleaved({"fn": fn}, repeats)["fn"]))


def profile_convolutions(key, batch, pgd_steps, repeats):
    """The `--profile` table (module docstring)."""
    import jax
    import jax.numpy as jnp

    from advjax.models import layers
    torch = _bench.torch_threads()
    F = torch.nn.functional
    name, fields, label = MODELS[key]
    from advjax import models
    flax_model = models.get_model(name, **fields)
    variables = models.init_variables(flax_model, jax.random.PRNGKey(0), (28, 28, 1))
    impls = {"xla": layers._conv_xla, "explicit_grad": layers._conv_explicit_grad,
             "patches_grad": layers._conv_patches_grad}
    print(_bench.header(f"{label}: the convolutions of one PGD-AT step (PGD-{pgd_steps}), batch "
                        f"{batch}, median of {repeats} calls each"))
    print("| convolution (input -> output) | impl | advjax forward / input grad / kernel grad (ms) | "
          "PyTorch (ms) | advjax per step (ms) | PyTorch per step (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    total = {"advjax": 0.0, "pytorch": 0.0}
    rng = np.random.default_rng(0)
    for i, (shape, kshape, padding, impl) in enumerate(conv_layers(flax_model, variables)):
        shape = (batch, *shape[1:])
        kh, kw, c_in, c_out = kshape
        resolved = layers.resolve_conv_impl(impl, c_in)
        conv = impls[resolved]
        x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
        k = jnp.asarray(rng.standard_normal(kshape, dtype=np.float32) * 0.1)
        out_shape = jax.eval_shape(lambda: layers._conv_xla(x, k, padding)).shape
        g = jnp.asarray(rng.standard_normal(out_shape, dtype=np.float32))
        fwd = jax.jit(lambda a, b: conv(a, b, padding))
        d_in = jax.jit(jax.grad(lambda a, b, c: jnp.vdot(c, conv(a, b, padding)), argnums=0))
        d_k = jax.jit(jax.grad(lambda a, b, c: jnp.vdot(c, conv(a, b, padding)), argnums=1))
        ours = [_ms(lambda: jax.block_until_ready(fwd(x, k)), repeats),
                _ms(lambda: jax.block_until_ready(d_in(x, k, g)), repeats),
                _ms(lambda: jax.block_until_ready(d_k(x, k, g)), repeats)]
        pad = 0 if padding == "VALID" else "same"
        xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        kt = torch.tensor(np.asarray(k)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        gt = torch.tensor(np.asarray(g)).permute(0, 3, 1, 2).contiguous()

        def t_fwd():
            with torch.no_grad():
                F.conv2d(xt, kt, padding=pad)

        def t_grad(wrt):
            def run():
                torch.autograd.grad(F.conv2d(xt, kt, padding=pad), wrt, gt)
            return run

        # The forward is in each gradient's time too; PyTorch's backward alone is the difference.
        t_f = _ms(t_fwd, repeats)
        theirs = [t_f, max(_ms(t_grad(xt), repeats) - t_f, 0.0),
                  max(_ms(t_grad(kt), repeats) - t_f, 0.0)]
        n_fwd, n_in = pgd_steps + 1, pgd_steps + (1 if i > 0 else 0)
        step_ours = n_fwd * ours[0] + n_in * ours[1] + ours[2]
        step_theirs = n_fwd * theirs[0] + n_in * theirs[1] + theirs[2]
        total["advjax"] += step_ours
        total["pytorch"] += step_theirs
        print(f"| {shape[1]}x{shape[2]}x{c_in} -> {c_out}, {kh}x{kw} {padding} | {resolved} | "
              + " / ".join(f"{t:.2f}" for t in ours) + " | "
              + " / ".join(f"{t:.2f}" for t in theirs)
              + f" | {step_ours:.0f} | {step_theirs:.0f} |", flush=True)
    print(f"| all convolutions | | | | {total['advjax']:.0f} | {total['pytorch']:.0f} |")
    print(f"load at the end {_bench.load()}")


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
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=0, help="CPUs for advjax and peers (0: all)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="PGD steps per training step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--profile", action="store_true",
                   help="per-convolution times of each model's step instead (module docstring)")
    args = p.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = set(names) - set(MODELS)
    if unknown:
        p.error(f"unknown --models {sorted(unknown)}; valid: {sorted(MODELS)}")
    if args.profile:
        for key in names:
            profile_convolutions(key, args.batch, args.steps, args.repeats)
        return

    print(_bench.header(f"PGD-AT train step, batch {args.batch}, PGD-{args.steps}, median of "
                        f"{args.repeats} interleaved rounds"))
    sgemm = _bench.sgemm_gflops()
    rate = max(sgemm.values())
    print("sgemm 2048^3: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in sgemm.items())
          + f"; this CPU's rate: {rate:.1f} GFLOP/s")
    print("| model | implementation | ms/step | images/s | ratio to pytorch | GFLOP/s | % sgemm |")
    print("|---|---|---:|---:|---:|---:|---:|")
    skipped = []
    for key in names:
        name, fields, label = MODELS[key]
        adv_run, flax_model, variables = advjax_step_fn(name, fields, args.batch, args.steps)
        runners = {"advjax": adv_run}
        try:
            runners["pytorch"] = torch_step_fn(torch_model(name, fields, flax_model, variables),
                                               args.batch, args.steps)
        except ImportError as e:
            skipped.append(f"{label}: pytorch: {e}")
        if "pytorch" in runners and not args.no_compile:
            try:
                torch = _bench.torch_threads()
                compiled = torch.compile(torch_model(name, fields, flax_model, variables))
                run = torch_step_fn(compiled, args.batch, args.steps)
                run()  # compiles (eval and train graphs); a failure is reported, not fatal
                runners["torch.compile"] = run
            except Exception as e:  # noqa: BLE001
                skipped.append(f"{label}: torch.compile: {type(e).__name__}: "
                               f"{str(e).splitlines()[0][:160]}")
        times = _bench.interleaved(runners, args.repeats)
        flops = (2 * args.steps + 3) * _bench.forward_flops(flax_model, variables, (28, 28, 1))
        med = {k: float(np.median(t)) for k, t in times.items()}
        for k, t in med.items():
            ips = args.batch / t
            ratio = f"{med['pytorch'] / t:.2f}x" if "pytorch" in med else "n/a"
            gflops = flops * ips / 1e9
            print(f"| {label} | {k} | {1000 * t:.1f} | {ips:.1f} | {ratio} | {gflops:.1f} | "
                  f"{100 * gflops / rate:.0f}% |", flush=True)
    for s in skipped:
        print(f"skipped {s}")
    rate_in, what = pipeline_images_per_sec(args.batch)
    if rate_in is None:
        print(f"input pipeline: unavailable ({what})")
    else:
        print(f"input pipeline: {rate_in:,.0f} images/s ({what}, batch {args.batch})")
    print(f"load at the end {_bench.load()}")


if __name__ == "__main__":
    main()
