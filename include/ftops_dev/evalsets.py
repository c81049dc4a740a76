"""The simulator's labelled eval-set files: prompts with their known right answers, as a team's hand-labelled set.

A team brings its eval set as a JSONL file of ``{"prompt": ..., "reference": ...}`` lines (``ftops evalset
import FILE --task-type T``). The demo imports the file this module writes: for each task type, rows whose
prompts are made by the simulator's own generator (:data:`ftops_dev.task_types.TASKS`) and whose references are
the simulator's known right answers (:func:`~ftops_dev.task_types.reference_response`).

An eval set that misses a city or a phrasing measures nothing about it, so the rows *cover* what the simulator
can generate: every value of every choice the generator makes (each label and phrase, product, review shape,
aside, city, sentence, prompt template, opener and closer) appears in at least one row, and the kilometres of
unit conversion spread over the generator's range, both ends included (:data:`KM_SPREAD`).

The prompts are not rebuilt here: the generator itself makes each row, given a :class:`ScriptedRandom` that
answers some of its random draws with preset values (the choices a coverage row needs) and draws the rest from
a seeded source. So a labelled prompt is always one the simulator could have logged, whatever a task type's
templates become. Unlike logged prompts, labelled ones carry no planted PII and no near-duplicate edits.

With ``drift_share`` (``ftops simulate-evalset --drift-share 0.3``) a share of the rows asks about the drifted
entities of :mod:`ftops_dev.drift` (new cities, a new sentiment phrasing, larger numbers, a new support
problem), covering them in the same way (:data:`DRIFT_COVERAGE`); without it the set is as it always was.

Adding a task type (say ``support_reply``) takes one entry in :data:`COVERAGE`: for each of its generator's
draws, the values to cover (``each(_ISSUES)``, ``indices(_SUPPORT_PROMPTS)``, ...). A task type without an entry
gets rows from the generator unscripted (no coverage guarantee), and a test says so.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ftops_dev import drift
from ftops_dev import task_types as tt

logger = logging.getLogger(__name__)

DEFAULT_ROWS = 180  # > 150 asked for, and > the longest coverage axis (45 sentiment phrases) with room for the rest
DEFAULT_SEED = 7
_MAX_DRAWS_PER_ROW = 200  # a new draw per duplicate prompt; thousands of distinct prompts exist per task type

# A pick presets one random draw of a generator: ("choice", id(sequence)) -> the element to return, or
# ("randrange", args) / ("randint", args) -> the number to return. A coverage value is a tuple of picks.
PickKey = tuple[str, Hashable]
Picks = tuple[tuple[PickKey, Any], ...]
T = TypeVar("T")


class ScriptedRandom(random.Random):
    """A :class:`random.Random` that answers preset draws with preset values and every other draw at random.

    Draws are recognised by what is drawn from: ``choice(seq)`` by the identity of ``seq`` (the generators draw
    from module-level tuples), ``randrange(*args)`` and ``randint(*args)`` by their arguments. Each preset is
    used for every matching draw; :meth:`unused` names those no draw asked for, so that a generator which
    stopped making a draw is noticed instead of silently losing coverage.

    Args:
        seed: Seed of the draws that are not preset.
        picks: The preset draws.
    """

    def __init__(self, seed: int, picks: Picks = ()) -> None:
        super().__init__(seed)
        self._picks = dict(picks)
        self._used: set[PickKey] = set()

    def _preset(self, key: PickKey) -> tuple[bool, Any]:
        if key in self._picks:
            self._used.add(key)
            return True, self._picks[key]
        return False, None

    def choice(self, seq: Sequence[T]) -> T:  # type: ignore[override]  # typeshed's protocol, not Sequence
        """``random.choice``, or the preset element for this sequence."""
        found, value = self._preset(("choice", id(seq)))
        return value if found else super().choice(seq)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        """``random.randrange``, or the preset number for these arguments."""
        found, value = self._preset(("randrange", (start, stop, step)))
        return int(value) if found else super().randrange(start, stop, step)

    def randint(self, a: int, b: int) -> int:
        """``random.randint``, or the preset number for these bounds."""
        found, value = self._preset(("randint", (a, b)))
        return int(value) if found else super().randint(a, b)

    def unused(self) -> list[PickKey]:
        """The preset draws that no draw asked for."""
        return [key for key in self._picks if key not in self._used]


def each(seq: Sequence[Any]) -> list[Picks]:
    """One coverage value per distinct element of ``seq``: ``choice(seq)`` returns it."""
    return [((("choice", id(seq)), value),) for value in dict.fromkeys(seq)]


def indices(seq: Sequence[Any]) -> list[Picks]:
    """One coverage value per index of ``seq``, for a generator that draws ``randrange(len(seq))``."""
    return [((("randrange", (len(seq), None, 1)), k),) for k in range(len(seq))]


def _sentiment_phrases() -> list[Picks]:
    # The label is drawn first and picks the phrase list: preset both, so each phrase comes with its own label.
    lists = {"positive": tt._POSITIVE, "negative": tt._NEGATIVE, "neutral": tt._NEUTRAL}
    return [
        ((("choice", id(tt.SENTIMENT_LABELS)), label), (("choice", id(phrases)), phrase))
        for label, phrases in lists.items()
        for phrase in phrases
    ]


def _support_messages() -> list[Picks]:
    # The action is drawn first and picks the message shapes: preset both, so each shape comes with its action.
    return [
        ((("choice", id(tt.SUPPORT_ACTIONS)), action), (("choice", id(shapes)), shape))
        for action, shapes in tt._SUPPORT_MESSAGES.items()
        for shape in shapes
    ]


# Kilometre values every unit-conversion set holds: both ends of the generator's range (1 and 999), one to
# three digits, round and odd numbers; the rest of the rows draw from the generator's range like the logs do.
KM_SPREAD: tuple[int, ...] = (1, 2, 3, 7, 9, 10, 12, 25, 42, 64, 99, 100, 101, 128, 250, 365, 404, 500, 512,
                              640, 750, 808, 900, 998, 999)  # fmt: skip
_DECORATION: dict[str, list[Picks]] = {"opener": each(tt._OPENERS), "closer": each(tt._CLOSERS)}

# Per task type, per generator draw: the values a labelled set must cover.
COVERAGE: dict[str, dict[str, list[Picks]]] = {
    "sentiment": {
        "phrase": _sentiment_phrases(),
        "product": each(tt._PRODUCTS),
        "review_shape": each(tt._REVIEW_SHAPES),
        "aside": each(tt._REVIEW_ASIDES),
        "template": indices(tt._SENTIMENT_PROMPTS),
        **_DECORATION,
    },
    "city_extraction": {
        "city": each(tt.CITIES),
        "sentence": each(tt._CITY_SENTENCES),
        "template": indices(tt._CITY_PROMPTS),
        **_DECORATION,
    },
    "support_reply": {
        "message": _support_messages(),
        "product": each(tt._PRODUCTS),
        "aside": each(tt._SUPPORT_ASIDES),
        "template": indices(tt._SUPPORT_PROMPTS),
        **_DECORATION,
    },
    "unit_conversion": {
        "km": [((("randint", (1, 999)), km),) for km in KM_SPREAD],
        "template": indices(tt._UNIT_PROMPTS),
        **_DECORATION,
    },
}


# Drifted rows (drift_share > 0) cover what drift adds (ftops_dev.drift): its entities and its own tables; the
# draws they share with the first day's generators (products, openers, closers...) are left to chance.
DRIFT_KM_SPREAD: tuple[int, ...] = (1000, 1001, 1024, 1500, 2048, 3333, 5000, 7777, 9999, 10000, 10001, 12345,
                                    20000, 31337, 42195, 50000, 65536, 77777, 88888, 99998, 99999)  # fmt: skip
_DRIFT_PHRASES = (drift.DRIFT_POSITIVE, drift.DRIFT_NEGATIVE, drift.DRIFT_NEUTRAL)  # in SENTIMENT_LABELS' order
DRIFT_COVERAGE: dict[str, dict[str, list[Picks]]] = {
    "sentiment": {
        "phrase": [
            ((("choice", id(tt.SENTIMENT_LABELS)), label), (("choice", id(phrases)), phrase))
            for label, phrases in zip(tt.SENTIMENT_LABELS, _DRIFT_PHRASES, strict=True)
            for phrase in phrases
        ],
        "review_shape": each(drift._DRIFT_REVIEW_SHAPES),
        "template": indices(drift._DRIFT_SENTIMENT_PROMPTS),
    },
    "city_extraction": {"city": each(drift.DRIFT_CITIES), "template": indices(tt._CITY_PROMPTS)},
    "support_reply": {"message": each(drift.DRIFT_SUPPORT_MESSAGES), "template": indices(tt._SUPPORT_PROMPTS)},
    "unit_conversion": {
        "km": [((("randint", drift.DRIFT_KM), km),) for km in DRIFT_KM_SPREAD],
        "template": indices(tt._UNIT_PROMPTS),
    },
}


def prompt_key(prompt: str) -> str:
    """What makes two prompts the same question to a reader: case, spacing and punctuation do not."""
    return " ".join(re.sub(r"[^\w]+", " ", prompt.casefold()).split())


def labelled_rows(
    task_type: str, *, n: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED, drift_share: float = 0.0
) -> list[dict[str, str]]:
    """Labelled rows for one task type: simulator prompts and their known right answers, covering every choice.

    Row ``i`` presets, for each coverage axis of the task type, the ``i``-th value of that axis (in an order
    shuffled by the seed) while ``i`` is below the axis's length, so the first rows cover every value of every
    axis; the remaining rows are the generator's own draws. A prompt that repeats an earlier one (also up to
    case, spacing and punctuation: :func:`prompt_key`) is drawn again.

    With ``drift_share``, the last ``round(n * drift_share)`` rows are drifted prompts (:mod:`ftops_dev.drift`:
    new cities, the new sentiment phrasing, larger numbers, the new support problem) covering
    :data:`DRIFT_COVERAGE` in the same way, and the rows before them are the first rows of the set without
    drift: a yardstick can tell whether a model learnt the new entities
    (:func:`ftops_dev.known_truth.is_drifted` tells the rows apart).

    Args:
        task_type: A simulated task type (a key of :data:`ftops_dev.task_types.TASKS`).
        n: Rows to make; at least the longest coverage axis of the task type (each part's, with drift).
        seed: The same seed gives the same rows.
        drift_share: Share of the rows that ask about drifted entities (0, the default: none).

    Returns:
        ``n`` rows ``{"prompt": str, "reference": str}`` with distinct prompts.

    Raises:
        ValueError: Unknown task type, ``drift_share`` not in [0, 1], ``n`` too small to cover every value, or
            the generator no longer makes a draw that the coverage spec presets.
        RuntimeError: The generator cannot make ``n`` distinct prompts.
    """
    if task_type not in tt.TASKS:
        raise ValueError(f"unknown task type {task_type!r}; simulated: {sorted(tt.TASKS)}")
    if not 0.0 <= drift_share <= 1.0:
        raise ValueError(f"drift_share must be in [0, 1], got {drift_share}")
    n_drift = round(n * drift_share)
    seen: set[str] = set()
    rows = _covering_rows(task_type, n - n_drift, COVERAGE.get(task_type), tt.TASKS[task_type][0],
                          random.Random(f"ftops-evalset/{task_type}/{seed}"), seen)  # fmt: skip
    if n_drift:
        rows += _covering_rows(f"{task_type} (drift)", n_drift, DRIFT_COVERAGE.get(task_type),
                               drift.DRIFT_TASKS[task_type][0], random.Random(f"ftops-evalset-drift/{task_type}/{seed}"),
                               seen, reference_of=task_type)  # fmt: skip
    return rows


def _covering_rows(
    name: str, n: int, axes: dict[str, list[Picks]] | None, make: Callable[[random.Random], tuple[str, str, int]],
    rng: random.Random, seen: set[str], reference_of: str | None = None,
) -> list[dict[str, str]]:  # fmt: skip
    """``n`` rows of generator ``make`` covering ``axes`` (see :func:`labelled_rows`), new to ``seen`` (updated)."""
    if axes is None:
        logger.warning("No coverage spec for %s: its labelled rows are plain generator draws", name)
        axes = {}
    needed = max((len(values) for values in axes.values()), default=0)
    if n < needed:
        raise ValueError(f"{name}: n={n} cannot cover every value; the longest axis needs {needed} rows")
    # str seeds (the callers') hash stably (SHA-512), not by PYTHONHASHSEED
    orders = {axis: rng.sample(values, len(values)) for axis, values in sorted(axes.items())}
    rows: list[dict[str, str]] = []
    for i in range(n):
        picks: Picks = tuple(pick for order in orders.values() if i < len(order) for pick in order[i])
        for _ in range(_MAX_DRAWS_PER_ROW):
            scripted = ScriptedRandom(rng.getrandbits(64), picks)
            prompt, answer, _template = make(scripted)
            if unused := scripted.unused():
                raise ValueError(f"{name}: the generator made no draw for the preset(s) {unused}: update COVERAGE")
            if prompt_key(prompt) not in seen:
                break
        else:
            raise RuntimeError(f"{name}: no new prompt in {_MAX_DRAWS_PER_ROW} draws for row {i}")
        seen.add(prompt_key(prompt))
        rows.append({"prompt": prompt, "reference": tt.reference_response(reference_of or name, answer)})
    return rows


def write_labelled(
    folder: Path,
    task_types: Iterable[str] = tt.TASK_TYPES,
    *,
    n: int = DEFAULT_ROWS,
    seed: int = DEFAULT_SEED,
    drift_share: float = 0.0,
) -> dict[str, Path]:
    """Write one ``<task_type>.jsonl`` per task type, ready for ``ftops evalset import FILE --task-type T``.

    Args:
        folder: Where the files go (created if missing); existing files of the same names are replaced.
        task_types: Simulated task types.
        n: Rows per task type.
        seed: The same seed gives the same files.
        drift_share: Share of each file's rows that ask about drifted entities (see :func:`labelled_rows`).

    Returns:
        The written file of each task type.

    Raises:
        ValueError: See :func:`labelled_rows`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for task_type in task_types:
        rows = labelled_rows(task_type, n=n, seed=seed, drift_share=drift_share)
        path = folder / f"{task_type}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a file
        logger.info("Wrote %d labelled %s rows to %s", len(rows), task_type, path)
        written[task_type] = path
    return written
