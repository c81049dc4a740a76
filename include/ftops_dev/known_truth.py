"""The simulator's known truth: what a simulated prompt asks for, and whether an answer does the job.

Every prompt the simulator makes carries its truth in its own words (the review phrase, the city, the number of
kilometres, the support message; drifted ones too, :mod:`ftops_dev.drift`), so the truth is read back from the
prompt alone, whatever small talk, PII or near-duplicate noise the simulator added around it. That is what a
judge stand-in needs: it sees only the question and the answers.
"""

from __future__ import annotations

import re

from ftops_dev.drift import (
    DRIFT_CITIES,
    DRIFT_KM,
    DRIFT_NEGATIVE,
    DRIFT_NEUTRAL,
    DRIFT_POSITIVE,
    DRIFT_SUPPORT_ACTION,
    DRIFT_SUPPORT_MESSAGES,
)
from ftops_dev.task_types import (
    _ACTION_WORDS,
    _NEGATIVE,
    _NEUTRAL,
    _POSITIVE,
    _SUPPORT_PATTERNS,
    CITIES,
    TASKS,
    _shape_pattern,
    reference_response,
)

_SENTIMENT_PHRASES = {
    "positive": _POSITIVE + DRIFT_POSITIVE,
    "negative": _NEGATIVE + DRIFT_NEGATIVE,
    "neutral": _NEUTRAL + DRIFT_NEUTRAL,
}
_DRIFT_PHRASES = frozenset(p.lower() for p in DRIFT_POSITIVE + DRIFT_NEGATIVE + DRIFT_NEUTRAL)
_CITY_RES = {city: re.compile(rf"\b{re.escape(city)}\b", re.IGNORECASE) for city in CITIES + DRIFT_CITIES}
_KM_RE = re.compile(r"\b(\d{1,5})\s*(?:km\b|kilomet)", re.IGNORECASE)  # drift asks up to 99 999 km
_ALL_SUPPORT_PATTERNS = _SUPPORT_PATTERNS + tuple(
    (DRIFT_SUPPORT_ACTION, _shape_pattern(shape)) for shape in DRIFT_SUPPORT_MESSAGES
)


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower())


def expected_answer(task_type: str, prompt: str) -> str | None:
    """The answer slot a simulated prompt asks for (what its row's metadata calls ``expected``).

    Args:
        task_type: A simulated task type (a key of :data:`ftops_dev.task_types.TASKS`).
        prompt: The prompt, as the simulator made it or with its noise (case, whitespace, PII, small talk).

    Returns:
        The slot (a label, a city, metres as digits, or ``"<action>|<product>|<order>"``), or None when the
        prompt is not one the simulator makes for that task type (or it could be read two ways).

    Raises:
        ValueError: Unknown task type.
    """
    if task_type not in TASKS:
        raise ValueError(f"unknown task type {task_type!r}; known: {tuple(TASKS)}")
    found: set[str] = set()
    if task_type == "sentiment":
        text = _flat(prompt)
        found = {label for label, phrases in _SENTIMENT_PHRASES.items() if any(p.lower() in text for p in phrases)}
    elif task_type == "city_extraction":
        found = {city for city, pattern in _CITY_RES.items() if pattern.search(prompt)}
    elif task_type == "unit_conversion":
        found = {str(int(km) * 1000) for km in _KM_RE.findall(prompt) if int(km) > 0}
    else:  # support_reply
        for action, pattern in _ALL_SUPPORT_PATTERNS:
            for match in pattern.finditer(prompt):
                found.add(f"{action}|{_flat(match['product'])}|{match['order']}")
    return found.pop() if len(found) == 1 else None


def is_drifted(task_type: str, prompt: str) -> bool:
    """Whether a simulated prompt asks about a drifted entity (:mod:`ftops_dev.drift`): a new city, the new
    sentiment phrasing, a kilometre count of four digits or more, the new support problem.

    Raises:
        LookupError: The prompt is not one the simulator makes for ``task_type``.
        ValueError: Unknown task type.
    """
    expected = expected_answer(task_type, prompt)
    if expected is None:
        raise LookupError(f"not a simulated {task_type} prompt: its right answer is unknown")
    if task_type == "sentiment":
        return any(p in _flat(prompt) for p in _DRIFT_PHRASES)
    if task_type == "city_extraction":
        return expected in DRIFT_CITIES
    if task_type == "unit_conversion":
        return int(expected) >= DRIFT_KM[0] * 1000
    return expected.split("|")[0] == DRIFT_SUPPORT_ACTION


def is_right(task_type: str, prompt: str, answer: str) -> bool:
    """Whether ``answer`` does the job ``prompt`` asks for.

    For the exact task types: the answer equals the reference after normalisation (as the gate scores it).
    For ``support_reply``: the answer names the right action for the message's problem (and no other action)
    and the product, in any phrasing.

    Args:
        task_type: A simulated task type.
        prompt: A prompt the simulator made (see :func:`expected_answer`).
        answer: The answer to check.

    Raises:
        LookupError: The prompt is not one the simulator makes for ``task_type``: its truth is unknown.
        ValueError: Unknown task type.
    """
    from ftops.evaluation.metrics import normalise

    expected = expected_answer(task_type, prompt)
    if expected is None:
        raise LookupError(f"not a simulated {task_type} prompt: its right answer is unknown")
    if task_type != "support_reply":
        return normalise(answer) == normalise(reference_response(task_type, expected))
    action, product, _ = expected.split("|")
    text = _flat(answer)
    named = {a for a, words in _ACTION_WORDS.items() if any(w in text for w in words)}
    return named == {action} and re.search(rf"\b{_words(product)}\b", text) is not None


def _words(text: str) -> str:
    return r"\s+".join(re.escape(w) for w in text.split())
