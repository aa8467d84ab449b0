"""Images that never block a run: Pillow healing, descriptions in their documents, a loopback vision endpoint."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from test_pipeline_support import TOPICS, FakeLLM, _pdf, describe, png_bytes

from clara_lite.cli import main
from clara_lite.pipeline.describe import VisionConfig, describe_pages
from clara_lite.pipeline.extract import extract_folder
from clara_lite.pipeline.generators import OpenAICompatible
from clara_lite.pipeline.images import ImageLimits, ImageSkipped, prepare_image
from clara_lite.pipeline.records import IMAGE_REF, read_rows


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def corrupt_jpeg() -> bytes:  # a JPEG cut off after its first 600 bytes: the header promises more
    return encoded(Image.linear_gradient("L").convert("RGB"), "JPEG")[:600]


def cmyk_tiff() -> bytes:
    return encoded(Image.new("CMYK", (120, 80), (0, 200, 200, 0)), "TIFF")


def palette_png() -> bytes:
    return encoded(Image.new("RGB", (64, 48), (30, 160, 30)).quantize(8), "PNG")


def huge_jpeg() -> bytes:  # 30 megapixels
    return encoded(Image.linear_gradient("L").resize((6000, 5000)).convert("RGB"), "JPEG", quality=80)


def good_png() -> bytes:
    return encoded(Image.new("RGB", (64, 48), (200, 40, 40)), "PNG")


@pytest.mark.parametrize("make, mime, size, changes", [
    (good_png, "image/png", (64, 48), []),  # sent as found, byte for byte
    (cmyk_tiff, "image/jpeg", (120, 80), ["TIFF -> JPEG", "CMYK -> RGB"]),
    (palette_png, "image/png", (64, 48), ["P -> RGB"]),
    (huge_jpeg, "image/jpeg", (2048, 1706), ["6000x5000 (30.0 MP) -> 2048x1706"]),
    (lambda: encoded(Image.new("I;16", (40, 30), 40000), "PNG"), "image/png", (40, 30), ["I;16 -> L"]),
    (lambda: encoded(Image.new("RGBA", (40, 30), (0, 0, 255, 128)), "WEBP"), "image/jpeg", (40, 30),
     ["WEBP -> JPEG", "RGBA -> RGB"]),
])
def test_images_are_sent_as_found_or_converted_to_what_endpoints_read(make, mime, size, changes):
    data = make()
    prepared = prepare_image(data)
    assert (prepared.mime, prepared.size, prepared.changes) == (mime, size, changes)
    if not changes:
        assert prepared.data == data
    status, reply = describe(f"data:{prepared.mime};base64," + __import__("base64").b64encode(prepared.data).decode())
    assert status == 200, reply
    decoded = Image.open(io.BytesIO(prepared.data))
    assert decoded.mode in ("RGB", "L") and decoded.size == size


def test_unreadable_images_are_skipped_with_the_reason(tmp_path):
    with pytest.raises(ImageSkipped, match="(?i)cannot be decoded .*truncated"):
        prepare_image(corrupt_jpeg())
    with pytest.raises(ImageSkipped, match="not an image Pillow can read"):
        prepare_image(b"<html>a login page saved as photo.jpg</html>")
    with pytest.raises(ImageSkipped, match="cannot be read"):
        prepare_image(tmp_path / "gone.png")
    with pytest.raises(ImageSkipped, match="too small"):
        prepare_image(encoded(Image.new("RGB", (1, 1)), "PNG"))
    noisy = Image.effect_noise((700, 700), 120).convert("RGB")  # noise hardly compresses
    small = prepare_image(encoded(noisy, "PNG"), ImageLimits(max_bytes=60_000))
    assert len(small.data) <= 60_000 and small.mime == "image/jpeg" and small.changes[-1].startswith("re-encoded")


def image_folder(folder):
    """The acceptance folder: a corrupt JPEG, a CMYK TIFF, a palette PNG, a 30-megapixel image and a good PNG
    (shown inline by a Markdown note), plus a PDF with a picture on its second page."""
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(corrupt_jpeg())
    (folder / "scan.tif").write_bytes(cmyk_tiff())
    (folder / "palette.png").write_bytes(palette_png())
    (folder / "panorama.jpg").write_bytes(huge_jpeg())
    (folder / "chart.png").write_bytes(good_png())
    (folder / "notes.md").write_text(f"# Bees\n\n{TOPICS['bees']}\n\n![the chart](chart.png)\n\n{TOPICS['coffee']}\n")
    figure = folder.parent / "figure.png"
    figure.write_bytes(png_bytes((10, 10, 250)))
    _pdf(folder / "report.pdf", [TOPICS["volcanoes"], TOPICS["bridges"]], figure)
    return folder


@pytest.fixture
def vision_endpoint(monkeypatch):
    with FakeLLM() as llm:
        monkeypatch.setenv("CLARA_LLM_BASE_URL", llm.url)
        monkeypatch.setenv("CLARA_LLM_MODEL", "fake-instruct")
        monkeypatch.setenv("CLARA_VLM_MODEL", "fake-vl")
        yield llm


def vision_requests(llm) -> list[dict]:
    return [r for r in llm.requests if not isinstance(r["body"]["messages"][0]["content"], str)]


def test_bad_images_never_stop_a_build_and_a_rerun_does_nothing_new(tmp_path, vision_endpoint, capsys):
    docs, out = image_folder(tmp_path / "docs"), tmp_path / "data"
    argv = ["data", "build", "--input", str(docs), "--out", str(out), "--doc-max-length", "64", "--k", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "build_report.json").read_text())["images"]
    assert report["images"] == 6 and report["described"] == 5 and report["requested"] == 5
    assert [(s["image"], s["reason"].split(" (")[0]) for s in report["skipped"]] == [("photo.jpg", "cannot be decoded")]
    assert {c["image"]: c["changes"] for c in report["converted"]} == {
        "scan.tif": ["TIFF -> JPEG", "CMYK -> RGB"], "palette.png": ["P -> RGB"],
        "panorama.jpg": ["6000x5000 (30.0 MP) -> 2048x1706"]}
    assert "skipped image photo.jpg (photo.jpg): cannot be decoded" in printed
    # every image that reached the endpoint was one it reads: no request was refused
    sent = [r["body"]["messages"][0]["content"][1]["image_url"]["url"] for r in vision_requests(vision_endpoint)]
    assert len(sent) == 5 and all(describe(url)[0] == 200 for url in sent)

    pages = {(r["source"], r["page"]): r["text"] for r in read_rows(out / "pages.jsonl")}
    # descriptions stand where the images were, inside their parent documents
    assert "drones in summer.\n\n[Image: A 64x48 picture, mostly rgb(200, 40, 40).]\n\nCoffee plants" in pages["notes.md", None]
    assert pages["report.pdf", 2].endswith("chief engineer.\n\n[Image: A 24x16 picture, mostly rgb(10, 10, 250).]")
    assert pages["panorama.jpg", None] == "[Image: A 2048x1706 picture, mostly rgb(128, 128, 128).]"
    assert ("chart.png", None) not in pages and ("photo.jpg", None) not in pages  # shown by notes.md; unreadable
    assert not any(IMAGE_REF in text for text in pages.values())
    synth = read_rows(out / "synth.jsonl")
    assert any("[Image: A 64x48 picture" in r["doc"] and "Coffee plants" in r["doc"] for r in synth)

    files = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    n_requests = len(vision_endpoint.requests)
    assert main(argv) == 0  # the rerun: every image and chunk is done, skipped ones included
    assert len(vision_endpoint.requests) == n_requests
    assert files == {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    assert json.loads((out / "build_report.json").read_text())["images"]["skipped"] == report["skipped"]


def test_an_image_the_endpoint_refuses_is_skipped_and_the_rest_go_on(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(3):
        (docs / f"image{n}.png").write_bytes(encoded(Image.new("RGB", (32, 32), (n * 100, 0, 0)), "PNG"))
    pages = extract_folder(docs).pages
    with FakeLLM(errors=[(400, {})]) as llm:  # the first image is refused
        vision = OpenAICompatible(llm.url, "fake-vl")
        described, report = describe_pages(pages, tmp_path / "images.jsonl", vision, VisionConfig())
        assert report.described == 2 and report.requested == 3
        assert report.skipped == [{"image": "image0.png", "source": "image0.png",
                                   "reason": 'refused by the vision endpoint: HTTP 400: {"error": {"message": '
                                             '"try later"}}'}]
        assert [p.text for p in described] == ["[Image: A 32x32 picture, mostly rgb(100, 0, 0).]",
                                               "[Image: A 32x32 picture, mostly rgb(200, 0, 0).]"]
        again, report = describe_pages(pages, tmp_path / "images.jsonl", vision, VisionConfig())
        assert report.requested == 0 and len(llm.requests) == 3 and again == described
        # another model or prompt is another description: asked for anew
        _, report = describe_pages(pages, tmp_path / "images.jsonl", OpenAICompatible(llm.url, "other-vl"))
        assert report.requested == 3


def test_without_a_vision_model_placeholders_are_removed_and_nothing_is_read(tmp_path):
    docs = image_folder(tmp_path / "docs")
    pages = extract_folder(docs).pages
    described, report = describe_pages(pages, tmp_path / "images.jsonl", None)
    assert report.without_vision == 5 and report.without_file == 1  # the PDF's picture: no --images-dir to save it
    assert report.requested == 0 and not (tmp_path / "images.jsonl").exists()
    assert not any(IMAGE_REF in p.text for p in described)
    assert "drones in summer.\n\nCoffee plants" in next(p.text for p in described if p.source == "notes.md")


def test_docling_pictures_are_described_inside_their_document(tmp_path):
    """Docling's DOCX and PPTX backends need no models; its PDF pipeline needs layout models from the Hub."""
    pytest.importorskip("docling")
    from test_pipeline_support import make_documents

    docs = make_documents(tmp_path / "docs")
    for pdf in docs.glob("*.pdf"):
        pdf.unlink()
    extraction = extract_folder(docs, images_dir=tmp_path / "images", use_docling="yes")
    assert extraction.extractor.startswith("docling")
    with FakeLLM() as llm:
        pages, report = describe_pages(extraction.pages, tmp_path / "images.jsonl", OpenAICompatible(llm.url, "vl"))
    text = {(p.source, p.page): p.text for p in pages}
    assert "their effect.\n\n[Image: A 24x16 picture, mostly rgb(20, 120, 40).]\n\nArabica" in text["coffee.docx", None]
    assert "[Image: A 24x16 picture, mostly rgb(0, 0, 200).]" in text["lectures.pptx", 1]
