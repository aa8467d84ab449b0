"""``data fetch`` and 01_data's ``dataset`` and ``link`` sources: a real HTTP server on 127.0.0.1, files on disk."""

from __future__ import annotations

import functools
import io
import json
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_pipeline_datasets import local_datasets, medqa, seed001_rows, write_jsonl  # noqa: F401 (autouse fixture)
from test_pipeline_support import FakeLLM, make_documents

from clara_lite import notebook as nb
from clara_lite.cli import main
from clara_lite.pipeline.fetch import classify, unpack


def zip_folder(folder, archive):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return archive


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/served: my_docs.zip (documents), qa.jsonl (seed 001 rows), stages.zip (stage files)."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    zip_folder(make_documents(tmp_path / "my_docs"), served / "my_docs.zip")
    write_jsonl(served / "qa.jsonl", seed001_rows())
    stages = tmp_path / "stages"
    stages.mkdir()
    for name in ("stage1", "stage2", "stage3"):
        (stages / f"{name}.jsonl").write_text('{"question": "q"}\n')
    zip_folder(stages, served / "stages.zip")

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            httpd.seen.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    httpd.seen = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_fetch_unpacks_a_documents_zip_says_what_it_is_and_a_rerun_reuses_it(tmp_path, server, capsys):
    out = tmp_path / "fetched"
    assert main(["data", "fetch", f"{server.url}/my_docs.zip", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"documents: {out / 'my_docs' / 'my_docs'}" in printed and "clara-lite data build --input" in printed
    assert (out / "my_docs" / "my_docs" / "coffee.docx").is_file() and not (out / "my_docs.zip").exists()
    assert main(["data", "fetch", f"{server.url}/my_docs.zip", "--out", str(out)]) == 0
    assert server.seen.count("/my_docs.zip") == 1  # reused, not downloaded again
    assert main(["data", "fetch", f"{server.url}/qa.jsonl", "--out", str(out)]) == 0
    assert "dataset: " in capsys.readouterr().out and classify(out / "qa.jsonl") == "dataset"


def test_a_zip_with_members_outside_its_folder_is_not_unpacked(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("docs/a.txt", "fine")
        zf.writestr("../outside.txt", "not fine")
    with pytest.raises(ValueError, match=r"members outside the folder \(../outside.txt\)"):
        unpack(archive, tmp_path / "out" / "evil")
    assert not (tmp_path / "out" / "outside.txt").exists() and not (tmp_path / "out" / "evil").exists()
    with pytest.raises(ValueError, match="unpacks to"):
        unpack(zip_folder(make_documents(tmp_path / "d"), tmp_path / "d.zip"), tmp_path / "o2", max_bytes=1000)


@pytest.fixture
def drive(tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    return drive


def test_notebook_dataset_source_converts_a_drive_folder(drive, capsys):
    write_jsonl(drive / "datasets" / "medqa" / "train.jsonl", medqa())
    settings = nb.save_settings(drive, nb.Settings(run_name="r", generation_top_k=3))
    assert nb.Workspace(drive, settings).prepare_data("dataset") is None
    assert "Set DATASET" in capsys.readouterr().out
    saved = nb.Workspace(drive, settings).prepare_data("dataset", dataset="datasets/medqa", limit=6)
    assert saved.data_dir == "data/r-medqa" and nb.load_settings(drive, "r").data_dir == "data/r-medqa"
    reports = nb.Workspace(drive, saved).check_data()
    assert all(r.ok for r in reports.values()) and reports["stage2"].n_rows + reports["heldout"].n_rows == 6


def test_notebook_link_source_trains_converts_or_builds_by_what_it_fetched(drive, server, monkeypatch, capsys):
    settings = nb.save_settings(drive, nb.Settings(run_name="r", generation_top_k=3, doc_max_length=64))
    saved = nb.Workspace(drive, settings).prepare_data("link", link=f"{server.url}/qa.jsonl")  # a seed 001 file
    assert saved.data_dir == "data/r-qa.jsonl" and all(r.ok for r in nb.Workspace(drive, saved).check_data().values())
    saved = nb.Workspace(drive, settings).prepare_data("link", link=f"{server.url}/stages.zip")  # ready stage files
    assert saved.data_dir == "downloads/r/stages/stages"
    with FakeLLM() as llm:  # documents: built into training files
        monkeypatch.setenv("CLARA_LLM_BASE_URL", llm.url)
        monkeypatch.setenv("CLARA_LLM_MODEL", "fake")
        monkeypatch.delenv("CLARA_VLM_MODEL", raising=False)
        saved = nb.Workspace(drive, settings).prepare_data("link", link=f"{server.url}/my_docs.zip")
    assert "fetched documents" in capsys.readouterr().out and saved.data_dir == "data/r-raw"
    assert all(r.ok for r in nb.Workspace(drive, saved).check_data().values())
    assert json.loads((drive / "data" / "r-raw" / "build_report.json").read_text())["extract"]["documents"] == 5


def test_fetching_a_zip_never_replaces_an_existing_folder_or_file_of_its_name(tmp_path, server, capsys):
    out = tmp_path / "fetched"
    mine = out / "my_docs"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own file")
    (out / "my_docs-2").write_text("a file, not a folder")
    assert main(["data", "fetch", f"{server.url}/my_docs.zip", "--out", str(out)]) == 0
    assert (mine / "notes.txt").read_text() == "the user's own file" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"]
    assert (out / "my_docs-2").read_text() == "a file, not a folder"
    assert (out / "my_docs-3" / "my_docs" / "coffee.docx").is_file()
    assert f"documents: {out / 'my_docs-3' / 'my_docs'}" in capsys.readouterr().out
    # a zip already there with the same bytes is the user's: kept after unpacking
    out2 = tmp_path / "again"
    out2.mkdir()
    (out2 / "my_docs.zip").write_bytes((tmp_path / "served" / "my_docs.zip").read_bytes())
    assert main(["data", "fetch", f"{server.url}/my_docs.zip", "--out", str(out2)]) == 0
    assert (out2 / "my_docs.zip").is_file() and (out2 / "my_docs" / "my_docs" / "coffee.docx").is_file()


def test_unpack_refuses_an_existing_target_and_leaves_it_untouched(tmp_path):
    archive = zip_folder(make_documents(tmp_path / "d"), tmp_path / "d.zip")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=str(target)):
        unpack(archive, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and [p.name for p in tmp_path.iterdir()
                                                                   if p.name.startswith(".")] == []


def test_a_zip_without_its_suffix_unpacks_and_a_sign_in_page_is_not_kept_as_a_dataset(tmp_path, server):
    served = tmp_path / "served"
    (served / "download").write_bytes((served / "my_docs.zip").read_bytes())  # a zip behind a name without .zip
    (served / "data.jsonl").write_text("<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n")
    out = tmp_path / "fetched"
    assert main(["data", "fetch", f"{server.url}/download", "--out", str(out)]) == 0
    assert (out / "download-unzipped" / "my_docs" / "coffee.docx").is_file() and not (out / "download").exists()
    assert main(["data", "fetch", f"{server.url}/data.jsonl", "--out", str(out)]) == 2
    assert not (out / "data.jsonl").exists()


def test_a_compressed_body_that_expands_a_thousandfold_is_refused_and_not_kept(tmp_path, monkeypatch):
    import gzip
    from http.server import BaseHTTPRequestHandler

    from clara_lite.io.drive import DownloadFailed, download

    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MB of zeros in about 64 KB

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # gzip though the client asked for identity
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        (tmp_path / "out").mkdir()
        with pytest.raises(DownloadFailed, match="expands more than 100x"):
            download(f"http://127.0.0.1:{httpd.server_address[1]}/data.jsonl", tmp_path / "out", quiet=True)
        assert list((tmp_path / "out").rglob("*")) == [] and len(bomb) < 100_000  # nothing kept, not even staging
    finally:
        httpd.shutdown()
        httpd.server_close()


def _tar(folder: Path, archive: Path, extra=()) -> Path:
    import tarfile

    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def test_a_tar_gz_from_a_laptop_is_fetched_unpacked_and_builds(tmp_path, server, monkeypatch, capsys):
    """Seed 004's hand-off: a .tar.gz of documents, by link (data fetch) or given to data build directly."""
    archive = _tar(make_documents(tmp_path / "my_docs"), tmp_path / "served" / "laptop.tar.gz")
    out = tmp_path / "fetched"
    assert main(["data", "fetch", f"{server.url}/laptop.tar.gz", "--out", str(out)]) == 0
    assert f"documents: {out / 'laptop' / 'my_docs'}" in capsys.readouterr().out
    assert (out / "laptop" / "my_docs" / "coffee.docx").is_file() and not (out / "laptop.tar.gz").exists()
    with FakeLLM() as llm:
        monkeypatch.setenv("CLARA_LLM_BASE_URL", llm.url)
        monkeypatch.setenv("CLARA_LLM_MODEL", "fake")
        monkeypatch.delenv("CLARA_VLM_MODEL", raising=False)
        assert main(["data", "build", "--input", str(archive), "--out", str(tmp_path / "data"), "--doc-max-length",
                     "64", "--k", "3"]) == 0
    assert json.loads((tmp_path / "data" / "build_report.json").read_text())["extract"]["documents"] == 5


def test_a_tar_with_a_member_outside_its_folder_or_a_link_is_not_unpacked(tmp_path):
    import tarfile

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("fine")
    escape = tarfile.TarInfo("../outside.txt")
    escape.size = 8
    evil = _tar(docs, tmp_path / "evil.tar.gz", [(escape, b"not fine")])
    with pytest.raises(ValueError, match=r"members outside the folder \(../outside.txt\)"):
        unpack(evil, tmp_path / "out" / "evil")
    link = tarfile.TarInfo("docs/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linked = _tar(docs, tmp_path / "link.tgz", [(link, None)])
    with pytest.raises(ValueError, match=r"'docs/passwd' is a link \(to '/etc/passwd'\)"):
        unpack(linked, tmp_path / "out" / "link")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "out").exists()
