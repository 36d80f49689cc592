"""Read short header values straight from pydicom's raw elements, for the header scan's hot path.

pydicom converts a raw element into typed values (DSfloat, MultiValue, UID)
on first access; in a profile of the scan over 2,100 small CT headers
(pydicom 3.0) that conversion took about two thirds as long as reading. The contract
rules need only a few values of plain VRs: CS, UI, DS and IS text in the
default character repertoire (ASCII), and US integers. These helpers decode
those bytes directly and fall back to pydicom's value when the element is
already converted. A malformed number reads as None, so its rule fails.
"""

from __future__ import annotations

from functools import cache

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag


@cache
def keyword_tag(keyword: str) -> BaseTag:
    """Return the tag of a DICOM keyword; raise KeyError for an unknown keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword!r} is not a DICOM keyword")
    return BaseTag(tag)


def text(ds: Dataset, keyword: str) -> str | None:
    """Return a CS, UI, DS or IS value as text without padding ("\\" between values), or None."""
    element = ds.get_item(keyword_tag(keyword))
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        if element.value is None:
            return text_from_converted(ds[element.tag].value)
        return element.value.decode("latin-1").strip(" \x00")
    return text_from_converted(element.value)


def text_from_converted(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(item) for item in value)
    return str(value).strip(" \x00")


def values(ds: Dataset, keyword: str) -> list[str]:
    """Return the values of a multi-valued text element, or an empty list when absent or empty."""
    value = text(ds, keyword)
    return value.split("\\") if value else []


def numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """Return the numbers of a DS or IS element, or None when absent, empty or malformed."""
    parts = values(ds, keyword)
    if not parts:
        return None
    try:
        return [float(part) for part in parts]
    except ValueError:
        return None


def number(ds: Dataset, keyword: str) -> float | None:
    """Return the single number of a DS or IS element, or None."""
    parsed = numbers(ds, keyword)
    return parsed[0] if parsed is not None and len(parsed) == 1 else None


def unsigned_short(ds: Dataset, keyword: str) -> int | None:
    """Return a US value (such as Rows), or None when absent or not 2 bytes long."""
    element = ds.get_item(keyword_tag(keyword))
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        if element.value is None or len(element.value) != 2:
            return None if element.value is not None else _converted_int(ds[element.tag].value)
        return int.from_bytes(element.value, "little" if element.is_little_endian else "big")
    return _converted_int(element.value)


def _converted_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
