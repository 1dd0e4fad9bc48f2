"""Header quirks of real RSNA 2019 files, and the pixel encodings of the phantom's "scanners".

Clean series use one of three encodings that real head CTs use. The quirk set adds, each at
its own rate, the problems that make naive readers fail on the RSNA download. These are 12-bit
unsigned files whose negative HU wrapped around, MultiValue and zero-padded window tags, sizes
other than the requested one (some not square), missing InstanceNumber, a duplicated label row
and a truncated file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PixelEncoding:
    """Pixel storage of one scanner: ``hu = stored * slope + intercept`` before any fix."""

    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 signed (two's complement)
    intercept: float
    slope: float


ENCODINGS = {
    "unsigned_12bit": PixelEncoding(bits_stored=12, pixel_representation=0, intercept=-1024.0, slope=1.0),
    "signed_16bit": PixelEncoding(bits_stored=16, pixel_representation=1, intercept=-1024.0, slope=1.0),
    "signed_16bit_hu": PixelEncoding(bits_stored=16, pixel_representation=1, intercept=0.0, slope=1.0),
    # RSNA quirk: 12-bit unsigned with intercept 0 where negative HU were stored modulo 4096.
    # The usual fix adds 1000, subtracts 4096 from values of 4096 and above, and uses intercept -1000.
    "wrapped_12bit": PixelEncoding(bits_stored=12, pixel_representation=0, intercept=0.0, slope=1.0),
}
CLEAN_ENCODINGS = ("unsigned_12bit", "signed_16bit", "signed_16bit_hu")

# HU range every encoding stores exactly; the wrap-around fix only recovers HU >= -1000.
HU_RANGE = (-1000, 3000)

# Default rate of each quirk when the quirk set is on. Series-level quirks hit whole series,
# the others single files or label rows. Every quirk with a rate above zero occurs at least once.
QUIRK_RATES = {
    "wrapped_12bit": 0.15,  # per series
    "window_multivalue": 0.2,  # per series
    "window_zero_padded": 0.2,  # per series
    "odd_size": 0.1,  # per series: square, but not the requested size
    "non_square": 0.1,  # per series: more columns than rows
    "missing_instance_number": 0.02,  # per file
    "duplicate_label_row": 0.002,  # per image: its six label rows appear twice
    "truncated_file": 0.001,  # per file: pixel data cut short
}
QUIRK_NAMES = tuple(QUIRK_RATES)
SERIES_QUIRKS = ("wrapped_12bit", "window_multivalue", "window_zero_padded", "odd_size", "non_square")
FILE_QUIRKS = ("missing_instance_number", "duplicate_label_row", "truncated_file")


def resolve_quirks(quirks: Any) -> dict[str, float]:
    """Turn the ``quirks`` argument of ``generate_dataset`` into a rate per quirk name.

    Parameters
    ----------
    quirks
        None or False: no quirks. True or ``"all"``: every quirk at its default rate. An
        iterable of names: those quirks at their default rates. A mapping of name to rate in
        [0, 1]: those rates.

    Raises
    ------
    ValueError
        For an unknown quirk name or a rate outside [0, 1].
    """
    if quirks is None or quirks is False:
        return {}
    if quirks is True or quirks == "all":
        return dict(QUIRK_RATES)
    if isinstance(quirks, str):
        quirks = [quirks]
    if isinstance(quirks, Mapping):
        rates = {str(name): float(rate) for name, rate in quirks.items()}
    elif isinstance(quirks, Iterable):
        rates = {str(name): QUIRK_RATES.get(str(name), 0.0) for name in quirks}
    else:
        raise ValueError(f"quirks={quirks!r} is invalid; pass None, True, a list of quirk names or a dict of rates")

    unknown = sorted(set(rates) - set(QUIRK_NAMES))
    if unknown:
        raise ValueError(f"unknown quirk {', '.join(unknown)}; expected names from {', '.join(QUIRK_NAMES)}")
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"quirk rate {name}={rate} is outside [0, 1]")
    return {name: rates[name] for name in QUIRK_NAMES if rates.get(name, 0.0) > 0}


def choose_hits(rng: np.random.Generator, n_items: int, rate: float) -> np.ndarray:
    """Return the sorted indices of items hit by a quirk of ``rate``: at least one when rate > 0."""
    if rate <= 0 or n_items == 0:
        return np.zeros(0, dtype=np.int64)
    hits = np.flatnonzero(rng.random(n_items) < rate)
    if hits.size == 0:
        hits = np.array([rng.integers(n_items)])
    return np.sort(hits)


def encode_pixels(hu: np.ndarray, encoding: PixelEncoding | str) -> np.ndarray:
    """Return stored pixel values for integer HU in ``HU_RANGE``.

    Parameters
    ----------
    hu
        (H, W) integer HU, already clipped to ``HU_RANGE``.
    encoding
        A ``PixelEncoding`` or a key of ``ENCODINGS``.

    Returns
    -------
    np.ndarray
        (H, W) uint16 for unsigned encodings, int16 for signed ones.
    """
    name = encoding if isinstance(encoding, str) else None
    encoding = ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    hu = hu.astype(np.int32)
    if name == "wrapped_12bit":
        return np.mod(hu, 4096).astype(np.uint16)  # (H, W): HU below 0 wrap to 4096 + HU

    stored = np.rint((hu - encoding.intercept) / encoding.slope).astype(np.int32)
    if encoding.pixel_representation == 0:
        if stored.min() < 0 or stored.max() >= 2**encoding.bits_stored:
            raise ValueError(f"HU {hu.min()}..{hu.max()} do not fit {encoding.bits_stored} unsigned bits")
        return stored.astype(np.uint16)
    return stored.astype(np.int16)


def truncate_file(path, keep_fraction: float = 0.3) -> int:
    """Cut the end of a DICOM file so its PixelData is shorter than declared; return the new size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        data = handle.read()
    pixel_bytes = data.rfind(b"\xe0\x7f\x10\x00")  # PixelData tag (7FE0,0010) in little endian
    if pixel_bytes < 0:
        raise ValueError(f"{path}: no PixelData element found to truncate")
    header_end = pixel_bytes + 12  # tag, VR OW, two reserved bytes and a 4-byte length
    new_size = header_end + int((size - header_end) * keep_fraction)
    with open(path, "r+b") as handle:
        handle.truncate(new_size)
    return new_size
