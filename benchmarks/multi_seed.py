"""Several seeds in one process (config.train.seeds = K): training images/s for K = 1, 3, 5 replicas.

The study protocol's model and objective (`configs/pgd_at_fmnist.py`: CNN-4C3F 16/32/128 on 28x28x1,
PGD-10 linf random start, SGD with momentum and weight decay), batch 128 per replica, synthetic
images (the input pipeline is not what is measured: `benchmarks/input_pipeline.py`). Each way of
stepping K replicas runs the training loop's own compiled programs (`advjax.train`):

  single      K = 1: `compile_step`, the program of a single-seed run (the baseline)
  sequential  `compile_keyed_step` called once per replica per step (train.seeds_mode="sequential";
              the default on CPU): the single-seed program, dispatched K times
  vmap        `compile_replicas_step`, one vmapped program (train.seeds_mode="vmap"; the default on
              GPU / TPU)
  --alternatives adds two ways that the loop does not offer, to show why:
  unrolled    the K replicas as K copies of the step in one jitted program
  lax.map     `lax.map` of the step over the replicas in one program (a loop inside XLA)

All rows run in this process, interleaved (`--repeats` rounds of every row), so a load change hits
them alike; the load average is printed before and after. images/s counts all K replicas; "vs K=1"
is images/s over the single-seed program's.

    python benchmarks/multi_seed.py [--seeds 1,3,5] [--steps 2] [--repeats 3] [--alternatives]
        [--threads 0|1] [--hlo]

--threads 1 runs XLA:CPU on one thread (as the studies do, `experiments/study.py`); --hlo prints the
convolutions of the vmapped program (grouped: feature_group_count = K); --convs times why: each
CNN-4C3F convolution with its input and kernel gradients (the layers' own implementations), for K
replicas as K plain convolutions in one program against the same under jax.vmap (grouped).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def load_protocol_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location("pgd_at_fmnist",
                                                  os.path.join(ROOT, "configs", "pgd_at_fmnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_runners(k: int, batch: int, alternatives: bool, hlo: bool):
    """{row name: fn running one training step of k replicas and waiting for it}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advjax import train

    from advjax import objectives

    # The pieces `train.build` makes, without loading the dataset (469 = 60000 // 128 steps/epoch).
    config = load_protocol_config()
    model = train.make_model(config, 10)
    objective = objectives.make_objective(config.objective.name, model.apply,
                                          train._kwargs(config.objective))
    tx, _ = train.make_optimizer(config.optim, 469, config.train.epochs)
    mesh = train.make_mesh(jax.local_devices()[:1])
    probe_every = config.train.log_every
    states, keys = [], []
    for seed in range(k):
        init_key, base_key = jax.random.split(jax.random.PRNGKey(seed))
        states.append(train.create_train_state(model, objective, tx, init_key, (28, 28, 1)))
        keys.append(base_key)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.random((batch, 28, 28, 1), dtype=np.float32),
                "label": rng.integers(0, 10, batch).astype(np.int32)} for _ in range(k)]
    runners = {}

    if k == 1:
        step = train.compile_step(objective, keys[0], mesh, probe_every=probe_every)
        holder = [train.replicate(states[0], mesh)]
        batch0 = train.shard_batch(batches[0], mesh)

        def single():
            holder[0], metrics = step(holder[0], batch0)
            jax.block_until_ready(metrics)

        runners["single"] = single
        return runners

    keyed = train.compile_keyed_step(objective, mesh, probe_every=probe_every)
    seq_states = [train.replicate(s, mesh) for s in states]
    seq_keys = [train.replicate(np.asarray(kk), mesh) for kk in keys]
    seq_batches = [train.shard_batch(bb, mesh) for bb in batches]

    def sequential():
        out = []
        for i in range(k):
            seq_states[i], metrics = keyed(seq_states[i], seq_batches[i], seq_keys[i])
            out.append(metrics)
        jax.block_until_ready(out)

    runners["sequential"] = sequential

    vstep = train.compile_replicas_step(objective, mesh, probe_every=probe_every)
    stacked = [train.replicate(train.stack_states(states), mesh)]
    vkeys = train.replicate(np.stack([np.asarray(kk) for kk in keys]), mesh)
    sharding = train.replicas_batch_sharded(mesh)
    vbatch = {name: jax.make_array_from_process_local_data(
        sharding, np.stack([bb[name] for bb in batches])) for name in batches[0]}

    def vmapped():
        stacked[0], metrics = vstep(stacked[0], vbatch, vkeys)
        jax.block_until_ready(metrics)

    runners["vmap"] = vmapped
    if hlo:
        text = vstep.lower(stacked[0], vbatch, vkeys).compile().as_text()
        convs = [l.strip() for l in text.splitlines() if " convolution(" in l]
        print(f"K={k}: {len(convs)} convolutions in the vmapped program, "
              f"{sum('feature_group_count' in c or 'batch_group_count' in c for c in convs)} "
              f"of them grouped; e.g.\n  " + "\n  ".join(c[:240] for c in convs[:3]), flush=True)

    if alternatives:
        one = functools.partial(train.train_step, objective=objective)

        def unrolled_fn(st, bt, ks):
            outs = [one(jax.tree_util.tree_map(lambda a: a[i], st),
                        jax.tree_util.tree_map(lambda a: a[i], bt), base_key=ks[i])
                    for i in range(k)]
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)

        def map_fn(st, bt, ks):
            return jax.lax.map(lambda a: one(a[0], a[1], base_key=a[2]), (st, bt, ks))

        for name, fn in (("unrolled", unrolled_fn), ("lax.map", map_fn)):
            jitted = jax.jit(fn, donate_argnums=(0,))
            holder = [jax.device_put(train.stack_states(states))]
            bt = {n: jnp.asarray(np.stack([bb[n] for bb in batches])) for n in batches[0]}
            ks = jnp.stack([jnp.asarray(kk) for kk in keys])

            def run(jitted=jitted, holder=holder, bt=bt, ks=ks):
                holder[0], metrics = jitted(holder[0], bt, ks)
                jax.block_until_ready(metrics)

            runners[name] = run
    return runners


def time_convolutions(k: int, batch: int, repeats: int) -> None:
    """Prints ms for forward + input and kernel gradients of each CNN-4C3F (16, 32) convolution on
    28x28 inputs, for k replicas: k plain convolutions in one program vs one vmapped (grouped)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from advjax.models import layers

    rng = np.random.default_rng(0)
    cases = [(28, 1, 16, layers._conv_patches_grad), (26, 16, 16, layers._conv_explicit_grad),
             (12, 16, 32, layers._conv_explicit_grad), (10, 32, 32, layers._conv_explicit_grad)]
    print(f"| convolution (H, C_in -> C_out), K={k}, batch {batch} | K plain (ms) | vmapped "
          f"(ms) | vmapped / plain |")
    print("|---|---:|---:|---:|")
    for hw, c_in, c_out, conv in cases:
        x = jnp.asarray(rng.random((k, batch, hw, hw, c_in), dtype=np.float32))
        w = jnp.asarray(0.1 * rng.standard_normal((k, 3, 3, c_in, c_out), dtype=np.float32))

        def grads(x, w, conv=conv):
            return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, "VALID"))), (0, 1))(x, w)

        fns = {"plain": jax.jit(lambda x, w: [grads(x[i], w[i]) for i in range(k)]),
               "vmap": jax.jit(jax.vmap(grads))}
        times = {name: [] for name in fns}
        for fn in fns.values():
            jax.block_until_ready(fn(x, w))
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(x, w))
                times[name].append(time.perf_counter() - start)
        plain, vm = (1000 * float(np.median(times[n])) for n in ("plain", "vmap"))
        print(f"| {hw}x{hw}, {c_in} -> {c_out} | {plain:.0f} | {vm:.0f} | {vm / plain:.2f} |",
              flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,3,5", help="comma-separated replica counts K")
    p.add_argument("--batch", type=int, default=128, help="batch per replica")
    p.add_argument("--steps", type=int, default=2, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--alternatives", action="store_true",
                   help="also time unrolled and lax.map programs (for K > 1)")
    p.add_argument("--threads", type=int, default=0, choices=(0, 1),
                   help="1: XLA:CPU on one thread; 0: XLA's default")
    p.add_argument("--hlo", action="store_true", help="print the vmapped program's convolutions")
    p.add_argument("--convs", action="store_true",
                   help="only time single convolutions, plain vs vmapped, for the largest K")
    args = p.parse_args()
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false").strip()
    import jax
    import numpy as np

    counts = [int(x) for x in args.seeds.split(",")]
    if args.convs:
        load = os.getloadavg()[0]
        time_convolutions(max(counts), args.batch, args.repeats)
        print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        return
    load_start = os.getloadavg()
    rows = {}
    t0 = time.perf_counter()
    for k in counts:
        for name, fn in make_runners(k, args.batch, args.alternatives, args.hlo).items():
            fn()  # compile and warm up
            rows[(k, name)] = fn
    compile_seconds = time.perf_counter() - t0
    times = {key: [] for key in rows}
    for _ in range(args.repeats):
        for key, fn in rows.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[key].append((time.perf_counter() - start) / args.steps)
    load_end = os.getloadavg()
    base = None
    print(f"PGD-AT train step of K replicas, CNN-4C3F (16, 32 / 128), batch {args.batch} per "
          f"replica, PGD-10; {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"threads={'1' if args.threads == 1 else 'XLA default'}; median of {args.repeats} x "
          f"{args.steps} steps; load average {load_start[0]:.1f} -> {load_end[0]:.1f} "
          f"(warm-up and compilation {compile_seconds:.0f} s)")
    print("| K | how | ms per step of all K | images/s | vs K=1 |")
    print("|---:|---|---:|---:|---:|")
    for (k, name), ts in times.items():
        med = float(np.median(ts))
        ips = k * args.batch / med
        if k == 1 and base is None:
            base = ips
        ratio = f"{ips / base:.2f}x" if base else ""
        print(f"| {k} | {name} | {1000 * med:.0f} | {ips:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
