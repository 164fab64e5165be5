"""The inference worker: one thread that runs model work in order, so the event loop never
waits on the model; jobs can be cancelled before they start or between tokens."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobCancelled(Exception):
    """The job was cancelled before the worker started it."""


@dataclass(eq=False)
class Job(Generic[T]):
    """Work for the worker thread, and the future its result settles on the event loop."""

    work: Callable[[Job[T]], T]
    future: asyncio.Future[T]
    flag: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the work to stop: skipped if not started, else stopped at its next check."""
        self.flag.set()

    @property
    def cancelled(self) -> bool:
        return self.flag.is_set()


@dataclass
class QueueStats:
    """How deep the job queue is and has been: cancelled jobs wait in it until the worker
    skips them, so the high-water mark shows whether superseding keeps it bounded."""

    queued: int = 0  # jobs submitted and not started (skipped ones included)
    queued_max: int = 0
    submitted: int = 0
    skipped: int = 0  # cancelled before they started
    failed: int = 0  # raised an exception


class InferenceWorker:
    """A thread that owns the model and runs jobs one at a time, in submission order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "inference") -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the stats are counted from both threads
        self.stats = QueueStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Job[T]], T]) -> Job[T]:
        """Queue `work`, called on the worker thread with its Job (to poll `cancelled`)."""
        job: Job[T] = Job(work, self._loop.create_future())
        job.future.add_done_callback(_mark_retrieved)
        with self._lock:
            stats = self.stats
            stats.submitted += 1
            stats.queued += 1
            stats.queued_max = max(stats.queued_max, stats.queued)
        self._jobs.put(job)
        return job

    def waiting(self) -> bool:
        """Whether jobs are queued behind the running one (work that yields polls this)."""
        with self._lock:
            return self.stats.queued > 0

    def snapshot(self) -> QueueStats:
        with self._lock:
            return replace(self.stats)

    def stop(self) -> None:
        """Let the thread end after the jobs already queued."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self.stats.queued -= 1
                self.stats.skipped += job.cancelled
            if job.cancelled:
                self._settle(job.future, None, JobCancelled())
                continue
            try:
                result = job.work(job)
            except Exception as error:  # delivered to the awaiting handler, which reports it
                log.debug("job failed", exc_info=True)
                with self._lock:
                    self.stats.failed += 1
                self._settle(job.future, None, error)
            else:
                self._settle(job.future, result, None)

    def _settle(self, future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("event loop closed; result dropped")


def _resolve(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    """Settle a future unless it already is (superseded or cancelled on the loop)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """Nobody may wait for an abandoned job: its failure is logged, not warned about at exit."""
    if not future.cancelled():
        future.exception()
