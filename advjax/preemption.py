"""Preemption as an orderly exit: SIGTERM / SIGINT stop training at a step boundary.

Cloud and TPU VMs are preempted with SIGTERM (usually with a grace period of ~30 s), and Ctrl-C
sends SIGINT. While `StopSignal` is installed (the training loop), the first of these signals only
records a request; the loop finishes the step in flight, writes the pending metrics row and a
checkpoint, and raises `Preempted`, which `advjax train` reports in one line and turns into exit
status `EXIT_PREEMPTED` (75, EX_TEMPFAIL of sysexits.h: "try again later"; rerunning the same
command resumes). A second signal exits at once with status 128 + signal number, as a shell reports
a process killed by that signal.

Multi-host: the processes may receive the signal at different steps. `StopSignal.agreed()` is
called once per step by every process; with more than one process it takes the logical OR of the
local requests over all processes (a small all-gather), so every process stops after the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import numpy as np

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped by a signal after `step`, with a checkpoint written at that step."""

    def __init__(self, step: int, signal_name: str, workdir: str):
        self.step, self.signal_name, self.workdir = step, signal_name, workdir
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint and metrics saved "
                         f"in {workdir}; rerun the same command to resume")


class StopSignal:
    """Context manager: SIGTERM / SIGINT handlers that record a stop request (see module docstring).

    Installs nothing outside the main thread (Python only delivers signals there), where `requested`
    stays None and training runs as before.
    """

    def __init__(self, signals=SIGNALS):
        self.signals = signals
        self.requested: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            sys.stderr.write(f"\nadvjax: second signal ({name}): exiting now without a checkpoint\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.requested = name
        sys.stderr.write(f"\nadvjax: {name} received: finishing the current step, then saving a "
                         f"checkpoint (send it again to exit at once)\n")
        sys.stderr.flush()

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def agreed(self) -> Optional[str]:
        """The signal name if any process was asked to stop (every process must call this at the
        same step), else None."""
        import jax
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        if not np.any(flags):
            return None
        return self.requested or "a signal on another process"
