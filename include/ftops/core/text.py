"""Untrusted text made safe to print or hand to an assistant.

Prompts, responses, reasons and rollback notes come from callers. Printed raw, an ANSI or OSC escape in them
recolours or retitles a terminal, hides lines, or plants a clickable link (OSC 8); passed to an assistant,
control characters hide text from the person reading the transcript. :func:`printable` removes every C0 and
C1 control character (and DEL), keeping line breaks and tabs only where the layout needs them.
"""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but \t and \n, DEL, C1
_CONTROLS_AND_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def printable(text: object, *, keep_breaks: bool = True) -> str:
    """``text`` (made a string) without C0/C1 control characters.

    Args:
        text: Any value; non-strings are formatted with ``str``.
        keep_breaks: Keep ``\\n`` and ``\\t`` (multi-line output); False turns each into a space (one line).
    """
    value = text if isinstance(text, str) else str(text)
    if keep_breaks:
        return _CONTROLS.sub("", value)
    return _CONTROLS_AND_BREAKS.sub(lambda m: " " if m.group() in "\t\n" else "", value)


def check_text(name: str, value: str) -> None:
    """Refuse text that no warehouse can store: a NUL character or a lone surrogate.

    Args:
        name: The field, named in the error (the value never is: it may be a user's data).
        value: The text.

    Raises:
        ValueError: The text holds a NUL character or a lone surrogate.
    """
    found = _UNSTORABLE.search(value)
    if found:
        what = "a NUL character" if found.group() == "\x00" else "a lone surrogate (not valid Unicode)"
        raise ValueError(f"{name} contains {what} at character {found.start()}")
