"""Raw documents -> text per page, with source, page, title and the images found.

Light extractors, one per file type (registered in ``EXTRACTORS``): PDF (pypdf), DOCX
(python-docx), PPTX (python-pptx), HTML (beautifulsoup4), Markdown and plain text. When IBM
Docling is installed it is used for PDF, DOCX, PPTX and HTML instead (layout-aware: reading
order, columns, tables); a file Docling fails on (e.g. its models cannot be downloaded) falls
back to the light extractor. A corrupt or password-protected file is skipped and listed with the
reason; it never stops the run.

Images are recorded where they are: embedded ones as ``{"name", "index"}`` on their page (with
``"path"`` when ``images_dir`` is given and the bytes were saved there), with an ``[IMAGE_REF]``
placeholder in the page text where the image sits (Markdown, HTML, DOCX, PPTX, Docling) or at the
end of the page (pypdf cannot tell where). An image file beside the documents is a page of its
own whose text is just the placeholder. :mod:`.describe` puts a vision model's description in
each placeholder's place, inside the parent document.

Docling's knobs (picture resolution, OCR, table structure) are :class:`DoclingOptions`.

For example::

    result = extract_folder("docs/")
    result.extractor, len(result.pages), result.skipped
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..io.paths import inside, refusal, shown
from .records import IMAGE_REF, Page, clean_paragraphs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
DOCLING_SUFFIXES = {".pdf", ".docx", ".pptx", ".html", ".htm"}


class Unreadable(Exception):
    """A file that cannot be read (encrypted, corrupt, empty); the message is the reason."""


@dataclass
class Skipped:
    source: str
    reason: str


@dataclass
class Extraction:
    """Pages of all readable documents, and every file that was skipped or ignored."""

    extractor: str  # what was used, for the user: "docling" or "light extractors (...)"
    pages: list[Page] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # unreadable documents, with the reason
    ignored: list[str] = field(default_factory=list)  # files of types we do not read

    @property
    def n_documents(self) -> int:
        return len({p.source for p in self.pages})

    @property
    def n_images(self) -> int:
        return sum(len(p.images) for p in self.pages)

    def report(self) -> dict:
        return {"extractor": self.extractor, "documents": self.n_documents, "pages": len(self.pages),
                "images": self.n_images, "skipped": [vars(s) for s in self.skipped], "ignored": self.ignored}


@dataclass(frozen=True)
class DoclingOptions:
    """Docling's settings seed 004 tunes; they apply to PDFs (DOCX, PPTX, HTML have no pages to render)."""

    images_scale: float = 2.0  # picture crops at 2 x 72 dpi: enough for a vision model to read labels
    picture_images: bool = True  # crop every picture so it can be described
    do_ocr: bool = True  # OCR scanned pages and text in pictures
    do_table_structure: bool = True  # tables as rows and cells (TableFormer)
    table_mode: str = "accurate"  # TableFormer: "accurate" or "fast"
    timeout: float | None = None  # seconds per document; Docling returns what it has when exceeded

    def __post_init__(self):
        if not 0.1 <= self.images_scale <= 10:
            raise ValueError(f"images_scale must be in [0.1, 10], got {self.images_scale}")
        if self.table_mode not in ("accurate", "fast"):
            raise ValueError(f"table_mode must be 'accurate' or 'fast', got {self.table_mode!r}")


# --------------------------------------------------------------------------- text helpers


def place_images(text: str, n_images: int) -> str:
    """``text`` with exactly ``n_images`` placeholders: missing ones at the end, extra ones removed."""
    have = text.count(IMAGE_REF)
    if have > n_images:
        head, *rest = text.split(IMAGE_REF)
        text = head + "".join((IMAGE_REF if k < n_images else "") + part for k, part in enumerate(rest))
    elif have < n_images:
        text = "\n\n".join([text, *[IMAGE_REF] * (n_images - have)])
    return clean_paragraphs(text)


class _Images:
    """Collects a document's embedded images, saving their bytes under ``images_dir`` if given."""

    def __init__(self, source: str, images_dir: Path | None, root: Path | None = None):
        self.source, self.images_dir, self.count = source, images_dir, 0
        self.root = root  # images a document points to are read only from inside this folder

    def add(self, name: str, data: bytes | None = None) -> dict:
        entry = {"name": name, "index": self.count}
        if self.images_dir is not None and data:
            safe = re.sub(r"[^\w.\-]+", "_", f"{self.source}-{self.count}-{Path(name).name}")
            target = self.images_dir / safe
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            entry["path"] = str(target)
        self.count += 1
        return entry


# --------------------------------------------------------------------------- light extractors


def _pdf(path: Path, images: _Images) -> list[Page]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):  # many "protected" PDFs have an empty user password
        raise Unreadable("password-protected PDF")
    meta = reader.metadata
    title = str(meta.title).strip() if meta is not None and meta.title else path.stem
    pages = []
    for number, page in enumerate(reader.pages, start=1):
        found = []
        try:
            found = [images.add(img.name, img.data) for img in page.images]
        except Exception as err:  # an undecodable image must not cost us the page's text
            log.debug("%s page %d: images unreadable: %s", path, number, err)
        # pypdf keeps the PDF's line breaks; paragraphs are only where the text has blank lines
        pages.append(Page(images.source, number, title, place_images(page.extract_text() or "", len(found)), found))
    return pages


def _docx(path: Path, images: _Images) -> list[Page]:
    import docx

    document = docx.Document(str(path))
    parts, found, placed = document.part.related_parts, [], set()
    paragraphs = []
    for p in document.paragraphs:  # a picture is a run of its paragraph: its placeholder goes right there
        pieces = [p.text] if p.text.strip() else []
        for rid in p._p.xpath(".//a:blip/@r:embed"):
            part = parts.get(rid)
            if part is not None and part.content_type.startswith("image/"):
                found.append(images.add(Path(part.partname).name, part.blob))
                placed.add(rid)
                pieces.append(IMAGE_REF)
        if pieces:
            paragraphs.append(" ".join(pieces))
    for table in document.tables:
        paragraphs += [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
    title = (document.core_properties.title or "").strip()
    if not title:
        heads = [p.text for p in document.paragraphs if p.style is not None and p.style.name.startswith(("Title", "Heading"))]
        title = heads[0].strip() if heads else path.stem
    found += [images.add(Path(part.partname).name, part.blob)  # images outside the body text (tables, shapes)
              for rid, part in parts.items() if part.content_type.startswith("image/") and rid not in placed]
    return [Page(images.source, None, title, place_images("\n\n".join(paragraphs), len(found)), found)]


def _pptx(path: Path, images: _Images) -> list[Page]:
    from pptx import Presentation
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    deck = Presentation(str(path))
    title, pages = (deck.core_properties.title or "").strip(), []
    for number, slide in enumerate(deck.slides, start=1):
        texts, found = [], []
        for shape in slide.shapes:
            if shape.has_text_frame and shape.text_frame.text.strip():
                texts.append(shape.text_frame.text)
            if shape.shape_type == MSO_SHAPE_TYPE.PICTURE:
                found.append(images.add(shape.image.filename or f"slide{number}.{shape.image.ext}", shape.image.blob))
                texts.append(IMAGE_REF)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame.text.strip():
            texts.append(slide.notes_slide.notes_text_frame.text)
        if not title and slide.shapes.title is not None and slide.shapes.title.text.strip():
            title = slide.shapes.title.text.strip()
        pages.append(Page(images.source, number, "", place_images("\n\n".join(texts), len(found)), found))
    for page in pages:
        page.title = title or path.stem
    return pages


_BLOCK_TAGS = ["p", "div", "section", "article", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
               "blockquote", "tr", "table", "ul", "ol", "br", "header", "footer", "figcaption", "dd", "dt"]


def _html(path: Path, images: _Images) -> list[Page]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_bytes(), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    h1 = soup.find("h1")
    title = title or (h1.get_text(" ", strip=True) if h1 else path.stem)
    found = []
    for img in soup.find_all("img"):
        found.append(_local_image(images, path, img.get("src", ""), img.get("alt", "")))
        img.replace_with(f" {IMAGE_REF} ")
    if soup.title:
        soup.title.decompose()
    for tag in soup.find_all(_BLOCK_TAGS):  # a blank line after each block keeps paragraphs apart
        tag.append("\n\n")
    return [Page(images.source, None, title, place_images(soup.get_text(), len(found)), found)]


def _local_image(images: _Images, doc: Path, src: str, alt: str) -> dict:
    """An image referenced by a document, with the path of the file when ``src`` is one beside it."""
    candidate = (doc.parent / src.split("?")[0]) if src and "://" not in src and not src.startswith("data:") else None
    entry = images.add(src or alt or "image")
    if candidate is not None and candidate.is_file():
        if inside(candidate, images.root or doc.parent):
            entry["path"] = str(candidate.resolve())
        else:  # ../../secret.png, or a link out: never read, never sent to an endpoint
            log.warning("%s: image %s is outside the input folder: not read", images.source, src)
    if alt:
        entry["alt"] = alt
    return entry


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)[^)]*\)")


def _markdown(path: Path, images: _Images) -> list[Page]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # YAML front matter
    found = [_local_image(images, path, src, alt) for alt, src in _MD_IMAGE.findall(text)]
    heading = re.search(r"^#\s+(.+)$", text, flags=re.M)
    text = _MD_IMAGE.sub(f" {IMAGE_REF} ", text)  # the alt text is kept with the image entry
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their words
    text = re.sub(r"^\s{0,3}(#{1,6}|[-*+]|\d+[.)]|>)\s+", "", text, flags=re.M)  # heading, list, quote marks
    text = re.sub(r"(\*\*|__|`)", "", text)
    title = heading.group(1).strip() if heading else path.stem
    return [Page(images.source, None, title, place_images(text, len(found)), found)]


def _text(path: Path, images: _Images) -> list[Page]:
    return [Page(images.source, None, path.stem, clean_paragraphs(path.read_text(encoding="utf-8-sig", errors="replace")))]


EXTRACTORS: dict[str, Callable[[Path, _Images], list[Page]]] = {
    ".pdf": _pdf, ".docx": _docx, ".pptx": _pptx, ".html": _html, ".htm": _html,
    ".md": _markdown, ".markdown": _markdown, ".txt": _text,
}


# --------------------------------------------------------------------------- Docling


def docling_installed() -> bool:
    return importlib.util.find_spec("docling") is not None


def _png(image) -> bytes | None:
    """A PIL image (Docling's picture crop) as PNG bytes, None when there is none."""
    if image is None:
        return None
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Docling:
    """Docling's converter, made once; pages from its document model (page_no from provenance).

    Pictures come with their pixels (``generate_picture_images``; ``PictureItem.get_image``) and
    a placeholder where they sit in the Markdown export, so they can be described in place."""

    def __init__(self, options: DoclingOptions = DoclingOptions()):
        from docling.datamodel.base_models import InputFormat
        from docling.datamodel.pipeline_options import PdfPipelineOptions, TableFormerMode
        from docling.document_converter import DocumentConverter, PdfFormatOption

        pdf = PdfPipelineOptions(images_scale=options.images_scale, generate_picture_images=options.picture_images,
                                 do_ocr=options.do_ocr, do_table_structure=options.do_table_structure,
                                 document_timeout=options.timeout)
        pdf.table_structure_options.mode = TableFormerMode(options.table_mode)
        self.converter = DocumentConverter(format_options={InputFormat.PDF: PdfFormatOption(pipeline_options=pdf)})

    def __call__(self, path: Path, images: _Images) -> list[Page]:
        from docling_core.types.doc import PictureItem

        document = self.converter.convert(str(path)).document
        title = getattr(document, "name", "") or path.stem

        def page(page_no: int | None) -> Page:
            # the export walks the same items in the same order: the k-th placeholder is the k-th picture
            found = [images.add(f"picture-{images.count}.png", _png(item.get_image(document)))
                     for item, _ in document.iterate_items(page_no=page_no) if isinstance(item, PictureItem)]
            text = document.export_to_markdown(page_no=page_no, image_placeholder=IMAGE_REF,
                                               escape_underscores=False)
            return Page(images.source, page_no, title, place_images(text, len(found)), found)

        page_numbers = sorted(getattr(document, "pages", {}) or {})
        return [page(n) for n in page_numbers] if page_numbers else [page(None)]  # DOCX, HTML: no pages


def _choose_docling(use_docling: str, options: DoclingOptions = DoclingOptions()):
    """``(converter or None, description)``; ``use_docling`` is ``auto``, ``yes`` or ``no``."""
    if use_docling not in ("auto", "yes", "no"):
        raise ValueError(f"use_docling must be 'auto', 'yes' or 'no', got {use_docling!r}")
    if use_docling == "no":
        return None, "light extractors (docling disabled)"
    if not docling_installed():
        if use_docling == "yes":
            raise ValueError("--docling yes: Docling is not installed; `pip install docling` (then run the same "
                             "command again), or --docling auto to use the light extractors")
        return None, "light extractors (docling not installed)"
    try:
        return _Docling(options), "docling (layout-aware; light extractors for Markdown and text)"
    except Exception as err:  # installed but unusable (models missing, incompatible version)
        if use_docling == "yes":
            raise ValueError(f"--docling yes: Docling is installed but unusable ({type(err).__name__}: {err}); "
                             "--docling auto uses the light extractors") from err
        return None, f"light extractors (docling unusable: {type(err).__name__}: {err})"


# --------------------------------------------------------------------------- folders


def extract_file(path: str | Path, root: str | Path | None = None, *, images_dir: str | Path | None = None,
                 docling=None) -> list[Page]:
    """Pages of one document; raises :class:`Unreadable` (or the library's error) if it cannot be read."""
    path = Path(path)
    source = str(path.relative_to(root)) if root is not None else path.name
    images = _Images(source, Path(images_dir) if images_dir is not None else None,
                     Path(root) if root is not None else path.parent)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:  # a page of its own: the description will be its whole text
        return [Page(source, None, path.stem, IMAGE_REF, [{"name": path.name, "index": 0, "path": str(path.resolve())}])]
    if suffix not in EXTRACTORS:
        raise Unreadable(f"unsupported file type {suffix or '(none)'}")
    pages = None
    if docling is not None and suffix in DOCLING_SUFFIXES:
        try:
            pages = docling(path, images)
        except Exception as err:
            log.warning("docling failed on %s (%s: %s); using the light extractor", source, type(err).__name__, err)
            images.count = 0
    if pages is None:
        pages = EXTRACTORS[suffix](path, images)
    if not any(p.text.strip() for p in pages) and not any(p.images for p in pages):
        raise Unreadable("no text found (a scanned document needs OCR: install docling)")
    return pages


def _lone_image(page: Page) -> bool:
    return page.text == IMAGE_REF and Path(page.source).suffix.lower() in IMAGE_SUFFIXES


def extract_folder(input_dir: str | Path, *, images_dir: str | Path | None = None, use_docling: str = "auto",
                   docling_options: DoclingOptions = DoclingOptions()) -> Extraction:
    """Every document under ``input_dir`` (recursively, in sorted order), never stopping on a bad one."""
    root = Path(input_dir)
    if not root.is_dir():
        if root.is_file():
            raise FileNotFoundError(f"{root} is a file, not a folder of documents: put it in a folder (an archive "
                                    "is unpacked by `clara-lite data build --input ARCHIVE` or `data fetch`)")
        raise FileNotFoundError(f"input folder not found: {root}")
    docling, description = _choose_docling(use_docling, docling_options)
    result = Extraction(description)
    log.info("extracting %s with %s", root, description)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = shown(path.relative_to(root))
        if path.name.startswith(".") or images_dir is not None and Path(images_dir).resolve() in path.resolve().parents:
            continue
        suffix = path.suffix.lower()
        if suffix not in EXTRACTORS and suffix not in IMAGE_SUFFIXES:
            result.ignored.append(rel)
            continue
        why = refusal(path, root)  # a link out of the folder (to /etc/passwd, say), a name that is not UTF-8
        if why is not None:
            result.skipped.append(Skipped(rel, why))
            log.warning("skipped %s: %s", rel, why)
            continue
        try:
            pages = extract_file(path, root, images_dir=images_dir, docling=docling)
        except Exception as err:  # corrupt, encrypted, truncated: list it and go on
            reason = str(err) if isinstance(err, Unreadable) else f"cannot read ({type(err).__name__}: {err})"
            result.skipped.append(Skipped(rel, reason))
            log.warning("skipped %s: %s", rel, reason)
            continue
        result.pages += [p for p in pages if p.text.strip() or p.images]
    # an image file a document shows is recorded there (with its place), not again on its own
    displayed = {i.get("path") for p in result.pages if not _lone_image(p) for i in p.images}
    result.pages = [p for p in result.pages if not _lone_image(p) or p.images[0].get("path") not in displayed]
    return result
