"""The simulator's labelled eval-set files: covering, deterministic, distinct, rightly labelled, importable.

Coverage is checked on the prompt text against the simulator's own tables (every phrase, product, city,
sentence and template skeleton must show up in some prompt), not through the coverage spec that made the rows,
so a spec that forgot a value or a scripted draw that stopped landing fails here.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from ftops_dev import task_types as tt
from ftops_dev.evalsets import COVERAGE, KM_SPREAD, ScriptedRandom, labelled_rows, prompt_key, write_labelled

T = TypeVar("T")
# The task types whose prompts these tests read (labels, cities, kilometres); the rest get the generic checks.
CHECKED = ("sentiment", "city_extraction", "unit_conversion")
LABEL_PHRASES = {"positive": tt._POSITIVE, "negative": tt._NEGATIVE, "neutral": tt._NEUTRAL}


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict[str, str]]]:
    return {t: labelled_rows(t) for t in tt.TASK_TYPES}


@pytest.fixture(scope="module", params=["default", "fewest"])
def covering(request: pytest.FixtureRequest) -> dict[str, list[dict[str, str]]]:
    """The default rows, and the fewest rows that can cover (where chance alone would leave gaps)."""
    if request.param == "default":
        return {t: labelled_rows(t) for t in CHECKED}
    return {t: labelled_rows(t, n=max(len(v) for v in COVERAGE[t].values())) for t in CHECKED}


def _skeleton(template: str, slot: str) -> re.Pattern[str]:
    """A template as a regex: its fixed text, anything in the slot."""
    return re.compile(re.escape(template).replace(re.escape("{" + slot + "}"), ".+?"), re.DOTALL)


def _matches(pattern: re.Pattern[str], prompts: list[str]) -> bool:
    return any(pattern.search(p) for p in prompts)


def _strip_decoration(prompt: str) -> tuple[str, str, str]:
    """(opener, body, closer) of a prompt, trying the longest opener and closer first."""
    opener = max((o for o in tt._OPENERS if prompt.startswith(o)), key=len)
    rest = prompt[len(opener) :]
    closer = max((c for c in tt._CLOSERS if rest.endswith(c)), key=len)
    return opener, rest[: len(rest) - len(closer)], closer


def test_every_simulated_task_type_has_a_coverage_spec() -> None:
    """A task type added to the simulator without a spec would get rows with no coverage guarantee."""
    assert set(tt.TASK_TYPES) <= set(COVERAGE)


class _Recording(random.Random):
    """Records what a generator draws from: each table it chooses from, each range."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.tables: dict[int, tuple[object, ...]] = {}
        self.ranges: set[tuple[str, tuple[int | None, ...]]] = set()

    def choice(self, seq: Sequence[T]) -> T:  # type: ignore[override]  # typeshed's protocol, not Sequence
        self.tables[id(seq)] = tuple(seq)
        return super().choice(seq)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        self.ranges.add(("randrange", (start, stop, step)))
        return super().randrange(start, stop, step)

    def randint(self, a: int, b: int) -> int:
        self.ranges.add(("randint", (a, b)))
        return random.Random.randrange(self, a, b + 1)


@pytest.mark.parametrize("task_type", tt.TASK_TYPES)
def test_the_spec_covers_every_draw_the_generator_makes(task_type: str) -> None:
    """Found by watching the generator draw, so a table or template added to it later needs a spec entry."""
    tables: dict[int, tuple[object, ...]] = {}
    ranges: set[tuple[str, tuple[int | None, ...]]] = set()
    for seed in range(300):
        recording = _Recording(seed)
        tt.TASKS[task_type][0](recording)
        tables.update(recording.tables)
        ranges |= recording.ranges
    covered: dict[tuple[str, object], set[object]] = {}
    for values in COVERAGE.get(task_type, {}).values():
        for picks in values:
            for key, value in picks:
                covered.setdefault(key, set()).add(value)
    for table_id, table in tables.items():
        assert covered.get(("choice", table_id)) == set(table), f"{task_type}: a table not covered: {table[:3]}..."
    for kind, args in ranges:
        if kind == "randrange":
            start, stop, step = args
            every = range(start) if stop is None else range(start, stop, step)  # type: ignore[arg-type]
            assert covered.get((kind, args)) == set(every), f"{task_type}: randrange{args} not covered"
        else:  # a wide number range: both ends and a spread, not every value
            got = covered.get((kind, args), set())
            assert {args[0], args[1]} <= got and len(got) >= 20, f"{task_type}: randint{args} not spread"


@pytest.mark.parametrize("task_type", tt.TASK_TYPES)
def test_at_least_150_distinct_prompts(rows: dict[str, list[dict[str, str]]], task_type: str) -> None:
    got = rows[task_type]
    assert len(got) >= 150
    assert all(set(r) == {"prompt", "reference"} and r["prompt"] and r["reference"] for r in got)
    assert len({r["prompt"] for r in got}) == len(got)
    assert len({prompt_key(r["prompt"]) for r in got}) == len(got)  # not even a case or punctuation variant


@pytest.mark.parametrize("task_type", tt.TASK_TYPES)
def test_same_seed_same_rows_other_seed_other_rows(task_type: str) -> None:
    assert labelled_rows(task_type, seed=3) == labelled_rows(task_type, seed=3)
    assert labelled_rows(task_type, seed=3) != labelled_rows(task_type, seed=4)
    assert labelled_rows(task_type, n=200)[:150] == labelled_rows(task_type, n=150)  # more rows extend, not reshuffle
    assert len(labelled_rows(task_type, n=400)) == 400


@pytest.mark.parametrize("task_type", CHECKED)
def test_openers_closers_and_the_undecorated_form_all_occur(
    covering: dict[str, list[dict[str, str]]], task_type: str
) -> None:
    parts = [_strip_decoration(r["prompt"]) for r in covering[task_type]]
    assert {o for o, _, _ in parts} == set(tt._OPENERS)  # "" included: some prompts have no opener
    assert {c for _, _, c in parts} == set(tt._CLOSERS)


def test_sentiment_covers_every_label_phrase_product_shape_aside_and_template(
    covering: dict[str, list[dict[str, str]]],
) -> None:
    got = covering["sentiment"]
    prompts = [r["prompt"] for r in got]
    assert {r["reference"] for r in got} == {tt.reference_response("sentiment", label) for label in tt.SENTIMENT_LABELS}
    for label, phrases in LABEL_PHRASES.items():
        reference = tt.reference_response("sentiment", label)
        for phrase in phrases:  # with its own label: the phrase decides the answer
            assert any(phrase.casefold() in r["prompt"].casefold() and r["reference"] == reference for r in got), phrase
    for product in tt._PRODUCTS:
        assert any(f" {product}" in p for p in prompts), product
    for shape in tt._REVIEW_SHAPES:
        pattern = re.escape(shape).replace(r"\{product\}", ".+?").replace(r"\{phrase\}", ".+?")
        assert _matches(re.compile(pattern.replace(r"\{Phrase\}", ".+?")), prompts), shape
    for aside in tt._REVIEW_ASIDES:
        assert any(aside in p for p in prompts), aside
    for template in tt._SENTIMENT_PROMPTS:
        assert _matches(_skeleton(template, "text"), prompts), template


def test_city_extraction_covers_every_city_sentence_and_template(covering: dict[str, list[dict[str, str]]]) -> None:
    prompts = [r["prompt"] for r in covering["city_extraction"]]
    for city in tt.CITIES:
        assert any(city in p for p in prompts), city
    for sentence in tt._CITY_SENTENCES:
        assert _matches(_skeleton(sentence, "city"), prompts), sentence
    for template in tt._CITY_PROMPTS:
        assert _matches(_skeleton(template, "text"), prompts), template


def test_unit_conversion_covers_every_template_and_a_spread_of_kilometres(
    covering: dict[str, list[dict[str, str]]],
) -> None:
    prompts = [r["prompt"] for r in covering["unit_conversion"]]
    for template in tt._UNIT_PROMPTS:
        assert _matches(_skeleton(template, "n"), prompts), template
    km = {_km(p) for p in prompts}
    assert set(KM_SPREAD) <= km
    assert {1, 999} <= km and min(km) >= 1 and max(km) <= 999


def test_unit_conversion_draws_many_kilometre_values(rows: dict[str, list[dict[str, str]]]) -> None:
    km = {_km(r["prompt"]) for r in rows["unit_conversion"]}
    assert sum(k < 10 for k in km) >= 3 and sum(k >= 900 for k in km) >= 3  # small and large
    assert len(km) >= 100  # not the same few numbers over and over


def _km(prompt: str) -> int:
    return int(re.search(r"\d+", _strip_decoration(prompt)[1]).group())  # type: ignore[union-attr]


def _answer_from_text(task_type: str, prompt: str) -> str:
    """The right answer, read from the prompt alone (independently of the generator that made it)."""
    body = _strip_decoration(prompt)[1]
    if task_type == "unit_conversion":
        return str(_km(prompt) * 1000)
    if task_type == "city_extraction":
        (city,) = {c for c in tt.CITIES if re.search(rf"\b{c}\b", body)}
        return city
    found = {label for label, phrases in LABEL_PHRASES.items() for p in phrases if p.casefold() in body.casefold()}
    assert len(found) == 1, (prompt, found)
    return found.pop()


@pytest.mark.parametrize("task_type", CHECKED)
def test_references_are_the_known_right_answers(rows: dict[str, list[dict[str, str]]], task_type: str) -> None:
    for r in rows[task_type]:
        assert r["reference"] == tt.reference_response(task_type, _answer_from_text(task_type, r["prompt"])), r


@pytest.mark.parametrize("task_type", CHECKED)
def test_prompts_are_the_simulators_own(rows: dict[str, list[dict[str, str]]], task_type: str) -> None:
    """Every labelled prompt is opener + one of the task type's templates + closer, as the simulator logs them."""
    templates = {"sentiment": (tt._SENTIMENT_PROMPTS, "text"), "city_extraction": (tt._CITY_PROMPTS, "text"),
                 "unit_conversion": (tt._UNIT_PROMPTS, "n")}[task_type]  # fmt: skip
    forms = [re.compile(_skeleton(t, templates[1]).pattern + r"\Z", re.DOTALL) for t in templates[0]]
    for r in rows[task_type]:
        assert any(f.match(_strip_decoration(r["prompt"])[1]) for f in forms), r["prompt"]


def test_too_few_rows_to_cover_or_an_unknown_task_type_is_refused() -> None:
    with pytest.raises(ValueError, match="longest axis needs 45"):
        labelled_rows("sentiment", n=44)
    assert len(labelled_rows("sentiment", n=45)) == 45
    with pytest.raises(ValueError, match="unknown task type"):
        labelled_rows("poetry")


def test_a_preset_the_generator_never_draws_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a generator stops drawing from a table, its coverage would silently vanish: say so instead."""
    orphan = ("not", "a", "table", "of", "the", "simulator")
    spec = dict(COVERAGE["city_extraction"], ghost=[((("choice", id(orphan)), w),) for w in orphan])
    monkeypatch.setitem(COVERAGE, "city_extraction", spec)
    with pytest.raises(ValueError, match="made no draw"):
        labelled_rows("city_extraction")


def test_scripted_random_answers_presets_and_draws_the_rest() -> None:
    table = ("a", "b", "c", "d")
    scripted = ScriptedRandom(5, ((("choice", id(table)), "c"), (("randrange", (8, None, 1)), 6)))
    plain = random.Random(5)
    assert [scripted.choice(table) for _ in range(3)] == ["c", "c", "c"]
    assert scripted.randrange(8) == 6
    assert scripted.unused() == []
    other = ("x", "y", "z")
    assert scripted.choice(other) == plain.choice(other)  # an unscripted draw is the seeded draw
    assert scripted.randint(1, 999) == plain.randint(1, 999)
    assert ScriptedRandom(1, ((("randint", (1, 999)), 42),)).randint(1, 999) == 42


def test_write_labelled_writes_one_jsonl_per_task_type(tmp_path: Path) -> None:
    (tmp_path / "sentiment.jsonl").write_text("stale\n")
    written = write_labelled(tmp_path, ["sentiment", "unit_conversion"], n=160, seed=2)
    assert written == {"sentiment": tmp_path / "sentiment.jsonl", "unit_conversion": tmp_path / "unit_conversion.jsonl"}
    for task_type, path in written.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == labelled_rows(task_type, n=160, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentiment.jsonl", "unit_conversion.jsonl"]


def test_cli_writes_valid_jsonl_and_prints_files_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ftops.cli import main

    out = tmp_path / "evalsets"
    assert main(["simulate-evalset", "--out", str(out), "--rows", "155", "--seed", "1",
                 "--task-types", "city_extraction", "unit_conversion"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["city_extraction.jsonl", "unit_conversion.jsonl"]
    for task_type in ("city_extraction", "unit_conversion"):
        path = out / f"{task_type}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 155 and all(set(r) == {"prompt", "reference"} for r in rows)
        assert f"{path}: 155 rows ({task_type}" in printed
    assert main(["simulate-evalset", "--out", str(tmp_path / "all")]) == 0
    assert sorted(p.stem for p in (tmp_path / "all").iterdir()) == sorted(tt.TASK_TYPES)
    assert main(["simulate-evalset", "--out", str(tmp_path / "x"), "--rows", "10"]) == 2  # cannot cover
    assert "cannot cover" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate-evalset", "simulate-traffic"])
def test_the_simulator_commands_check_task_type_names(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ftops.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, *(["--out", "unused"] if command == "simulate-evalset" else []), "--task-types", "../../escape"])
    assert exited.value.code == 2
    assert "invalid task type '../../escape'" in capsys.readouterr().err
