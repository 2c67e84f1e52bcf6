"""Image decoding, validation and resizing (never raises on a bad image: returns a reason)."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # large photos are expected; decompression bombs are not


@dataclass(frozen=True)
class Decoded:
    image: Image.Image | None
    # why decoding failed, as stable text ("<ExceptionType>: <message>"): identical bytes give identical
    # text in every run, so manifests of identical runs are byte-equal
    cause: str | None = None

    @property
    def error(self) -> str | None:
        return None if self.cause is None else f"unreadable image ({self.cause})"


# PIL's messages can embed object reprs such as "<_io.BytesIO object at 0x7f...>" (different in every
# process): drop such reprs, and any other memory address
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_error(err: BaseException) -> str:
    """An exception as stable text: its type and message without memory addresses."""
    message = _ADDRESS.sub("", _OBJECT_REPR.sub("", str(err))).strip()
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def decode(data: bytes) -> Decoded:
    """Fully decode image bytes to upright RGB, or say why that is impossible.

    Every user image is read here, so the EXIF orientation a camera wrote is applied once for all
    callers (data build, captioners, Unified-Bench folders): a rotated phone photo is seen upright.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
            image = ImageOps.exif_transpose(image)
    except Exception as err:  # PIL raises many types for corrupt data; each becomes a logged reason
        return Decoded(None, describe_error(err))
    return Decoded(to_rgb(image), None)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def array_to_png(array: np.ndarray) -> bytes:
    """Encode a numpy image (bool/float/uint8; gray, RGB or RGBA) as PNG bytes."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo if hi > lo else 1.0) * 255).round().astype(np.uint8)
    return png_bytes(to_rgb(Image.fromarray(array)))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def perceptual_hash(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def square(image: Image.Image, side: int) -> Image.Image:
    """Centre crop to a square and resize (Lanczos) to side x side."""
    return ImageOps.fit(image, (side, side), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")
