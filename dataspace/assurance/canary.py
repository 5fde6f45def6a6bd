"""Canary values planted in raw data, and every encoding of them we search captured bytes for.

A canary is a value that exists only in a site's raw frames: a planted number
in one row, the constant of a planted episode, or an exact statistic of the
data (a per-dimension mean over the dataset or one episode). If any of its
encodings appears in what a connector sent, raw data left the site.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable

import numpy as np


def float_encodings(value: float, text_digits: Iterable[int] = (3, 4, 6)) -> list[bytes]:
    """float32/float64 in little- and big-endian bytes, repr, fixed-point text, JSON."""
    out: list[bytes] = []
    for x in {float(value), float(np.float32(value))}:
        for fmt in ("<d", ">d"):
            out.append(struct.pack(fmt, x))
        out.append(repr(x).encode())
        out.append(json.dumps(x).encode())
        out += [f"{x:.{d}f}".encode() for d in text_digits]
    f32 = np.float32(value)
    out += [struct.pack("<f", f32), struct.pack(">f", f32)]
    return sorted(set(out))


def stat_encodings(value: float) -> list[bytes]:
    """Encodings of an exact statistic that cannot collide by chance.

    float64 bytes (8 bytes) and text with at least 7 significant digits; a
    float32 pattern (4 bytes) or short text would match model weights by chance.
    """
    out = [struct.pack("<d", value), struct.pack(">d", value), repr(float(value)).encode()]
    out.append(f"{value:.7g}".encode())
    return sorted(set(o for o in out if len(o) >= 7))


def find(needles: Iterable[bytes], haystacks: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Every (where, needle) pair with ``needle`` in ``haystacks[where]``."""
    return [(w, n) for n in needles for w, h in haystacks.items() if n in h]
