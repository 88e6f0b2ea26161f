"""Multi-host start-up on JAX's own runtime (`jax.distributed`), and helpers for multi-process runs.

`maybe_initialize(config)` calls `jax.distributed.initialize` once per process when
config.distributed asks for it:
  * coordinator_address / num_processes / process_id given explicitly (localhost tests, bare hosts), or
  * auto = True: JAX's auto-detection (TPU pods, SLURM, Open MPI, Kubernetes), i.e.
    `jax.distributed.initialize()` without an address.
With neither, the run is single-process and nothing happens.

Failure detection. Every process sends heartbeats to the coordination service (hosted by process 0);
a process that misses them for `heartbeat_timeout` seconds is declared dead and the service reports
the error to every other process, whose runtime then terminates it with a non-zero exit status
(XLA's coordination client aborts the process). If process 0 itself dies, the others lose the service
and abort after the same timeout. So a dead process makes the others fail within about
`heartbeat_timeout` seconds (plus one heartbeat interval) instead of hanging in a collective;
restarting all of them with the same command resumes from the last checkpoint.
"""

from __future__ import annotations

from typing import Any, Dict

import jax

_initialized = False


def _initialize_kwargs(dist) -> Dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize` from config.distributed (timeouts only
    when set, so JAX's defaults apply otherwise)."""
    kwargs: Dict[str, Any] = {}
    if dist.get("coordinator_address"):
        kwargs.update(coordinator_address=dist.coordinator_address,
                      num_processes=int(dist.num_processes), process_id=int(dist.process_id))
    timeouts = (("initialization_timeout", "initialization_timeout"),
                ("heartbeat_timeout", "heartbeat_timeout_seconds"),
                ("shutdown_timeout", "shutdown_timeout_seconds"))
    for config_key, jax_key in timeouts:
        if dist.get(config_key):
            kwargs[jax_key] = int(dist[config_key])
    return kwargs


def maybe_initialize(config: Any) -> bool:
    """Initializes the distributed runtime if configured; returns True if this process is distributed.

    Must run before anything touches a JAX backend (the CPU collectives choice and the process
    topology are fixed when the backend starts). Idempotent.
    """
    global _initialized
    dist = config.get("distributed") if hasattr(config, "get") else None
    if dist is None or _initialized:
        return _initialized
    if not (dist.get("coordinator_address") or dist.get("auto")):
        return False
    if dist.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
    jax.distributed.initialize(**_initialize_kwargs(dist))
    _initialized = True
    return True


def is_lead() -> bool:
    """True on the process that writes shared outputs (metrics, eval tables, config.json)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
