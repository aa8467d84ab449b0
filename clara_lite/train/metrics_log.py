"""A stage's metrics as JSON lines, and its loss curve as a PNG.

Append-only while training; on resume, rows after the checkpoint's step are dropped, so a
killed-and-resumed run logs each step once. A failed append (a full disk) never stops training:
the file is cut back to its last whole line and the rows wait in memory for the next append.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "lm_loss", "mse_loss", "segment_loss", "retrieval_loss", "eval_loss")
ANSWER_KEYS = ("eval_em", "eval_f1")  # held-out answer scores, on a second axis (0..1)


class MetricsLog:
    def __init__(self, path: Path, stage: str):
        self.path = Path(path)
        self.stage = stage
        self._rows: list[dict] | None = None
        self._torn = False  # the file holds a line cut by a crash
        self._pending: list[dict] = []  # rows a failed append could not write yet

    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = []
            if self.path.is_file():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        self._rows.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a crash
                        self._torn = True
        return self._rows

    def append(self, row: dict) -> None:
        row = {"stage": self.stage, **row}
        self.rows().append(row)
        self._pending.append(row)
        self.flush()

    def flush(self) -> bool:
        """Write the rows still waiting; False (logged) when the disk refuses them again."""
        if not self._pending:
            return True
        text = "".join(json.dumps(r) + "\n" for r in self._pending)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.is_file() else 0
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as err:
            try:  # never leave half a line: the next append would glue its row to it
                os.truncate(self.path, size)
            except OSError:
                self._torn = True
            log.warning("Could not append to %s (%s): %d metrics rows kept in memory, written with the next "
                        "one", self.path, err, len(self._pending))
            return False
        self._pending = []
        return True

    def truncate_after(self, step: int) -> None:
        rows = self.rows()
        kept = [r for r in rows if r.get("step", 0) <= step]
        self._pending = [r for r in self._pending if r.get("step", 0) <= step]
        if len(kept) != len(rows) or self._torn:  # a torn line would swallow the next appended row
            self._rows, self._torn = kept, False
            self._pending = []  # the rewrite below holds them
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def plot(self, png: Path) -> Path | None:
        """Loss curves against step; None (with a log line) if nothing to plot yet."""
        rows = self.rows()
        if not rows:
            return None
        from matplotlib.figure import Figure  # no pyplot: the notebook's inline backend stays as it is

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for key in LOSS_KEYS:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=key, marker="." if len(points) < 30 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(f"clara_lite {self.stage}")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if any(key in r for r in rows for key in ANSWER_KEYS):  # held-out rows (--eval-data)
            scores = ax.twinx()
            for key, style in zip(ANSWER_KEYS, ("s--", "^--"), strict=True):
                points = [(r["step"], r[key]) for r in rows if key in r]
                scores.plot(*zip(*points, strict=True), style, color="black", alpha=0.6, label=f"held-out {key[5:]}")
            scores.set_ylim(0, 1)
            scores.set_ylabel("held-out EM / F1")
            more = scores.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels)
        fig.tight_layout()
        try:
            fig.savefig(png, dpi=100)
        except OSError as err:  # a plot is never worth stopping training for
            log.warning("Could not write %s: %s", png, err)
            return None
        return png
