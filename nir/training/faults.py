"""What a run does when the world interferes: a signal (preemption, Ctrl-C, SLURM's warning), a
second run in the same directory. No Lightning here; :class:`nir.training.guards.InterruptCheckpoint`
is the training loop's side of :class:`SignalCatcher`.

Exit statuses of ``nir-train`` (docs/troubleshooting.md): 0 done; 1 an unexpected error (a bug:
a traceback); 2 bad input, a corrupt file, a run directory in use, a diverged run; 74 a file that
could not be written (``EX_IOERR``: no space left, an I/O error); 128 + N interrupted by signal N
after checkpointing (130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM); after a sweep, the number of failed jobs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from nir.errors import NirError

#: the signals a run checkpoints on: preemption (SLURM, Kubernetes, kill), Ctrl-C, SLURM's warning
#: signal (``#SBATCH --signal=USR1@120``, which Lightning's SLURM auto-requeue also answers)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
LOCK_NAME = ".nir-lock"


class Interrupted(NirError):
    """A run stopped by a signal after writing its checkpoint; ``exit_status`` is 128 + N."""

    def __init__(self, signum: int, step: int, max_steps: int, checkpoint: Path, run_dir: Path) -> None:
        self.signum, self.step, self.checkpoint = int(signum), int(step), Path(checkpoint)
        self.exit_status = 128 + self.signum
        name = signal.Signals(self.signum).name
        super().__init__(
            f"interrupted by {name} at step {step} of {max_steps}; checkpoint {str(checkpoint)!r} saved; "
            f"resume with resume=last hydra.run.dir={run_dir} (or resume=auto)"
        )


def signals_to_catch() -> tuple[int, ...]:
    """:data:`SIGNALS`, less SIGUSR1 inside a SLURM job: there Lightning's auto-requeue answers
    it (it saves ``hpc_ckpt_N.ckpt`` and requeues the job), and nir checkpoints on the SIGTERM
    that SLURM sends when it stops the job (docs/troubleshooting.md). A SLURM job is told as
    Lightning's ``SLURMEnvironment.detect`` tells it (``SLURM_NTASKS`` set, and not an
    interactive ``bash`` / ``interactive`` job), without importing Lightning for it."""
    import os

    slurm = "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    return tuple(s for s in SIGNALS if not (s == signal.SIGUSR1 and slurm))


class SignalCatcher:
    """Turns SIGTERM, SIGINT and SIGUSR1 (``signals``) into a flag the training loop reads after
    each step (:attr:`signum`), so the run stops at a step boundary with a checkpoint instead of
    dying mid-step. A second Ctrl-C while the first is being handled raises ``KeyboardInterrupt``
    at once. Only in the main thread (Python delivers signals there); elsewhere it does nothing.
    The previous handlers come back on exit.

    Lightning wraps the SIGTERM handler when ``fit`` starts, and its wrapper raises
    ``SIGTERMException`` (exit status 0, no checkpoint) after the step; :meth:`reclaim`, called
    when training starts, puts nir's handlers back for the run."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signum: int | None = None
        self.signals = tuple(signals)
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def reclaim(self) -> None:
        """Install nir's handlers again (after Lightning replaced the SIGTERM one)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                signal.signal(s, self._handle)

    def __getstate__(self) -> dict[str, Any]:  # DDP-spawn workers get the flag, not the handlers
        return {"signum": self.signum, "signals": self.signals, "_previous": {}}

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


class RunLock:
    """One live run per run directory: an exclusive ``flock`` on ``<run dir>/.nir-lock`` for the
    run's lifetime. The kernel drops the lock when its process dies, however it dies, so a lock
    file left by a dead run is taken over (with one line); a live holder makes a second run stop
    with one line before it writes anything. The file names its holder (pid, host, start time)
    for those messages."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a line to print when a stale lock was taken over."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a full disk, a read-only directory: one line, as every write
            from nir.checkpoint import WriteError

            raise WriteError(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise NirError(
                f"run directory {str(self.path.parent)!r} is in use by a live run ({holder}); wait for it to end "
                "or choose another hydra.run.dir"
            ) from None
        stale = _read_holder(fd)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        with contextlib.suppress(OSError):  # the lock holds without its note (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        self._fd = fd
        if stale != "unknown holder":
            return f"nir: taking over the lock of a run that ended without releasing it ({stale}): {self.path}"
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # released cleanly: the next run sees an empty lock file
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown holder"


@contextlib.contextmanager
def run_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """:class:`RunLock` held around a block (only where ``enabled``: rank 0 of a run)."""
    if not enabled:
        yield
        return
    lock = RunLock(run_dir)
    line = lock.acquire()
    if line:
        print(line, flush=True)
    try:
        yield
    finally:
        lock.release()
