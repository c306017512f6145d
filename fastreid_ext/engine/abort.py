"""Ending every rank of a distributed job when one rank fails, within a bounded time.

A rank whose ``main`` raises prints its traceback (tagged with its rank), publishes an abort record
under :data:`ABORT_KEY` in the job's c10d store (the TCPStore behind the default process group,
hosted by the launcher, rank 0 or the torchrun agent) and exits with :data:`EXIT_FAILED` -- without
a barrier, which the other ranks (busy in a forward pass or an all-reduce) would never reach.

Every rank runs an :class:`AbortWatchdog`: a daemon thread that polls the store and, when another
rank's record appears, logs which rank failed and ends its own process with
:data:`EXIT_PEER_FAILED`. That works wherever the ranks run (one machine, several machines,
torchrun) and does not depend on the collective timeout, which stays long because CPCL's ranks
legitimately wait minutes while rank 0 clusters. If the store itself disappears for longer than
the grace period (the process hosting it died without publishing), the watchdog ends the rank too.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, NoReturn, Optional

import torch.distributed as dist

__all__ = [
    "ABORT_KEY",
    "ABORT_TIMEOUT_ENV",
    "DEFAULT_ABORT_TIMEOUT",
    "EXIT_FAILED",
    "EXIT_PEER_FAILED",
    "AbortTiming",
    "AbortWatchdog",
    "resolve_abort_timeout",
    "fail_rank",
]

logger = logging.getLogger(__name__)

ABORT_KEY = "fastreid_ext/abort"
ABORT_TIMEOUT_ENV = "FASTREID_EXT_ABORT_TIMEOUT"
DEFAULT_ABORT_TIMEOUT = 30.0
EXIT_FAILED = 1
EXIT_PEER_FAILED = 3

# Called with (status, message) just before a rank ends itself, e.g. to close the run record.
ExitCallback = Callable[[str, str], None]


def resolve_abort_timeout(value: Optional[float] = None) -> float:
    """``value``, else ``$FASTREID_EXT_ABORT_TIMEOUT``, else :data:`DEFAULT_ABORT_TIMEOUT` (seconds)."""
    source = "abort timeout"
    if value is None:
        raw = os.environ.get(ABORT_TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_ABORT_TIMEOUT
        source = f"${ABORT_TIMEOUT_ENV}"
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{source} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{source} must be > 0 seconds, got {value}")
    return float(value)


@dataclass(frozen=True)
class AbortTiming:
    """Every delay of the abort protocol, derived from one bound ``timeout`` (seconds): all ranks
    end within about ``timeout`` of the first failure."""

    timeout: float

    @property
    def poll_interval(self) -> float:
        return min(2.0, max(0.2, self.timeout / 20))

    @property
    def store_timeout(self) -> float:
        return max(1.0, self.timeout / 6)

    @property
    def store_loss_grace(self) -> float:
        return self.timeout / 2

    @property
    def linger(self) -> float:
        """How long a failed rank 0 keeps its process (and a store it may host) alive after
        publishing, so the others read the record instead of only losing the store."""
        return min(2 * self.poll_interval + 0.5, self.timeout / 4)

    @property
    def spawn_grace(self) -> float:
        """How long the ``mp.spawn`` parent lets the other ranks end themselves before SIGTERM
        (and again before SIGKILL)."""
        return self.timeout / 3


def flush_logs() -> None:
    """Flush stdout, stderr and every logging handler (``os._exit`` skips all of that)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop the exit
            pass
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            try:
                handler.flush()
            except Exception:
                pass


def _end_process(code: int) -> NoReturn:
    """Kill this process's multiprocessing children (data-loader workers), flush, ``os._exit``.

    The workers would notice the orphaning only after their own poll interval, and they hold the
    launcher's sentinel pipe of this rank open until then, delaying its report."""
    for child in multiprocessing.active_children():
        try:
            child.kill()
        except Exception:
            pass
    flush_logs()
    os._exit(code)


def _log_to_files(message: str) -> None:
    """Write an ERROR record to the log files (not the console) of this module's logger chain;
    the console copy goes to stderr once, so rank 0 does not print the traceback twice."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    current: Optional[logging.Logger] = logger
    while current is not None:
        for handler in current.handlers:
            stream = getattr(handler, "stream", None)
            if stream is not None and stream not in (sys.stdout, sys.stderr):
                handler.handle(record)
        current = current.parent if current.propagate else None


def _announce(message: str) -> None:
    sys.stderr.write(message if message.endswith("\n") else message + "\n")
    _log_to_files(message)
    flush_logs()


class AbortWatchdog:
    """Polls the job's store for another rank's abort record and ends this process when it sees
    one (see the module docstring). ``store`` must be usable from a second thread: pass a
    ``clone()`` of the process group's store, as :meth:`for_default_group` does."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        timing: AbortTiming,
        on_exit: Optional[ExitCallback] = None,
    ) -> None:
        self.store = store
        self.rank = rank
        self.timing = timing
        self.on_exit = on_exit
        self._store_lock = threading.Lock()
        self._exit_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastreid_ext-abort", daemon=True)

    @classmethod
    def for_default_group(
        cls, timing: AbortTiming, on_exit: Optional[ExitCallback] = None
    ) -> Optional[AbortWatchdog]:
        """A watchdog on a clone of the default process group's store (``None``, with a warning,
        where the store cannot be cloned: then only the launcher ends the other ranks)."""
        try:
            store = dist.distributed_c10d._get_default_store().clone()
            store.set_timeout(timedelta(seconds=timing.store_timeout))
        except Exception as exc:
            logger.warning("Abort watchdog disabled: the process group's store: %s", exc)
            return None
        return cls(store, dist.get_rank(), timing, on_exit)

    def start(self) -> AbortWatchdog:
        self._thread.start()
        return self

    def install_sigterm_handler(self) -> Optional[object]:
        """Handle SIGTERM in this (main) thread with :meth:`on_sigterm`; returns the previous
        handler (``None`` outside the main thread, where nothing is installed).

        torchrun's agent and the ``mp.spawn`` parent end the surviving ranks with SIGTERM once
        one rank has failed; without a handler that kill can come before this watchdog's next
        poll, and the run record would keep saying ``running``."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int, frame: object = None) -> NoReturn:
        """Record why this rank ends, then end it: ``aborted`` when another rank has published
        a failure (the usual cause of the signal), else ``interrupted``."""
        reason = self.peer_failure()
        if reason is not None:
            self.abort_now(f"{reason} (then SIGTERM from the launcher)")
        _announce(f"[rank {self.rank}] stopping: received SIGTERM")
        if self.on_exit is not None:
            try:
                self.on_exit("interrupted", "SIGTERM")
            except Exception:
                logger.exception("Could not record the interruption")
        _end_process(128 + int(signum))

    def stop(self, join: bool = True) -> None:
        """Stop watching (normal teardown, or this rank is failing itself)."""
        with self._exit_lock:  # waits for an exit already under way, which never returns
            self._stopped.set()
        if join and self._thread.is_alive():
            self._thread.join(self.timing.store_timeout + self.timing.poll_interval)

    def publish(self, summary: str) -> None:
        """Record this rank's failure for the others; the first failing rank's record wins."""
        payload = json.dumps(
            {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "error": summary}
        )
        with self._store_lock:
            self.store.compare_set(ABORT_KEY, "", payload)

    def _read(self) -> Optional[dict]:
        with self._store_lock:
            if not self.store.check([ABORT_KEY]):
                return None
            return json.loads(self.store.get(ABORT_KEY).decode())

    def peer_failure(self) -> Optional[str]:
        """How another rank's published failure reads (``None``: none, or the store is gone)."""
        try:
            record = self._read()
        except Exception:
            return None
        if record is None or record.get("rank") == self.rank:
            return None
        return (
            f"rank {record.get('rank')} failed on {record.get('host')} "
            f"(pid {record.get('pid')}): {record.get('error')}"
        )

    def _run(self) -> None:
        interval = self.timing.poll_interval
        lost_since: Optional[float] = None
        while not self._stopped.wait(interval):
            try:
                record = self._read()
            except Exception as exc:
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since >= self.timing.store_loss_grace:
                    self._exit(
                        f"the job's store has been unreachable for {now - lost_since:.0f} s "
                        f"({exc}); the process hosting it (the launcher, rank 0 or the torchrun "
                        "agent) has probably died"
                    )
                # back off: a dead store logs a C++ warning on every attempt
                interval = min(interval * 2, self.timing.store_loss_grace / 2)
                continue
            lost_since, interval = None, self.timing.poll_interval
            if record is not None and record.get("rank") != self.rank:
                self._exit(
                    f"rank {record.get('rank')} failed on {record.get('host')} "
                    f"(pid {record.get('pid')}): {record.get('error')}"
                )

    def _exit(self, reason: str) -> None:
        with self._exit_lock:
            if not self._stopped.is_set():
                self.abort_now(reason)

    def abort_now(self, reason: str) -> NoReturn:
        """End this rank because another one failed (``reason`` says which and why)."""
        _announce(f"[rank {self.rank}] stopping: {reason}")
        if self.on_exit is not None:
            try:
                self.on_exit("aborted", reason)
            except Exception:
                logger.exception("Could not record the abort")
        _end_process(EXIT_PEER_FAILED)


def fail_rank(
    exc: BaseException,
    rank: int,
    watchdog: Optional[AbortWatchdog],
    timing: AbortTiming,
    on_exit: Optional[ExitCallback] = None,
) -> NoReturn:
    """Print ``exc``'s traceback tagged with ``rank``, tell the other ranks, end this process.

    No barrier and no process-group teardown: the other ranks may be inside a collective that a
    barrier would never match, and destroying a group with work in flight can block.
    ``os._exit`` also skips interpreter shutdown, which joins non-daemon threads.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    summary = f"{type(exc).__name__}: {exc}"
    if watchdog is not None:
        watchdog.stop(join=False)
        # A rank that failed first and exited breaks the collectives of the others (gloo:
        # "Connection reset by peer"): report that cause, not the consequence.
        peer = watchdog.peer_failure()
        if peer is not None:
            _log_to_files(f"[rank {rank}] error after the failure of another rank:\n{tb}")
            watchdog.abort_now(f"{peer} (then this rank: {summary})")
    _announce(f"[rank {rank}] failed with {summary}\n{tb}")
    if watchdog is not None:
        try:
            watchdog.publish(summary)
        except Exception as store_exc:
            _announce(f"[rank {rank}] could not tell the other ranks: {store_exc}")
    if on_exit is not None:
        try:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            on_exit(status, f"rank {rank}: {summary}")
        except Exception:
            logger.exception("Could not record the failure")
    if watchdog is not None and rank == 0:
        time.sleep(timing.linger)
    _end_process(EXIT_FAILED)
