"""A JPEG file's segments: a copy of the picture without its metadata; no I/O.

The codec keeps an original JPEG when re-encoding it would not make it smaller. It keeps the
picture only: the coded scans and the tables they need, none of the EXIF, XMP, ICC, IPTC,
comments, thumbnails or trailing data (an UltraHDR gain map, a second picture) around them.
"""

from __future__ import annotations

import re
import struct

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_SOS = 0xDA
_EOI_MARKER = 0xD9
# Huffman-coded, 8 bits a sample: baseline, extended sequential, progressive. Every decoder
# reads these; arithmetic coding, lossless and 12-bit JPEGs are not kept.
_PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
_OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# The picture's own: quantisation and Huffman tables, restart interval, the frame and the scans.
_PICTURE = frozenset({0xDB, 0xC4, 0xDD, *_PLAIN_FRAMES})
_APP0, _APP2, _APP14 = 0xE0, 0xE2, 0xEE
_JFIF_WITHOUT_THUMBNAIL_LENGTH = b"\xff\xe0\x00\x10"  # APP0 of 16 bytes: no thumbnail
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length
# In coded data a 0xFF byte is followed by 0x00 (a stuffed 0xFF) or a restart marker; anything
# else is the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def without_metadata(data: bytes, *, at_most: int | None = None) -> bytes | None:
    """The picture of a plain 8-bit, three-component JPEG with nothing else; None when the
    bytes are not one (another kind of JPEG, or not well formed), or when the picture alone
    would be more than `at_most` bytes.

    With `at_most`, a file whose header says no second picture follows (no MPF segment) is
    judged at its first scan: finding where the coded data ends means reading all of it, some
    0.3 ms for a photo, and the codec asks this of every JPEG it compresses.
    """
    if not data.startswith(_SOI):
        return None
    kept = [_SOI]
    position = 2
    frame_seen = False
    dropped = 0  # bytes of the header left out so far
    second_picture = False
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == _EOI_MARKER:
            if not frame_seen:
                return None
            picture = b"".join([*kept, _EOI])
            return picture if at_most is None or len(picture) <= at_most else None
        if marker in _STANDALONE:
            position += 2
            continue
        if position + 4 > len(data):
            return None
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = position + 2 + length
        if length < 2 or end > len(data):
            return None
        segment = data[position:end]
        if marker in _OTHER_FRAMES or (marker in _PLAIN_FRAMES and not _plain_frame(segment)):
            return None
        frame_seen = frame_seen or marker in _PLAIN_FRAMES
        if marker == _SOS:
            if at_most is not None and not second_picture and len(data) - dropped > at_most:
                return None  # the coded data is all that is left, and it is already too much
            coded = _NEXT_MARKER.search(data, end)
            if coded is None:
                return None
            kept.append(data[position : coded.start()])
            position = coded.start()
            continue
        if marker in _PICTURE or _is_adobe(marker, segment):
            kept.append(segment)
        elif _is_jfif(marker, segment):
            kept.append(_JFIF_WITHOUT_THUMBNAIL_LENGTH + segment[4:16] + b"\x00\x00")
            dropped += len(segment) - 18
        else:
            dropped += len(segment)
            second_picture = second_picture or (marker == _APP2 and segment[4:8] == b"MPF\x00")
        position = end
    return None  # no end of image: a cut-off file


def _plain_frame(segment: bytes) -> bool:
    # FF Cn, length (2), precision (1), height (2), width (2), components (1), ...
    return len(segment) >= 10 and segment[4] == 8 and segment[9] == 3


def _is_jfif(marker: int, segment: bytes) -> bool:
    """JFIF's header says the samples are YCbCr (its thumbnail, if any, goes)."""
    return marker == _APP0 and segment[4:9] == b"JFIF\x00" and len(segment) >= 18


def _is_adobe(marker: int, segment: bytes) -> bool:
    """Adobe's says whether the samples are RGB or YCbCr: without it a decoder may guess wrong."""
    return marker == _APP14 and segment[4:9] == b"Adobe"
