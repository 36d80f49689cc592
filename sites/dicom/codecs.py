"""Decoder availability per transfer syntax, and the package each missing decoder needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pydicom.pixels import get_decoder
from pydicom.uid import UID

# pip packages of medfed's `dicom-codecs` extra that decode each compressed
# transfer syntax (pylibjpeg 2 plugins); pydicom's decoders report the same
# names in `missing_dependencies`.
CODEC_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
}


@dataclass(frozen=True)
class DecoderGap:
    """A transfer syntax found in the data that no installed package decodes."""

    transfer_syntax: str
    name: str
    packages: str  # what `pip install` needs, e.g. "pylibjpeg pylibjpeg-openjpeg"

    def message(self) -> str:
        return (
            f"no decoder installed for {self.name} ({self.transfer_syntax}); "
            f"install {self.packages} (medfed's dicom-codecs extra)"
        )


@cache
def decoder_gap(transfer_syntax: str) -> DecoderGap | None:
    """Return what is missing to decode `transfer_syntax`, or None when a decoder is installed."""
    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return DecoderGap(transfer_syntax, "unknown transfer syntax", "no known package")
    if not uid.is_compressed:
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return DecoderGap(transfer_syntax, uid.name or "unknown transfer syntax", "no known package")
    if decoder.is_available:
        return None
    packages = CODEC_PACKAGES.get(transfer_syntax, "; ".join(decoder.missing_dependencies))
    return DecoderGap(transfer_syntax, uid.name, packages)
