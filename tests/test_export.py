"""Export a briefly trained run, load the zip in a fresh process with identical outputs; hostile zips."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN
from safetensors.torch import load_file
from synthetic_data import write_run_data

from clara_lite import ClaraModel
from clara_lite.cli import main
from clara_lite.core.layout import cache_dir
from clara_lite.io.unzip import ZipImportError, check_folder, extract_zip
from clara_lite.serve.ask import answer, read_docs
from clara_lite.serve.export import ExportError, export_zip
from clara_lite.train.launch import train
from clara_lite.train.run import Run

TRAIN = {"max_steps": 2, "micro_batch_size": 2, "lr": 1e-3, "log_steps": 1, "save_minutes": None}
QUESTIONS = ["Where does Ada live?", "Where does Bo live?"]
DOCS = [["Ada lives in Oslo.", "Bo lives in Rome.", "Cy lives in Lima."],
        ["Bo lives in Rome.", "Di lives in Kyiv.", "Ada lives in Oslo."]]

# Runs in a fresh interpreter: nothing of this process (imports, caches, RNG) can leak into the load.
FRESH = r"""
import json, sys
from safetensors.torch import save_file
from clara_lite import ClaraModel

zip_path, cache, out, questions, docs = sys.argv[1], sys.argv[2], sys.argv[3], *map(json.loads, sys.argv[4:6])
model = ClaraModel.from_pretrained(zip_path, cache_dir=cache)
text = model.generate_from_text(questions, docs, max_new_tokens=6)
text_ids = model.last_output_ids
answers, top = model.generate_from_questions(questions, docs, max_new_tokens=6)
memory, _ = model.compress_documents([d for ds in docs for d in ds])
save_file({"text_ids": text_ids.contiguous(), "answer_ids": model.last_output_ids.contiguous(),
           "top": top.contiguous(), "memory": memory.contiguous()}, out + ".safetensors")
json.dump({"text": text, "answers": answers, "adapters": model.adapter_names}, open(out + ".json", "w"))
"""


def _outputs(model) -> tuple[dict, dict]:
    text = model.generate_from_text(QUESTIONS, DOCS, max_new_tokens=6)
    text_ids = model.last_output_ids.clone()
    answers, top = model.generate_from_questions(QUESTIONS, DOCS, max_new_tokens=6)
    memory, _ = model.compress_documents([d for ds in DOCS for d in ds])
    tensors = {"text_ids": text_ids, "answer_ids": model.last_output_ids, "top": top, "memory": memory}
    return tensors, {"text": text, "answers": answers, "adapters": model.adapter_names}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """stage1 then stage3 (from stage1's final), two steps each, in the Drive layout's runs/ folder."""
    root = tmp_path_factory.mktemp("drive")
    data = write_run_data(root / "data")
    run = root / "runs" / "tiny"
    train(run, "stage1", data=str(data / "stage1.jsonl"), model_options=dict(TINY_RUN), train_options=dict(TRAIN))
    train(run, "stage3", data=str(data / "stage3.jsonl"), model_options={}, train_options=dict(TRAIN),
          init_from=str(run / "stage1" / "final"))
    return run


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    return export_zip(run_dir)


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A clara_lite cache of this test's own (zips unpack there) that still sees the built base models."""
    private = tmp_path / "cache"
    private.mkdir()
    for entry in cache_dir().iterdir():
        if entry.name != "zips":
            (private / entry.name).symlink_to(entry)
    monkeypatch.setenv("CLARA_LITE_CACHE", str(private))
    return private


# --------------------------------------------------------------------------- export


def test_zip_is_adapters_sized_with_manifest_and_card(run_dir, exported, tmp_path):
    assert exported == run_dir.parent.parent / "exports" / "tiny-stage3.zip"  # beside runs/, as on Drive
    size = exported.stat().st_size
    print(f"tiny-random stage3 export: {size} bytes")
    assert size < 2_000_000
    with zipfile.ZipFile(exported) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        card = zf.read("README.md").decode()
        for name, meta in manifest["files"].items():
            data = zf.read(name)
            assert len(data) == meta["size"] and hashlib.sha256(data).hexdigest() == meta["sha256"]
    assert {"clara_config.json", "added_tokens.safetensors", "README.md", "manifest.json",
            "tokenizer/tokenizer.json"} <= names
    assert {f"adapters/{a}/adapter_model.safetensors" for a in ("encoder", "decoder", "query_reasoner")} <= names
    assert not any(n.endswith("model.safetensors") and not n.startswith("adapters/") for n in names)  # no base
    assert "summary.json" not in names and set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["kind"] == "clara_lite-model" and manifest["format_version"] == 1

    summaries = {s: json.loads((run_dir / s / "final" / "summary.json").read_text()) for s in ("stage1", "stage3")}
    assert "base model: `tiny-random`" in card and "stages completed: stage1, stage3" in card
    for stage, summary in summaries.items():
        loss = f"{summary['final_metrics']['loss']:.4f}"
        assert f"| {stage} | 2 | {loss} |" in card
    assert "stage3.jsonl` | 12 |" in card and "cpu" in card and "transformers" in card
    assert 'ClaraModel.from_pretrained("tiny-stage3.zip")' in card and "clara-lite ask --model" in card
    again = export_zip(run_dir, out=tmp_path / exported.name)
    assert again.read_bytes() == exported.read_bytes()  # same model, same bytes: the unpack cache key holds


def test_stage_choice_and_missing_final_are_clear(run_dir, tmp_path, capsys):
    out = tmp_path / "s1.zip"
    assert main(["export", "--run-dir", str(run_dir), "--stage", "stage1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out} (0.")
    with zipfile.ZipFile(out) as zf:
        assert "adapters/query_reasoner/adapter_config.json" not in zf.namelist()
    with pytest.raises(ExportError, match=r"stage2 of .* is not final \(not started\).*--stage stage2"):
        export_zip(run_dir, stage="stage2")
    Run(tmp_path / "empty").save()
    with pytest.raises(ExportError, match=r"No final stage .*stage1: not started, stage2: not started.*"
                                          r"clara-lite train --stage stage1 --run-dir"):
        export_zip(tmp_path / "empty")
    with pytest.raises(ExportError, match="not a run folder"):
        export_zip(tmp_path)
    with pytest.raises(ValueError, match="Unknown stage 'stage4'"):
        export_zip(run_dir, stage="stage4")
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    (copy / "stage1" / "final" / "added_tokens.safetensors").write_bytes(b"half")
    with pytest.raises(ExportError, match=r"stage1/final is damaged: added_tokens.safetensors has 4 bytes"):
        export_zip(copy, stage="stage1")
    assert not list(tmp_path.glob("**/*.tmp"))


# --------------------------------------------------------------------------- round trip


def test_fresh_process_loads_the_zip_with_identical_outputs(run_dir, exported, tmp_path):
    out = tmp_path / "fresh"
    proc = subprocess.run([sys.executable, "-c", FRESH, str(exported), str(tmp_path / "cache"), str(out),
                           json.dumps(QUESTIONS), json.dumps(DOCS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    reference = ClaraModel.from_pretrained(run_dir / "stage3" / "final")
    tensors, info = _outputs(reference)
    fresh = load_file(f"{out}.safetensors")
    assert json.loads(Path(f"{out}.json").read_text()) == info
    for key, value in tensors.items():
        assert torch.equal(fresh[key], value), key
    (unpacked,) = (tmp_path / "cache" / "zips").iterdir()
    assert check_folder(unpacked) is None and not (unpacked / "summary.json").exists()


def test_unpacked_copy_is_reused_and_repaired(exported, tmp_path):
    root = tmp_path / "zips"
    folder = extract_zip(exported, root)
    marker = (folder / "clara_config.json").stat().st_mtime_ns
    assert extract_zip(exported, root) == folder and (folder / "clara_config.json").stat().st_mtime_ns == marker
    (folder / "added_tokens.safetensors").write_bytes(b"damaged")
    assert extract_zip(exported, root) == folder
    assert check_folder(folder) is None and [p.name for p in root.iterdir()] == [folder.name]


def test_zip_loads_in_another_dtype(exported, tmp_path):
    model = ClaraModel.from_pretrained(exported, cache_dir=tmp_path, torch_dtype=torch.bfloat16)
    assert model.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.adapter_names == ["encoder", "decoder", "query_reasoner"]


# --------------------------------------------------------------------------- ask


def test_cli_ask_retrieves_with_a_stage3_zip(exported, run_dir, private_cache, capsys):
    data = json.loads((run_dir / "run.json").read_text())["stages"]["stage3"]["data"]["path"]
    code = main(["ask", "--model", str(exported), "--question", "Where does Ada live?", "--docs", data,
                 "--top-k", "2", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("answer:") and lines[1] == "retrieved:"
    assert len(lines) == 4 and all(line.startswith("  [") and " lives in " in line for line in lines[2:])
    assert len(list((private_cache / "zips").iterdir())) == 1


def test_missing_base_model_is_named(exported, private_cache, tmp_path, caplog):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Ada lives in Oslo.")
    code = main(["ask", "--model", str(exported), "--question", "Where?", "--docs", str(docs),
                 "--base-path", str(tmp_path / "no-such-base")])
    assert code == 2
    message = caplog.records[-1].getMessage()
    assert "tiny-stage3.zip needs base_path" in message and "'tiny-random'" in message and "--base-path" in message


def test_model_without_retriever_reads_all_docs(run_dir):
    model = ClaraModel.from_pretrained(run_dir / "stage1" / "final")
    text, retrieved = answer(model, "Where does Ada live?", DOCS[0], max_new_tokens=3)
    assert isinstance(text, str) and retrieved is None
    with pytest.raises(ValueError, match=r"17 documents.*at most 16.*stage3 model"):
        answer(model, "Where?", [f"doc {i}" for i in range(17)])


def test_read_docs_forms(tmp_path):
    rows = ['{"doc": "Ada lives in Oslo."}', '{"text": "Bo lives in Rome."}', '"Cy lives in Lima."', "",
            json.dumps({"question": "q", "docs": ["Ada lives in Oslo.", "Di lives in Kyiv."], "gold_answer": "a"})]
    (tmp_path / "docs.jsonl").write_text("\n".join(rows) + "\n")
    assert read_docs(tmp_path / "docs.jsonl") == ["Ada lives in Oslo.", "Bo lives in Rome.", "Cy lives in Lima.",
                                                  "Di lives in Kyiv."]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.md").write_text("# B\nBo lives in Rome.\n")
    (folder / "a.txt").write_text("Ada lives in Oslo.\n")
    (folder / "skip.json").write_text("{}")
    assert read_docs(folder) == ["Ada lives in Oslo.", "# B\nBo lives in Rome."]
    # the official-model section and `ask --docs` read a folder's PDFs (and HTML, DOCX, PPTX) too
    (folder / "c.html").write_text("<html><body><p>Cy lives in Lima.</p></body></html>")
    assert read_docs(folder)[-1] == "Cy lives in Lima."
    (tmp_path / "bad.jsonl").write_text('{"doc": "x"}\n{"title": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected"):
        read_docs(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="documents not found"):
        read_docs(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- hostile and broken zips

GOOD = {"clara_config.json": b'{"base_model": "tiny-random"}', "a.bin": bytes(range(256)) * 40,
        "z.bin": bytes(range(255, -1, -1)) * 40}


def _manifest(files: dict[str, bytes], **changes) -> bytes:
    manifest = {"kind": "clara_lite-model", "format_version": 1,
                "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()}}
    manifest.update(changes)
    return json.dumps(manifest).encode()


def _write(path: Path, members) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return path


def _zip(path: Path, files: dict[str, bytes], manifest: bytes | None = None) -> Path:
    return _write(path, [*files.items(), ("manifest.json", manifest or _manifest(files))])


def _member_offset(path: Path, name: str) -> tuple[int, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info


def _symlink(path):
    link = zipfile.ZipInfo("tokenizer")
    link.external_attr = (0o120777) << 16  # S_IFLNK
    files = {**GOOD, "tokenizer": b"/etc"}
    return _write(path, [*GOOD.items(), (link, b"/etc"), ("manifest.json", _manifest(files))])


def _declared_bomb(path):
    files = {**GOOD, "z.bin": bytes(5_000_000)}
    small = {**files, "z.bin": bytes(100)}
    return _zip(path, files, _manifest(small))  # the zip declares 5 MB where the manifest says 100 bytes


def _lying_bomb(path):
    """Headers patched to declare 100 bytes for a member that inflates to 1 MB (like the manifest)."""
    small = {**GOOD, "z.bin": bytes(100)}
    _zip(path, {**GOOD, "z.bin": bytes(1_000_000)}, _manifest(small))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("z.bin")
    struct.pack_into("<I", raw, info.header_offset + 22, 100)  # local header: uncompressed size
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack("<H", raw[central + 28 : central + 30])[0]
        if raw[central + 46 : central + 46 + name_len] == b"z.bin":
            struct.pack_into("<I", raw, central + 24, 100)  # central directory: uncompressed size
        central = raw.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(raw))
    return path


def _corrupt(path):
    _zip(path, GOOD)
    start, info = _member_offset(path, "z.bin")
    raw = bytearray(path.read_bytes())
    for i in range(start + info.compress_size // 3, start + info.compress_size // 2):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    return path


def _truncated(path):
    _zip(path, GOOD)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


HOSTILE = {
    "dotdot": (lambda p: _zip(p, {**GOOD, "../evil.txt": b"x"}), r"unsafe member name '\.\./evil\.txt'"),
    "deep-dotdot": (lambda p: _zip(p, {**GOOD, "a/../../../evil.txt": b"x"}), "unsafe member name"),
    "absolute": (lambda p: _zip(p, {**GOOD, str(p.parent / "abs-evil.txt"): b"x"}), "unsafe member name"),
    "backslash": (lambda p: _zip(p, {**GOOD, "..\\evil.txt": b"x"}), "unsafe member name"),
    "drive-letter": (lambda p: _zip(p, {**GOOD, "C:/evil.txt": b"x"}), "unsafe member name 'C:/evil.txt'"),
    "symlink": (_symlink, "'tokenizer' is a symbolic link"),
    "declared-bomb": (_declared_bomb, "z.bin declares 5000000 bytes unpacked but the manifest says 100"),
    "lying-bomb": (_lying_bomb, r"not a readable zip .*Bad CRC-32 for file 'z.bin'"),
    "corrupt": (_corrupt, r"not a readable zip \(truncated or corrupt"),
    "truncated": (_truncated, r"not a readable zip \(truncated or corrupt: File is not a zip file\)"),
    "checksum": (lambda p: _zip(p, GOOD, _manifest({**GOOD, "z.bin": GOOD["a.bin"]})),
                 "z.bin does not match its sha256 in the manifest"),
    "missing-file": (lambda p: _zip(p, GOOD, _manifest({**GOOD, "tokenizer/tokenizer.json": b"{}"})),
                     "lacks tokenizer/tokenizer.json, which its manifest lists"),
    "extra-file": (lambda p: _zip(p, {**GOOD, "extra.py": b"import os"}, _manifest(GOOD)),
                   "holds extra.py, which its manifest does not list"),
    "duplicate": (lambda p: _write(p, [*GOOD.items(), ("a.bin", b"other"), ("manifest.json", _manifest(GOOD))]),
                  "'a.bin' appears twice"),
    "newer-format": (lambda p: _zip(p, GOOD, _manifest(GOOD, format_version=2)),
                     r"unknown format_version 2 \(this clara_lite reads 1\); upgrade clara_lite"),
    "wrong-kind": (lambda p: _zip(p, GOOD, _manifest(GOOD, kind="something")), "not a clara_lite model export"),
    "no-manifest": (lambda p: _write(p, list(GOOD.items())), "has no manifest.json: not a clara_lite export"),
    "manifest-escape": (lambda p: _zip(p, GOOD, _manifest({**GOOD, "../x": b""})), r"unsafe path '\.\./x'"),
}


def _snapshot(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_zip_is_refused_and_leaves_nothing(case, tmp_path):
    make, message = HOSTILE[case]
    area = tmp_path / "area"  # the zip and the cache live here; '..' members would land in it or above
    area.mkdir()
    path = make(area / "model.zip")
    root = area / "cache" / "zips"
    before = _snapshot(tmp_path)
    with pytest.raises(ZipImportError, match=message):
        extract_zip(path, root)
    assert not (root.exists() and any(root.iterdir())), "a half-extracted folder was left behind"
    assert _snapshot(tmp_path) - before <= {area / "cache", root}
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_bomb_within_declared_sizes_hits_the_cap(tmp_path):
    files = {**GOOD, "z.bin": bytes(200_000)}
    with pytest.raises(ZipImportError, match=r"would unpack to \d+ bytes, over the 100000-byte limit"):
        extract_zip(_zip(tmp_path / "big.zip", files), tmp_path / "zips", max_bytes=100_000)
    assert not any((tmp_path / "zips").iterdir())


def test_good_zip_extracts(tmp_path):
    folder = extract_zip(_zip(tmp_path / "ok.zip", GOOD), tmp_path / "zips")
    assert {p.name for p in folder.iterdir()} == {*GOOD, "manifest.json"}
    assert (folder / "z.bin").read_bytes() == GOOD["z.bin"] and check_folder(folder) is None


def test_an_official_7b_is_refused_without_cuda_before_anything_loads():
    from clara_lite.notebook.official import cpu_refusal

    refused = cpu_refusal(7.24, cuda=False)
    assert "~29 GB" in refused and "Runtime > Change runtime type > T4 GPU" in refused
    assert cpu_refusal(7.24, cuda=True) is None and cpu_refusal(0.001, cuda=False) is None  # a GPU; a tiny fixture
