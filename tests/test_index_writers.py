"""Index writers are exclusive and crash-safe (issue 24, High 2 and Medium 4).

A kill at every write point of build, add and remove (an exception the code cannot catch, raised by
the real ``os.fsync`` / ``os.replace`` / ``os.unlink`` at their n-th call), then the same command again:
the folder is byte for byte the one an uninterrupted run writes. Two writers at once: never both
succeed unless both sets of documents are in the index, and every chunk keeps its own memory.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading

import pytest
import torch
from test_index import corpus, folder_files, served_model

from clara_lite.serve.documents import documents_from
from clara_lite.serve.index import ClaraIndex
from clara_lite.train.lock import RunLocked

WRITES = ("fsync", "replace", "unlink")
OPTIONS = dict(keys=(), group_docs=2, part_rows=2, progress=False)


class Killed(BaseException):
    """What a kill -9 is to the code: nothing catches it, no cleanup but ``finally`` blocks runs."""


class KillAt:
    """Raise :class:`Killed` at the ``n``-th write call of the index code (None: only count them).

    The lock's own writes are not counted: its crashes are tests/test_lock.py's.
    """

    def __init__(self, monkeypatch, n: int | None):
        self.n, self.calls, self.fired = n, 0, None
        for name in WRITES:
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_globals.get("__name__") == "clara_lite.train.lock":
                    return real(*args, **kwargs)
                frame = frame.f_back
            if self.fired is None:
                self.calls += 1
                if self.calls == self.n:
                    self.fired = f"{name} #{self.n}"
                    raise Killed(self.fired)
            return real(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def model():
    return served_model()


FIRST, SECOND = corpus(5, seed=40), corpus(3, seed=41)


def _build(path, model):
    ClaraIndex.build(path, model, FIRST, **OPTIONS)


def _add(path, model):  # what `clara-lite index add` does
    ClaraIndex.resume(path, model, progress=False).add(SECOND, progress=False)


GONE = [d.source for d in documents_from(FIRST)[1:4]]  # shrinks the group of docs 0-1, drops that of 2-3


def _remove(path, model):  # `clara-lite index remove`, whose rerun finds what the killed one finished removed
    index = ClaraIndex.resume(path, model, progress=False)
    left = [s for s in GONE if s in {c.source for c in index.chunks}]
    if left:
        index.remove(left)


@pytest.mark.parametrize("op, start", [(_build, None), (_add, _build), (_remove, _add)],
                         ids=["build", "add", "remove"])
def test_a_kill_at_every_write_point_then_a_rerun_gives_the_uninterrupted_index(tmp_path, model, monkeypatch,
                                                                                op, start):
    base = tmp_path / "base"
    if start is not None:
        if start is _add:
            _build(base, model)
        start(base, model)
    else:
        base.mkdir()
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    with monkeypatch.context() as m:
        counter = KillAt(m, None)
        op(reference, model)
    expected, points = folder_files(reference), counter.calls
    assert points >= 8 and "index.lock" not in expected and "manifest.json" in expected
    for n in range(1, points + 1):
        work = tmp_path / f"kill-{n}"
        shutil.copytree(base, work)
        with monkeypatch.context() as m:
            killer = KillAt(m, n)
            with pytest.raises(Killed):
                op(work, model)
        assert killer.fired, n
        op(work, model)  # the same command again
        assert folder_files(work) == expected, f"killed at {killer.fired}"
        shutil.rmtree(work)
    print(f"\n{op.__name__[1:]}: killed at each of {points} write points, every rerun identical")


def test_two_adds_at_once_never_both_succeed_unless_both_sets_are_in(tmp_path, model):
    base = tmp_path / "kb"
    ClaraIndex.build(base, model, FIRST, **OPTIONS)
    sets = {"a": corpus(4, seed=50), "b": corpus(4, seed=51)}
    sources = {name: {d.source for d in documents_from(docs)} for name, docs in sets.items()}
    reference = ClaraIndex.build(tmp_path / "all", model, FIRST + sets["a"] + sets["b"], **OPTIONS)
    want = dict(zip([c.id for c in reference.chunks], reference.memory_rows(range(len(reference.chunks))),
                    strict=True))
    outcomes = {"ok": 0, "refused": 0}
    for round_ in range(4):
        kb = tmp_path / f"round-{round_}"
        shutil.copytree(base, kb)
        views = {name: ClaraIndex.load(kb, model) for name in sets}  # both opened before either writes
        start, results = threading.Barrier(2), {}

        def add(name, views=views, start=start, results=results):
            start.wait()
            try:
                views[name].add(sets[name], progress=False)
                results[name] = "ok"
            except RunLocked as err:
                results[name] = err

        threads = [threading.Thread(target=add, args=(name,)) for name in sets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = ClaraIndex.load(kb, model, verify_files=True)
        have = {c.source for c in final.chunks}
        for name, result in results.items():
            outcomes["ok" if result == "ok" else "refused"] += 1
            assert (result == "ok") == (sources[name] <= have), (name, result)
            if result != "ok":
                assert "index.lock" in str(result) or "is in use by process" in str(result), result
                assert "run the command again" in str(result), result
        assert "ok" in results.values()
        memory = final.memory_rows(range(len(final.chunks)))
        for chunk, row in zip(final.chunks, memory, strict=True):  # each chunk's text over its own memory
            assert torch.allclose(row.float(), want[chunk.id].float(), atol=1e-2), chunk.source
        for name, result in results.items():  # the refused one, run again, adds its set
            if result != "ok":
                ClaraIndex.load(kb, model).add(sets[name], progress=False)
        assert {c.source for c in ClaraIndex.load(kb, model).chunks} == {c.source for c in reference.chunks}
    print(f"\ntwo adds at once, 4 rounds: {outcomes}")
