"""Multi-host start-up on JAX's own runtime (`jax.distributed`).

`maybe_initialize(config)` calls `jax.distributed.initialize` once per process when
config.distributed asks for it:
  * coordinator_address / num_processes / process_id given explicitly (localhost tests, bare hosts), or
  * auto = True: JAX's auto-detection (TPU pods, SLURM, ...), `jax.distributed.initialize()` with no
    arguments.
With neither, the run is single-process and nothing happens.
"""

from __future__ import annotations

import jax

_initialized = False


def maybe_initialize(config) -> bool:
    """Initializes the distributed runtime if configured; returns True if this process is distributed."""
    global _initialized
    dist = config.get("distributed") if hasattr(config, "get") else None
    if dist is None or _initialized:
        return _initialized
    if dist.get("coordinator_address"):
        kwargs = dict(coordinator_address=dist.coordinator_address,
                      num_processes=dist.num_processes, process_id=dist.process_id)
        if dist.get("initialization_timeout"):
            kwargs["initialization_timeout"] = dist.initialization_timeout
        if dist.get("cpu_collectives"):
            jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
        jax.distributed.initialize(**kwargs)
        _initialized = True
    elif dist.get("auto"):
        jax.distributed.initialize()
        _initialized = True
    return _initialized
