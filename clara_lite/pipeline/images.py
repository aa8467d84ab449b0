"""Images made safe to send to a vision endpoint, or skipped with the reason: Pillow does the checking.

Why: one bad image (a truncated JPEG, a PNG named ``photo.jpg``, a CMYK TIFF, a 30-megapixel
scan) makes a vision endpoint answer HTTP 400, and a run that stops there stops at the same image
on every rerun. So every image is opened and fully decoded here first; what the endpoint reads
(PNG or JPEG, RGB or greyscale, within :class:`ImageLimits`) goes as it is, anything else is
converted (first frame, EXIF rotation applied, alpha flattened on white, 16-bit scaled to 8,
shrunk to the pixel limit, re-encoded until it fits the byte limit), and what cannot be decoded
raises :class:`ImageSkipped` with the reason.

For example::

    prepared = prepare_image("scan.tif")
    prepared.mime, prepared.changes
    # -> ('image/jpeg', ['TIFF -> JPEG', 'CMYK -> RGB', '30.0 MP -> 4.0 MP'])
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SENDABLE = {"PNG": "image/png", "JPEG": "image/jpeg"}  # what every OpenAI-compatible vision endpoint reads
_PLAIN_MODES = {"RGB", "L"}
_JPEG_QUALITIES = (90, 80, 70, 60)


@dataclass(frozen=True)
class ImageLimits:
    """What a vision endpoint accepts. The defaults fit OpenAI, Qwen-VL (DashScope), vLLM and Ollama:
    OpenAI's cap is 20 MB per image and it works on at most 2048 px a side; some endpoints take
    only 5 MB, and the data URL adds a third for base64."""

    max_side: int = 2048  # longest side in pixels
    max_pixels: int = 4_000_000  # width x height
    max_bytes: int = 3_500_000  # encoded size (under 5 MB once base64-encoded)
    min_side: int = 4  # smaller images (tracking pixels, spacers) say nothing

    def __post_init__(self):
        if self.max_side < 64 or self.max_pixels < 64 * 64 or self.max_bytes < 10_000:
            raise ValueError(f"image limits too small to describe anything: {self}")


class ImageSkipped(Exception):
    """An image that cannot be made sendable; the message is the reason."""


@dataclass
class Prepared:
    """Bytes to send, their MIME type and what was changed to get them (empty: sent as found)."""

    data: bytes
    mime: str
    size: tuple[int, int]  # width, height of what is sent
    changes: list[str] = field(default_factory=list)


def _open(data: bytes):
    """The decoded image; raises :class:`ImageSkipped` for anything Pillow cannot fully read."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes every byte: a truncated file fails here, not at the endpoint
    except UnidentifiedImageError:
        raise ImageSkipped("not an image Pillow can read (corrupt, or another file type under an image name)") \
            from None
    except Image.DecompressionBombError as err:
        raise ImageSkipped(f"refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated, bad CRC, unsupported codec variant
        raise ImageSkipped(f"cannot be decoded ({type(err).__name__}: {err})") from None
    return image


def _plain(image, changes: list[str]):
    """RGB or L: first frame, upright, alpha on white, 16-bit and float scaled into 8 bits."""
    from PIL import Image, ImageOps

    if getattr(image, "n_frames", 1) > 1:
        changes.append(f"first frame of {image.n_frames}")
        image.seek(0)
        image = image.copy()
    if image.getexif().get(0x0112, 1) != 1:  # a phone photo stored sideways with an orientation tag
        image = ImageOps.exif_transpose(image)
        changes.append("EXIF rotation applied")
    mode = image.mode
    if mode in _PLAIN_MODES:
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or mode == "P" and "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    else:  # palette without transparency, CMYK, YCbCr, LAB, HSV
        image = image.convert("RGB")
    changes.append(f"{mode} -> {image.mode}")
    return image


def _shrink(image, limits: ImageLimits, changes: list[str]):
    width, height = image.size
    scale = min(1.0, limits.max_side / max(width, height), (limits.max_pixels / (width * height)) ** 0.5)
    if scale >= 1.0:
        return image
    from PIL import Image

    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    changes.append(f"{width}x{height} ({width * height / 1e6:.1f} MP) -> {size[0]}x{size[1]}")
    return image.resize(size, Image.Resampling.LANCZOS)


def _encode(image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def prepare_image(source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> Prepared:
    """The image as the endpoint will take it, or :class:`ImageSkipped` with the reason."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as err:
        raise ImageSkipped(f"cannot be read ({type(err).__name__}: {err.strerror or err})") from None
    if not data:
        raise ImageSkipped("empty file")
    image = _open(data)
    fmt, mode, size = image.format, image.mode, image.size
    if min(size) < limits.min_side:
        raise ImageSkipped(f"too small to describe ({size[0]}x{size[1]} pixels)")
    fits = max(size) <= limits.max_side and size[0] * size[1] <= limits.max_pixels and len(data) <= limits.max_bytes
    rotated = image.getexif().get(0x0112, 1) != 1
    if fmt in SENDABLE and mode in _PLAIN_MODES | {"RGBA", "LA"} and fits and not rotated \
            and getattr(image, "n_frames", 1) == 1:
        return Prepared(data, SENDABLE[fmt], size)  # as found: nothing to fix
    changes: list[str] = []
    image = _shrink(_plain(image, changes), limits, changes)
    # graphics (PNG, GIF, palette) stay lossless when they fit; photos and scans become JPEG
    target = "PNG" if fmt in ("PNG", "GIF", "BMP") or mode in ("P", "1") else "JPEG"
    encoded = _encode(image, target)
    if len(encoded) > limits.max_bytes:
        target = "JPEG"
        for quality in _JPEG_QUALITIES:
            encoded = _encode(image, target, quality)
            if len(encoded) <= limits.max_bytes:
                break
        while len(encoded) > limits.max_bytes and min(image.size) > 64:  # noise compresses badly: smaller
            image = image.resize((image.size[0] * 3 // 4, image.size[1] * 3 // 4))
            encoded = _encode(image, target, _JPEG_QUALITIES[-1])
        if len(encoded) > limits.max_bytes:
            raise ImageSkipped(f"cannot be made smaller than {limits.max_bytes} bytes")
        changes.append(f"re-encoded to {len(encoded) / 1e6:.1f} MB")
    if fmt != target:
        changes.insert(0, f"{fmt or 'unknown format'} -> {target}")
    log.debug("image converted: %s", "; ".join(changes))
    return Prepared(encoded, SENDABLE[target], image.size, changes)
