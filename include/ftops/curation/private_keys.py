"""Removal of private key blocks (PEM and PGP) from text, including blocks cut short or pasted with
escaped newlines, for the scrubber.
"""

from __future__ import annotations

import re
from collections import Counter

_PRIVATE_KEY_BEGIN_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_END_RE = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_KEY_MATERIAL_LINE_RE = re.compile(r"\s*(?:[A-Za-z0-9+/=]{4,}|[A-Za-z][A-Za-z0-9-]*: .*)\s*")
_KEY_MATERIAL_INLINE_RE = re.compile(r"(?:\\r|\\n|[A-Za-z0-9+/=])*")  # a key pasted with escaped newlines


def remove_private_keys(text: str, counts: Counter[str]) -> tuple[str, bool]:
    """Replace private key blocks; best-effort removal of unterminated ones, which make the text unsafe.

    A BEGIN marker pairs with the first END marker after it unless another BEGIN comes first. An unpaired
    BEGIN takes the key-looking lines after it, an unpaired END the key-looking lines before it. Markers are
    found in one pass each, so the work stays linear however many markers the text holds.
    """
    begins = list(_PRIVATE_KEY_BEGIN_RE.finditer(text))
    ends = list(_PRIVATE_KEY_END_RE.finditer(text))
    if not begins and not ends:
        return text, False
    regions: list[tuple[int, int]] = []
    unsafe = False
    end_index = 0
    for position, begin in enumerate(begins):
        if regions and begin.start() < regions[-1][1]:
            continue  # inside a region already removed
        while end_index < len(ends) and ends[end_index].start() < begin.end():
            orphan = ends[end_index]
            if not regions or orphan.start() >= regions[-1][1]:
                regions.append(
                    (_extend_over_key_lines(text, orphan.start(), forward=False, floor=_floor(regions)), orphan.end())
                )
                unsafe = True
            end_index += 1
        next_begin = begins[position + 1].start() if position + 1 < len(begins) else len(text)
        if end_index < len(ends) and ends[end_index].start() < next_begin:
            regions.append((begin.start(), ends[end_index].end()))
            end_index += 1
        else:
            inline = _KEY_MATERIAL_INLINE_RE.match(text, begin.end())
            stop = inline.end() if inline else begin.end()
            regions.append((begin.start(), _extend_over_key_lines(text, stop, forward=True)))
            unsafe = True
    for orphan in ends[end_index:]:
        if not regions or orphan.start() >= regions[-1][1]:
            regions.append(
                (_extend_over_key_lines(text, orphan.start(), forward=False, floor=_floor(regions)), orphan.end())
            )
            unsafe = True
    pieces: list[str] = []
    cursor = 0
    for start, stop in regions:
        pieces.append(text[cursor:start])
        pieces.append("[PRIVATE_KEY]")
        cursor = stop
    pieces.append(text[cursor:])
    counts["PRIVATE_KEY"] += len(regions)
    return "".join(pieces), unsafe


def _floor(regions: list[tuple[int, int]]) -> int:
    return regions[-1][1] if regions else 0


def _extend_over_key_lines(text: str, position: int, *, forward: bool, floor: int = 0) -> int:
    """Move ``position`` over whole neighbouring lines that look like key material (base64, PEM headers)."""
    if forward:
        while position < len(text) and text[position] == "\n":
            line_end = text.find("\n", position + 1)
            line_end = len(text) if line_end == -1 else line_end
            if not _KEY_MATERIAL_LINE_RE.fullmatch(text, position + 1, line_end):
                break
            position = line_end
        return position
    while position > floor and text[position - 1] == "\n":
        line_start = max(text.rfind("\n", 0, position - 1) + 1, floor)
        if not _KEY_MATERIAL_LINE_RE.fullmatch(text, line_start, position - 1):
            break
        position = line_start
    return position
