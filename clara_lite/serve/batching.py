"""Concurrent requests decoded together: a bounded queue feeding ``ClaraIndex.ask_many`` from one worker thread.

Why: on a small model each decoding step costs about the same for one question or eight (fixed costs
dominate), so questions that arrive close together are answered in one batch. The worker takes the
first waiting request, waits at most :data:`WINDOW_S` for others (up to ``max_batch``), and decodes
those that share ``k`` and ``max_new_tokens`` together (greedy decoding: each answer is the one the
request would get alone). The model is not thread-safe: only the worker thread decodes, and the
event loop only waits on a future. A full queue (``max_queue`` waiting) is refused at once
(:class:`Busy`: the server answers 503 with ``Retry-After``).

Streams ride along: each request's ``on_token(token_id)`` gets the tokens of its own row. An
``on_token`` that raises (a client that went away) drops that request from the batch (its future
gets the exception); the others go on; the decoding stops only when every row has been dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..core.hardware import SERVE_BATCH

log = logging.getLogger(__name__)

MAX_BATCH = SERVE_BATCH  # questions decoded together; `clara-lite serve` picks by device (core.hardware)
WINDOW_S = 0.015  # how long the first waiting request waits for others to join its batch
QUEUE_PER_BATCH = 8  # requests allowed to wait: this many batches' worth


class Busy(Exception):
    """The queue is full: retry shortly."""


@dataclass
class Job:
    question: str
    query: str | None
    k: int | None
    max_new_tokens: int
    on_token: Callable[[int], None] | None = None
    future: Future = field(default_factory=Future)
    failed: BaseException | None = None


class _AllDropped(Exception):
    """Every row of a batch has been dropped: stop decoding it."""


class Batcher:
    """Answers ``submit``-ted questions in batches through ``run(work)`` (the server's lock and index refresh)."""

    def __init__(self, index, run: Callable = lambda work: work(), *, max_batch: int = MAX_BATCH,
                 window_s: float = WINDOW_S, max_queue: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch is {max_batch}: at least 1")
        self.index, self.run, self.max_batch, self.window_s = index, run, max_batch, window_s
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue or QUEUE_PER_BATCH * max_batch)
        self.batches: list[int] = []  # the size of each batch decoded (the last 1000), for tests and logs
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="clara-decoder", daemon=True)
        self._thread.start()

    def submit(self, question: str, k: int | None, max_new_tokens: int, *, query: str | None = None,
               on_token: Callable[[int], None] | None = None) -> Future:
        """A future of the :class:`~.index.IndexAnswer`; :class:`Busy` when the queue is full."""
        if self._closed:
            raise Busy("the server is shutting down")
        job = Job(question, query, k, max_new_tokens, on_token)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self.queue.maxsize} requests are already waiting: retry shortly") from None
        return job.future

    def close(self, timeout: float = 30) -> None:
        """Stop the worker once the requests waiting now are answered."""
        self._closed = True
        self.queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, stop = [first], False
            deadline = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch:
                try:
                    job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault((job.k, job.max_new_tokens), []).append(job)
            for group in groups.values():
                self._decode(group)
            if stop:
                return

    def _decode(self, group: list[Job]) -> None:
        group = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not group:
            return
        self.batches = [*self.batches[-999:], len(group)]
        dropped = 0

        def on_token(i: int, token_id: int) -> None:
            nonlocal dropped
            job = group[i]
            if job.on_token is None or job.failed is not None:
                return
            try:
                job.on_token(token_id)
            except BaseException as err:  # noqa: BLE001 - that request's own fault (its client went away)
                job.failed, dropped = err, dropped + 1
                if dropped == len(group):
                    raise _AllDropped from err

        streaming = any(j.on_token is not None for j in group)
        try:
            answers = self.run(lambda: self.index.ask_many(
                [j.question for j in group], group[0].k, max_new_tokens=group[0].max_new_tokens,
                batch_size=len(group), queries=[j.query or j.question for j in group],
                on_token=on_token if streaming else None))
        except _AllDropped:
            answers = [None] * len(group)
        except BaseException as err:  # noqa: BLE001 - handed to each request, which answers it
            for job in group:
                job.future.set_exception(err)
            return
        for job, answer in zip(group, answers, strict=True):
            if job.failed is not None:
                job.future.set_exception(job.failed)
            else:
                job.future.set_result(answer)
