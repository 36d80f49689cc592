"""Read one DICOM file's header without its pixels, and measure its pixel data.

`read_header` stops at the Pixel Data element and reads that element's own
header (tag, VR, length). It compares the bytes present in the file with the
bytes the image attributes require, so the header scan finds a truncated
file without reading any pixels.
"""

from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import pydicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medfed.data_contracts.dicom_values import number, unsigned_short

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VRs whose element header has 2 reserved bytes and a 4-byte length (DICOM PS3.5 7.1.2).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class HeaderlessFileError(InvalidDicomError):
    """A file without the Part-10 preamble and file meta, rejected in strict mode."""


@dataclass(frozen=True)
class PixelDataExtent:
    """How many pixel bytes a file declares, contains and needs."""

    encapsulated: bool
    declared: int | None  # the element's length field; None when encapsulated
    present: int  # bytes of the element's value that are in the file
    expected: int | None  # bytes the image attributes require; None when encapsulated
    items_complete: bool = True  # encapsulated only: every item and the delimiter are in the file

    @property
    def complete(self) -> bool:
        if self.encapsulated:
            return self.items_complete
        if self.expected is None:
            return True
        return self.present >= self.expected


@dataclass
class HeaderRead:
    dataset: Dataset
    part10: bool  # False when the transfer syntax was inferred from a header-less file
    pixels: PixelDataExtent | None  # None when the file has no Pixel Data element


@contextmanager
def quiet_validation() -> Iterator[None]:
    """Stop pydicom from warning about invalid values while reading, because its warnings quote them."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


def expected_pixel_bytes(ds: Dataset) -> int:
    """Return the byte count of native (uncompressed) pixel data that the image attributes require.

    Raises ValueError when Rows, Columns or BitsAllocated is missing.
    """
    rows = unsigned_short(ds, "Rows")
    columns = unsigned_short(ds, "Columns")
    bits = unsigned_short(ds, "BitsAllocated")
    if rows is None or columns is None or bits is None:
        raise ValueError("Rows, Columns and BitsAllocated are required to size the pixel data")
    frames = int(number(ds, "NumberOfFrames") or 1)
    samples = unsigned_short(ds, "SamplesPerPixel") or 1
    if bits == 1:
        return (rows * columns * frames * samples + 7) // 8
    return rows * columns * frames * samples * (bits // 8)


def read_header(path: Path, *, tolerant: bool = False) -> HeaderRead:
    """Read the header of `path` up to the pixel data and measure the pixel data.

    Raises HeaderlessFileError for a file without the Part-10 header unless
    `tolerant` is set, and pydicom's InvalidDicomError or another reading
    error for a file that is not DICOM or is corrupt.
    """
    size = os.path.getsize(path)
    with path.open("rb") as handle:
        part10 = _has_preamble(handle)
        if not part10 and not _starts_like_dataset(handle):
            raise InvalidDicomError("file is not DICOM: no Part-10 header and no data set at its start")
        if not part10 and not tolerant:
            raise HeaderlessFileError("file has no 128-byte preamble and DICM prefix (not DICOM Part-10)")
        ds = dcmread(handle, stop_before_pixels=True, force=not part10)
        position = handle.tell()
        if not part10 and "Rows" not in ds:
            raise InvalidDicomError("header-less file has no image attributes")
        pixels = _measure_pixel_data(handle, ds, position, size)
    return HeaderRead(dataset=ds, part10=part10, pixels=pixels)


def _encapsulated_items_complete(handle: BinaryIO, start: int, size: int, order: str) -> bool:
    """Walk the item headers of encapsulated pixel data, seeking past each fragment, up to the delimiter.

    Returns False when an item runs past the end of the file or the
    sequence delimiter is missing, so truncated compressed files are found
    without reading their fragments.
    """
    position = start
    while position + 8 <= size:
        handle.seek(position)
        group, element, length = struct.unpack(order + "HHI", handle.read(8))
        if (group, element) == (0xFFFE, 0xE0DD):
            return True
        if (group, element) != (0xFFFE, 0xE000) or length == UNDEFINED_LENGTH:
            return False
        position += 8 + length
    return False


def inferred_transfer_syntax(ds: Dataset) -> UID:
    """Return the transfer syntax pydicom inferred while reading a file without file meta."""
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _starts_like_dataset(handle: BinaryIO) -> bool:
    """Return whether the file starts with a group 0002 or 0008 element, as header-less DICOM does."""
    start = handle.read(4)
    handle.seek(0)
    if len(start) < 4:
        return False
    little_group, _ = struct.unpack("<HH", start)
    big_group, _ = struct.unpack(">HH", start)
    return little_group in (0x0002, 0x0008) or big_group in (0x0002, 0x0008)


def _has_preamble(handle: BinaryIO) -> bool:
    handle.seek(128)
    prefix = handle.read(4)
    handle.seek(0)
    return prefix == b"DICM"


def _measure_pixel_data(handle: BinaryIO, ds: Dataset, position: int, size: int) -> PixelDataExtent | None:
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        # The file position is inside the deflated stream, so the length is measured when decoding.
        return PixelDataExtent(encapsulated=False, declared=None, present=0, expected=None)
    handle.seek(position)
    header = handle.read(12)
    if len(header) < 8:
        return None
    little_endian = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    implicit_vr = ds.original_encoding[0] if ds.original_encoding[0] is not None else False
    order = "<" if little_endian else ">"
    group, element = struct.unpack(order + "HH", header[:4])
    if (group << 16 | element) != PIXEL_DATA_TAG:
        return None

    if implicit_vr:
        (length,) = struct.unpack(order + "I", header[4:8])
        value_start = position + 8
    elif header[4:6] in LONG_VRS:
        (length,) = struct.unpack(order + "I", header[8:12])
        value_start = position + 12
    else:
        (length,) = struct.unpack(order + "H", header[6:8])
        value_start = position + 8

    present = max(0, size - value_start)
    if length == UNDEFINED_LENGTH:
        complete = _encapsulated_items_complete(handle, value_start, size, order)
        return PixelDataExtent(encapsulated=True, declared=None, present=present, expected=None,
                               items_complete=complete)
    try:
        expected = expected_pixel_bytes(ds)
    except ValueError:
        expected = None
    return PixelDataExtent(encapsulated=False, declared=length, present=min(present, length), expected=expected)
