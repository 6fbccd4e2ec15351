"""Preemption and time limits: stop at the next chunk boundary with a checkpoint, then be requeued.

Slurm sends SIGTERM before it preempts a job, and submitit asks Slurm for its own signal (SIGUSR2,
`SUBMITIT_PREEMPT_SIGNAL`) shortly before the time limit. Left alone, submitit's handler for SIGUSR2
requeues the job and exits at once, wherever training is (the work since the last checkpoint is
lost), and it ignores SIGTERM (the job is killed). While a run trains, `watching()` replaces both
with `_note`, which only records the signal; the training loops look at `requested()` at every
chunk boundary, write a checkpoint there, wait for it, and call `leave()`:

- inside a submitit job, `leave` hands over to submitit's own handler for its signal, which calls
  the Hydra launcher's `checkpoint()` (the same job, same overrides), requeues it (on Slurm with
  `scontrol requeue`; the local executor restarts it on exit code 144) and exits; the requeued job
  continues from the checkpoint (`resume=auto`);
- otherwise it exits with 128 + the signal's number (143 for SIGTERM), as a process killed by that
  signal would, after one line saying how to continue.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

_received: int | None = None  # the signal noted since `watching()` began, if any
_previous: dict[int, object] = {}  # the handlers `watching()` replaced


def _submitit_signal() -> int | None:
    """submitit's preemption/time-limit signal when this process is a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def _note(signum, frame) -> None:
    """The first signal is noted; a second one (someone insisting, or a run still loading its data or
    training its stages, which have no chunk boundary) exits at once, as the default handler would."""
    global _received
    if _received is not None:
        raise SystemExit(128 + signum)
    _received = signum


@contextlib.contextmanager
def watching():
    """Note SIGTERM (and submitit's signal) during the block instead of dying mid-chunk; the
    handlers before it come back afterwards. Does nothing outside the main thread (where Python
    cannot install handlers), where nothing can be noted."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    signals = [signal.SIGTERM] + [s for s in [_submitit_signal()] if s is not None]
    for signum in signals:
        _previous[signum] = signal.signal(signum, _note)
    try:
        yield
    finally:
        for signum in signals:
            signal.signal(signum, _previous.pop(signum))


def requested() -> bool:
    """True once SIGTERM or submitit's signal arrived: checkpoint at this boundary and `leave()`."""
    return _received is not None


def leave(where: str) -> NoReturn:
    """Exit after the checkpoint at `where` (e.g. "step 3000") was written: requeued by submitit
    inside a submitit job, else exit code 128 + signal."""
    signum = _received
    name = signal.Signals(signum).name
    print(f"{name} received: stopped at {where} after writing a checkpoint; the same command (with "
          "resume=auto, the default) continues from it", file=sys.stderr, flush=True)
    requeue_signal = _submitit_signal()
    handler = _previous.get(requeue_signal) if requeue_signal is not None else None
    if callable(handler):  # submitit's checkpoint_and_try_requeue: requeues, then exits
        handler(requeue_signal, None)
    sys.exit(128 + signum)
