"""Reading images and depth maps, with errors that name the file, what was found and what was expected.

Depth formats:

| kind     | file                          | values                                            |
|----------|-------------------------------|---------------------------------------------------|
| `png16`  | 16-bit single-channel PNG     | integer codes (e.g. NYU millimetres): need a scale |
| `pfm`    | PFM, 1 channel (`Pf`)         | float, as stored                                  |
| `npy`    | NumPy array, float dtype      | float, as stored                                  |
| `npy_int`| NumPy array, integer dtype    | integer codes: need a scale                       |

8-bit PNGs are refused for depth: 256 levels cannot hold a depth map, and such files are almost always a
visualisation saved by mistake. `INTEGER_KINDS` lists the kinds whose values are codes in some unit.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from trainer.errors import DataError

DEPTH_EXTENSIONS = (".png", ".pfm", ".npy")
INTEGER_KINDS = frozenset({"png16", "npy_int"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as uint8 `[H, W, 3]`. Grayscale, palette and RGBA files are converted (alpha dropped).

    EXIF orientation is deliberately not applied: depth maps are stored pixel-aligned with the raw image.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode != "RGB":
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    raise DataError(f"{p}: found a 16-bit single-channel image where an RGB image was expected "
                                    f"(is this a depth map listed in the image column?)")
                im = im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image file not found: {p}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"{p}: cannot read image ({_reason(exc)}); expected a complete JPEG or PNG file "
                        f"(truncated or corrupt?)") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{p}: found image array of shape {arr.shape}; expected [H, W, 3]")
    return arr


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"image file not found: {p}") from None
    except Exception as exc:
        raise DataError(f"{p}: cannot read image header ({_reason(exc)}); expected a JPEG or PNG file") from None
    return h, w


# --------------------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------------------


def read_depth(path: str | Path) -> tuple[np.ndarray, str]:
    """A depth (or disparity) map as float32 `[H, W]` and its kind (`png16`, `pfm`, `npy`, `npy_int`).

    Values are returned as stored; integer kinds (`INTEGER_KINDS`) need a unit scale applied by the caller.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"depth file not found: {p}")
    ext = p.suffix.lower()
    if ext == ".png":
        return _read_png_depth(p), "png16"
    if ext == ".pfm":
        arr, _ = read_pfm(p)
        if arr.ndim == 3:
            raise DataError(f"{p}: found a 3-channel (colour 'PF') PFM of shape {arr.shape}; expected a "
                            f"single-channel ('Pf') depth map [H, W]")
        return arr, "pfm"
    if ext == ".npy":
        return _read_npy_depth(p)
    raise DataError(f"{p}: unsupported depth file type {p.suffix!r}; expected one of {', '.join(DEPTH_EXTENSIONS)} "
                    f"(16-bit PNG, PFM or NumPy .npy)")


def _png_header(p: Path) -> tuple[int, int, int, int]:
    """(height, width, bit depth, colour type) from the PNG IHDR chunk."""
    with open(p, "rb") as f:
        head = f.read(33)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{p}: not a PNG file (found {len(head)} header bytes without the PNG signature/IHDR "
                        f"chunk; truncated, or another format with a .png name?)")
    w, h = struct.unpack(">II", head[16:24])
    return h, w, head[24], head[25]


def _read_png_depth(p: Path) -> np.ndarray:
    h, w, bits, color = _png_header(p)
    kind = _PNG_COLOR_TYPES.get(color, f"colour type {color}")
    if _PNG_CHANNELS.get(color, 0) != 1 or color == 3:
        shape = (h, w, _PNG_CHANNELS[color]) if color in _PNG_CHANNELS else (h, w)
        raise DataError(f"{p}: found a {bits}-bit {kind} PNG of shape {shape}; expected a single-channel 16-bit "
                        f"depth PNG [H, W] (a colour PNG is usually a visualisation, not depth)")
    if bits != 16:
        raise DataError(f"{p}: found an {bits}-bit grayscale PNG ({h}x{w}); 8-bit PNGs are refused for depth (256 levels "
                        f"cannot hold a depth map; such files are usually visualisations). Expected a 16-bit PNG "
                        f"(uint16, e.g. millimetres), a PFM or a float .npy file")
    try:
        with Image.open(p) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        raise DataError(f"{p}: cannot read depth PNG ({_reason(exc)}); truncated or corrupt file?") from None
    if arr.ndim != 2:
        raise DataError(f"{p}: found depth array of shape {arr.shape}; expected [H, W]")
    return arr.astype(np.float32)


def _read_npy_depth(p: Path) -> tuple[np.ndarray, str]:
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{p}: cannot read NumPy depth file ({_reason(exc)}); truncated or corrupt file?") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{p}: found a NumPy archive with several arrays; expected one .npy array [H, W]")
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[2]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
    if arr.ndim != 2:
        raise DataError(f"{p}: found a depth array of shape {arr.shape}; expected a single-channel map [H, W] "
                        f"([1, H, W] and [H, W, 1] are accepted)")
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False), "npy"
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        return arr.astype(np.float32), "npy_int"
    raise DataError(f"{p}: found dtype {arr.dtype}; expected a float (metres/disparity) or integer-coded array")


# --------------------------------------------------------------------------------------------------------------
# PFM (Portable Float Map)
# --------------------------------------------------------------------------------------------------------------

_PFM_HEADER = re.compile(rb"\A(P[Ff])\s+(\d+)\s+(\d+)\s+([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s")


def read_pfm(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a PFM file: float32 `[H, W]` (`Pf`) or `[H, W, 3]` (`PF`), top row first, and |scale|.

    PFM stores rows bottom to top; the sign of the scale gives the byte order (negative: little endian).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read PFM file ({_reason(exc)})") from None
    m = _PFM_HEADER.match(data[:256])
    if not m:
        raise DataError(f"{p}: not a PFM file (found header {data[:20]!r}); expected 'Pf' or 'PF', then "
                        f"'<width> <height>' and a scale")
    channels = 3 if m.group(1) == b"PF" else 1
    w, h, scale = int(m.group(2)), int(m.group(3)), float(m.group(4))
    if w <= 0 or h <= 0 or scale == 0:
        raise DataError(f"{p}: invalid PFM header (width {w}, height {h}, scale {scale}); expected positive sizes "
                        f"and a non-zero scale")
    order = "<" if scale < 0 else ">"
    need = w * h * channels * 4
    body = data[m.end():]
    if len(body) < need:
        raise DataError(f"{p}: truncated PFM file: found {len(body)} bytes of pixel data, expected {need} "
                        f"({w}x{h}x{channels} float32)")
    arr = np.frombuffer(body[:need], dtype=f"{order}f4").reshape((h, w, channels) if channels == 3 else (h, w))
    return np.ascontiguousarray(arr[::-1]).astype(np.float32), abs(scale)


def write_pfm(path: str | Path, array: np.ndarray, *, little_endian: bool = True) -> None:
    """Write float data `[H, W]` or `[H, W, 3]` (top row first) as PFM (rows stored bottom to top)."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 2:
        tag = b"Pf"
    elif arr.ndim == 3 and arr.shape[2] == 3:
        tag = b"PF"
    else:
        raise ValueError(f"write_pfm: found array of shape {arr.shape}; expected [H, W] or [H, W, 3]")
    h, w = arr.shape[:2]
    scale = -1.0 if little_endian else 1.0
    out = arr[::-1].astype("<f4" if little_endian else ">f4")
    with open(path, "wb") as f:
        f.write(tag + b"\n" + f"{w} {h}\n{scale}\n".encode("ascii"))
        f.write(np.ascontiguousarray(out).tobytes())


# --------------------------------------------------------------------------------------------------------------
# Pair checks
# --------------------------------------------------------------------------------------------------------------


def check_depth_matches_image(depth: np.ndarray, image_hw: tuple[int, int], depth_path: str | Path,
                              image_path: str | Path, where: Optional[str] = None) -> None:
    """Raise `DataError` unless `depth` is `[H, W]` with the image's H and W (naming both files and shapes)."""
    if depth.ndim != 2 or tuple(depth.shape) != tuple(image_hw):
        at = f"{where}: " if where else ""
        raise DataError(f"{at}depth {depth_path} has shape {tuple(depth.shape)} but image {image_path} is "
                        f"{image_hw[0]}x{image_hw[1]} (HxW); expected a single-channel depth map of the image's "
                        f"size {tuple(image_hw)}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


def png_info(path: str | Path) -> tuple[int, str]:
    """(bit depth, colour type name) of a PNG file, for diagnostics."""
    _, _, bits, color = _png_header(Path(path))
    return bits, _PNG_COLOR_TYPES.get(color, str(color))


def write_depth_png16(path: str | Path, depth_m: np.ndarray, *, scale: float = 1000.0) -> None:
    """Write metres as a 16-bit PNG of integer codes `round(depth * scale)` (NYU: millimetres); non-finite or
    out-of-range values are written as 0 (invalid)."""
    d = np.asarray(depth_m, dtype=np.float64) * scale
    ok = np.isfinite(d) & (d > 0) & (d <= 65535)
    codes = np.where(ok, np.rint(d), 0).astype(np.uint16)
    Image.fromarray(codes).save(path)

