"""Images -> a vision model's descriptions, written into their documents where the images are.

Extraction leaves an ``[IMAGE_REF]`` in a page's text for each of its images; here each one is
replaced by ``[Image: <description>]``, so the description is chunked, summarized and asked about
with the text around it (a chart with the paragraph that discusses it). An image file beside the
documents is a document of its own whose text is its description.

Self-healing: every image goes through :func:`.images.prepare_image` first (checked, converted
to what the endpoint reads, or skipped with the reason), and an image the endpoint still refuses
(HTTP 400, 413, 415, 422) is skipped with the endpoint's reason. Neither stops the run; only
what concerns every image (a bad key, the endpoint down) does, and a rerun resumes.

Resumable: ``images.jsonl`` keeps one row per image (its content hash, the model and the prompt)
with the description or the reason it was skipped, written as soon as it is known. A rerun asks
nothing about an image already there, so it makes no request at all when every image is done.

For example::

    pages, report = describe_pages(pages, "out/images.jsonl", OpenAICompatible.from_env("gpt-4o-mini"))
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import prompts
from .generators import GeneratorError
from .images import ImageLimits, ImageSkipped, prepare_image
from .records import Page, dumps, fill_images, recover_appended

log = logging.getLogger(__name__)

DESCRIPTION = "[Image: {description}]"
IMAGE_FAULT_STATUSES = {400, 413, 415, 422}  # the endpoint refused this image, not the run


@dataclass(frozen=True)
class VisionConfig:
    """How images are described."""

    prompt_file: str | None = None  # a prompt file; None: the shipped prompts/image.txt
    max_tokens: int = 512
    limits: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class ImageReport:
    """Counts over distinct images (an image shown by two documents counts once)."""

    images: int = 0  # distinct images with a file
    described: int = 0  # with a description in their documents (this run or an earlier one)
    requested: int = 0  # vision calls made by this run
    converted: list[dict] = field(default_factory=list)  # {"image", "source", "changes"}
    skipped: list[dict] = field(default_factory=list)  # {"image", "source", "reason"}
    without_file: int = 0  # references to images that were not saved (a remote URL)
    without_vision: int = 0  # not described: no vision model configured

    def format(self) -> str:
        if self.without_vision:
            return f"images: {self.without_vision} not described (no vision model; set CLARA_VLM_MODEL)"
        text = (f"images: {self.described} of {self.images} described ({self.requested} requests this run), "
                f"{len(self.converted)} converted, {len(self.skipped)} skipped")
        return text + "".join(f"\n  skipped {s['image']} ({s['source']}): {s['reason']}" for s in self.skipped)


def _key(data: bytes, model: str, prompt: str) -> str:
    """The same image, model and prompt: the same description, so it is asked for once."""
    return hashlib.sha256(b"\0".join([data, model.encode(), prompt.encode()])).hexdigest()[:24]


def _describe(vision, path: Path, prompt: str, config: VisionConfig) -> tuple[dict, bool]:
    """``({"description"} or {"reason"}, with "changes" when converted; whether the endpoint was asked)``."""
    try:
        prepared = prepare_image(path, config.limits)
    except ImageSkipped as err:
        return {"reason": str(err)}, False
    row = {"changes": prepared.changes} if prepared.changes else {}
    try:
        reply = vision.describe_image(prepared.data, prompt, max_tokens=config.max_tokens, mime=prepared.mime)
    except GeneratorError as err:
        if err.status not in IMAGE_FAULT_STATUSES:
            raise  # a bad key, a dead endpoint: every image would fail; stop, rerun resumes
        return {**row, "reason": f"refused by the vision endpoint: {str(err).split(': ', 1)[-1][:200]}"}, True
    description = " ".join(reply.split())
    return ({**row, "description": description} if description else {**row, "reason": "empty description"}), True


def describe_pages(pages: list[Page], cache: str | Path, vision=None, config: VisionConfig = VisionConfig(), *,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[Page], ImageReport]:
    """Pages with every image placeholder replaced by its description (or removed), and a report;
    pages left without text (an image file that was not described) are dropped.

    ``vision`` is an :class:`.OpenAICompatible` vision model; without one, placeholders are
    removed and nothing is read. ``cache`` (``images.jsonl``) is appended to as images are done.
    """
    report = ImageReport()
    files: dict[str, Path] = {}  # path -> file, in first-seen order
    for page in pages:
        for image in page.images:
            if image.get("path"):
                files.setdefault(image["path"], Path(image["path"]))
            else:
                report.without_file += 1
    if vision is None:
        report.without_vision = len(files)
        return _kept([replace(p, text=fill_images(p.text)) for p in pages]), report

    prompt = prompts.load("image", config.prompt_file)
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    known = {row["key"]: row for row in recover_appended(cache)}
    results: dict[str, dict] = {}  # path -> cache row
    owner = {i["path"]: (p.source, i["name"]) for p in reversed(pages) for i in p.images if i.get("path")}
    with cache.open("a", encoding="utf-8") as fh:
        for n, (path, file) in enumerate(files.items()):
            try:
                data = file.read_bytes()
            except OSError as err:
                results[path] = {"reason": f"cannot be read ({err.strerror or err})"}
                continue
            key = _key(data, vision.name, prompt)
            if key not in known:
                source, name = owner[path]
                row, asked = _describe(vision, file, prompt, config)
                known[key] = {"key": key, "source": source, "image": name, **row}
                report.requested += asked
                fh.write(dumps(known[key]) + "\n")
                fh.flush()
                os.fsync(fh.fileno())  # a killed run asks again for at most the image in flight
            results[path] = known[key]
            if progress is not None:
                progress(n + 1, len(files))
    report.images = len(files)
    for path, row in results.items():
        source, name = owner[path]
        if row.get("changes"):
            report.converted.append({"image": name, "source": source, "changes": row["changes"]})
        if "description" in row:
            report.described += 1
        else:
            report.skipped.append({"image": name, "source": source, "reason": row["reason"]})

    def fills(page: Page) -> list[str | None]:
        rows = [results.get(i.get("path", "")) or {} for i in page.images]
        return [DESCRIPTION.format(description=r["description"]) if "description" in r else None for r in rows]

    described = _kept([replace(p, text=fill_images(p.text, fills(p))) for p in pages])
    log.info("%s", report.format())
    return described, report


def _kept(pages: list[Page]) -> list[Page]:
    """Pages with text: an image file beside the documents that was not described has none."""
    return [p for p in pages if p.text.strip()]
