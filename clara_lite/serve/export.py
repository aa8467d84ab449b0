"""A trained run as one zip, with a model card and a manifest of hashes, ready to share.

    <run>-<stage>.zip
        adapters/<name>/adapter_config.json + adapter_model.safetensors
        added_tokens.safetensors   clara_config.json   tokenizer/...      (as ``save_model`` writes them)
        README.md                  model card: base model, stages, steps, losses, data, hardware, versions
        manifest.json              {"kind": "clara_lite-model", "format_version": 1,
                                    "files": {path: {"sha256": ..., "size": ...}}}

The base model is never inside (a zip is adapters-sized): loading needs it by its registry name or
Hub id, or ``base_path=`` (``--base-path``) on an offline machine. Opening a zip is
:mod:`clara_lite.io.unzip`'s job; asking the model a question is :mod:`clara_lite.serve.ask`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import zipfile
from pathlib import Path

from .. import __version__
from ..core.config import ClaraConfig
from ..core.errors import ClaraError
from ..core.layout import (
    ADAPTERS_DIR,
    CARD,
    KIND_CHECKPOINT,
    KIND_MODEL,
    MANIFEST,
    MANIFEST_VERSION,
    SUMMARY_FILE,
    read_manifest,
    verify,
)
from ..model.stages import ORDER, QUERY_REASONER, get_stage
from ..train.run import Run

log = logging.getLogger(__name__)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same model always gives the same bytes


class ExportError(ClaraError, ValueError):
    """A run that cannot be exported (no final stage, not a run folder)."""
    code = "export"


def export_zip(run_dir, stage: str | None = None, out=None) -> Path:
    """Zip ``stage``'s final model of ``run_dir`` (default: the newest final stage) with a model card.

    ``out`` defaults to ``RunLayout.default_export``. Written in place, flushed and fsync'd: renames on Drive
    have lost data (drive_layout.md). A failed export removes its partial zip; an interrupted one leaves a
    zip that does not open, which the next export rewrites.

    For example::

        export_zip("runs/demo")
        # -> PosixPath('exports/demo-stage3.zip')
    """
    run = Run(run_dir)
    if not run.exists:
        raise ExportError(f"{run.root} is not a run folder (no {run.layout.run_file.name}): pass the --run-dir "
                          "used for training")
    if not stage:
        stage = _newest_final_stage(run)  # already verified final
    elif not run.is_final(stage := get_stage(stage).name):
        final = run.final_dir(stage)
        damage = verify(final, KIND_CHECKPOINT) if final.is_dir() else None
        state = f"{stage}/final is damaged: {damage}" if damage else run.stage_status(stage)
        raise ExportError(f"{stage} of {run.root} is not final ({state}): finish it with "
                          f"`clara-lite train --stage {stage} --run-dir {run.root}` (a rerun resumes)")
    final = run.final_dir(stage)
    # exactly the files the stage's verified manifest lists; its summary goes into the card instead
    listed = read_manifest(final, KIND_CHECKPOINT)
    names = sorted(set(listed) - {SUMMARY_FILE})
    out = Path(out) if out else run.layout.default_export(stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
                files = {name: _add_file(zf, final / name, name) for name in names}
                changed = [n for n in names if files[n]["sha256"] != listed[n]["sha256"]]
                if changed:
                    raise ExportError(f"{', '.join(changed)} in {final} changed after it was saved: is training "
                                      "still writing there? Rerun the stage to finish it, then export")
                card = model_card(run, stage, out.name).encode("utf-8")
                files[CARD] = _add_bytes(zf, CARD, card)
                manifest = {"kind": KIND_MODEL, "format_version": MANIFEST_VERSION, "stage": stage,
                            "created_by": f"clara_lite {__version__}", "files": files}
                _add_bytes(zf, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    log.info("Exported %s/final of %s to %s (%.1f MB)", stage, run.root, out, out.stat().st_size / 1e6)
    return out


def _newest_final_stage(run: Run) -> str:
    final = run.newest_final()
    if final is not None:
        return final.parent.name
    status = run.status()
    todo = next(s for s in ORDER if not status[s].final)
    states = ", ".join(f"{s}: {v}" for s, v in status.items())
    raise ExportError(f"No final stage to export in {run.root} ({states}). Finish training first: "
                      f"`clara-lite train --stage {todo} --run-dir {run.root}` (a rerun resumes)")


def _zipinfo(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.file_size = size
    return info


def _add_file(zf: zipfile.ZipFile, path: Path, name: str) -> dict:
    """Copy ``path`` into the zip, hashing the bytes actually written (one read of each file)."""
    h, size = hashlib.sha256(), path.stat().st_size
    with open(path, "rb") as src, zf.open(_zipinfo(name, size), "w", force_zip64=size > zipfile.ZIP64_LIMIT) as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            h.update(block)
            dst.write(block)
    return {"sha256": h.hexdigest(), "size": size}


def _add_bytes(zf: zipfile.ZipFile, name: str, data: bytes) -> dict:
    zf.writestr(_zipinfo(name, len(data)), data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


# --------------------------------------------------------------------------- model card


def model_card(run: Run, stage: str, zip_name: str) -> str:
    """The README.md of an export: what was trained, on what, where, and how to load it."""
    config = ClaraConfig.load(run.final_dir(stage))
    adapters = sorted(p.name for p in (run.final_dir(stage) / ADAPTERS_DIR).iterdir())
    init = next((e.init_from for e in run.record.stages.values() if e.init_from), None)
    rows = []
    for name in config.trained_stages:
        entry = run.record.stages.get(name)
        summary = _summary(run, name) or (entry.final if entry else None)
        if summary is None:  # trained in another run, brought in with --init-from
            rows.append(f"| {name} | - | - | before this run (init_from {init or '?'}) | - | - | - |")
            continue
        metrics = summary.get("final_metrics", {})
        others = ", ".join(f"{k} {_num(v)}" for k, v in metrics.items()
                           if k not in ("loss", "lr", "elapsed_s", "tokens_per_s"))
        data = entry.data if entry else None
        rows.append(f"| {name} | {summary.get('steps', '?')} | {_num(metrics.get('loss', '?'))} | {others or '-'} "
                    f"| `{data.path if data else '?'}` | {data.rows if data and data.rows is not None else '?'} "
                    f"| `{data.sha256[:16] if data else '?'}` |")
    sessions = run.record.sessions
    hardware = [f"- {s.stage}, session of {s.started}: {_device(s.hardware, s.training)}" for s in sessions]
    versions = sorted({", ".join(f"{k} {v}" for k, v in s.versions.items()) for s in sessions})
    base = config.base_model
    qr = QUERY_REASONER in adapters
    usage = ('answers, top = model.generate_from_questions(["Who wrote it?"], [docs], top_k=2)  # retrieves'
             if qr else 'answers = model.generate_from_text(["Who wrote it?"], [docs])  # reads all docs')
    return "\n".join([
        f"# {run.root.name} ({stage}): a clara_lite CLaRa model",
        "",
        "LoRA adapters (encoder, decoder" + (f", {QUERY_REASONER}" if qr else "") + ") and CLaRa's added-token "
        "embeddings for a base model, which is not included: it is loaded by name when the zip is opened.",
        "",
        f"- base model: `{base}`",
        f"- stages completed: {', '.join(config.trained_stages) or 'none'} (exported: {stage})",
        f"- adapters: {', '.join(adapters)}",
        f"- compression: {config.doc_max_length} document tokens -> {config.n_mem} memory vectors "
        f"(compr_rate {config.compr_rate}); LoRA r={config.lora_r}, alpha={config.alpha}",
        "",
        "## Training",
        "",
        "| stage | steps | final loss | other final metrics | data | rows | data sha256 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Hardware",
        "",
        *(hardware or ["- not recorded"]),
        "",
        "## Library versions",
        "",
        *[f"- training: {v}" for v in versions],
        f"- exported with clara_lite {__version__}",
        "",
        "## How to load",
        "",
        "```python",
        "from clara_lite import ClaraModel",
        "",
        f'model = ClaraModel.from_pretrained("{zip_name}")  # offline: base_path="/path/to/{base}"',
        'docs = ["Ada Lovelace wrote the first program.", "Paris is in France."]',
        usage,
        "```",
        "",
        "```bash",
        f'clara-lite ask --model {zip_name} --question "Who wrote it?" --docs docs.jsonl  # [--base-path P]',
        "```",
        "",
    ])


def _summary(run: Run, stage: str) -> dict | None:
    path = run.final_dir(stage) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _device(hw: dict, ran: dict | None = None) -> str:
    """One session's device and what it ran (``ran``: the session's ``training`` record, when there is one)."""
    d, ran = hw.get("device", {}), ran or {}
    mem = f", {d['total_mem_gb']} GB" if d.get("total_mem_gb") else ""
    line = (f"{d.get('kind', '?')} {d.get('name', '?')}{mem}; {ran.get('dtype', hw.get('dtype', '?'))}, mixed precision "
            f"{ran.get('mixed_precision', hw.get('mixed_precision', '?'))}, attention "
            f"{ran.get('attn_implementation', hw.get('attn_implementation', '?'))}")
    if ran:
        line += (f", base {ran.get('quantization', 'none')}, {ran.get('micro_batch_size')} x "
                 f"{ran.get('grad_accum_steps')} = {ran.get('rows_per_step')} rows per step")
    return line
