"""Drift: what users start asking after the first day, which the base model and the first champion never saw.

From the drift day on (:func:`ftops_dev.simulate.generate_interactions`, ``drift_share`` and ``drift_from_day``)
a share of the simulated calls asks about new entities, each made by a generator of :data:`DRIFT_TASKS`:

* ``city_extraction``: cities of :data:`DRIFT_CITIES`, a second list disjoint from
  :data:`ftops_dev.task_types.CITIES` (and from the places of the local base model's pre-training text);
* ``sentiment``: a new phrasing family (chat-style reviews with their own vocabulary, review shapes and
  prompts), for the same three labels and the same reference replies;
* ``unit_conversion``: kilometre counts of four and five digits (:data:`DRIFT_KM`) instead of one to three;
* ``support_reply``: a new problem, a change of delivery address (action ``address_change``).

The right reply of a drifted prompt is :func:`ftops_dev.task_types.reference_response` of its answer slot, as
for any other prompt; :func:`ftops_dev.known_truth.expected_answer` reads it back from the prompt. The served
model of the simulated logs is right on a drifted prompt only :data:`P_CORRECT_DRIFTED` of the time (it never
saw these entities), and when it is wrong about a new city it names a city it knows.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ftops_dev.task_types import (
    _PRODUCTS,
    _SUPPORT_ASIDES,
    _SUPPORT_PROMPTS,
    _UNIT_PROMPTS,
    CITIES,
    _decorate,
    _sentiment_wrong,
    _support_wrong,
    _unit_wrong,
    city_request,
    review_request,
)

P_CORRECT_DRIFTED = 0.1
"""How often the simulated served model answers a drifted prompt right (0.75 on the others). A champion trained
before the drift scores 0.000 on the new cities of the eval set (benchmarks/measure_learning.py); at 0.25 the
well-rated right answers alone taught a served-only control enough to pass the shipped gate on 800 calls."""

DRIFT_CITIES: tuple[str, ...] = (
    "Tallinn", "Ljubljana", "Reykjavik", "Tbilisi", "Yerevan", "Windhoek", "Ulaanbaatar", "Kathmandu",
    "Montevideo", "Asuncion", "Cusco", "Valparaiso", "Hobart", "Winnipeg", "Gdansk", "Bratislava",
    "Mombasa", "Nagoya", "Busan", "Tromso",
)  # fmt: skip
"""Cities that appear only with drift: none of them is in :data:`~ftops_dev.task_types.CITIES`."""


def _drift_city(rng: random.Random) -> tuple[str, str, int]:
    return city_request(rng, DRIFT_CITIES)


def _drift_city_wrong(rng: random.Random, answer: str) -> str:
    return rng.choice(CITIES)  # the model never saw the new city: it names one it knows


# A chat-style phrasing family: none of these phrases contains, or is contained in, a phrase of the first
# family (a test checks), so the label of any prompt is read back unambiguously.
DRIFT_POSITIVE: tuple[str, ...] = (
    "10/10 no notes", "obsessed with it tbh", "absolute banger", "lowkey the best thing I own",
    "chef's kiss", "worth every penny fr", "zero regrets, buying a second one", "slaps so hard",
)  # fmt: skip
DRIFT_NEGATIVE: tuple[str, ...] = (
    "total rip-off ngl", "straight to the bin", "0/10 would not recommend", "what a scam smh",
    "died on day one lol", "never again, big yikes", "returned it, pure garbage", "hard pass tbh",
)  # fmt: skip
DRIFT_NEUTRAL: tuple[str, ...] = (
    "meh, it exists", "mid tbh", "it's whatever", "no strong feelings either way",
    "kinda just there", "5/10 does the bare minimum", "idk, it's alright I guess", "shrug, it works",
)  # fmt: skip
_DRIFT_REVIEW_SHAPES = (
    "just got the {product} and honestly {phrase}",
    "{product} update: {phrase}",
    "ok so the {product}?? {phrase}",
    "posting this from the store. {product} = {phrase}",
    "rating the {product} after a week: {phrase}",
)
_DRIFT_SENTIMENT_PROMPTS = (
    "Vibe check on this post (positive / negative / neutral): {text}",
    "Social media comment: {text}\nWhat's the sentiment: positive, negative or neutral?",
    "Is this tweet positive, negative or neutral? {text}",
    "Label the mood of this comment as positive, negative or neutral -> {text}",
)


_DRIFT_ASIDES = ("", "", "", " (not sponsored)", " #honestreview", " will update later", " sent from my phone")


def _drift_sentiment(rng: random.Random) -> tuple[str, str, int]:
    phrases = (DRIFT_POSITIVE, DRIFT_NEGATIVE, DRIFT_NEUTRAL)
    return review_request(rng, phrases, _DRIFT_REVIEW_SHAPES, _DRIFT_ASIDES, _DRIFT_SENTIMENT_PROMPTS)


DRIFT_KM: tuple[int, int] = (1_000, 99_999)
"""The kilometre range of drifted unit conversions (the first day's is 1..999)."""


def _drift_unit(rng: random.Random) -> tuple[str, str, int]:
    n = rng.randint(*DRIFT_KM)
    k = rng.randrange(len(_UNIT_PROMPTS))
    return _decorate(rng, _UNIT_PROMPTS[k].format(n=n)), str(n * 1000), k


DRIFT_SUPPORT_ACTION = "address_change"
"""The new support problem: the customer wants the order delivered somewhere else (its replies, and the words
that name it, are in :mod:`ftops_dev.task_types` beside the other actions')."""
DRIFT_SUPPORT_MESSAGES: tuple[str, ...] = (
    "I moved last week, please ship order {order} with the {product} to my new home",
    "Can you change where order {order} goes? The {product} should go to my office instead",
    "Order {order}: I typed the wrong street for the {product}, can it be delivered elsewhere",
)


def _drift_support(rng: random.Random) -> tuple[str, str, int]:
    product, order = rng.choice(_PRODUCTS), f"#{rng.randint(10_000, 99_999)}"
    text = rng.choice(DRIFT_SUPPORT_MESSAGES).format(product=product, order=order) + "." + rng.choice(_SUPPORT_ASIDES)
    k = rng.randrange(len(_SUPPORT_PROMPTS))
    return _decorate(rng, _SUPPORT_PROMPTS[k].format(text=text)), f"{DRIFT_SUPPORT_ACTION}|{product}|{order}", k


DRIFT_TASKS: dict[str, tuple[Callable[[random.Random], tuple[str, str, int]], Callable[[random.Random, str], str]]] = {
    "sentiment": (_drift_sentiment, _sentiment_wrong),
    "city_extraction": (_drift_city, _drift_city_wrong),
    "unit_conversion": (_drift_unit, _unit_wrong),
    "support_reply": (_drift_support, _support_wrong),
}
"""Per task type: the drifted prompt generator (``rng -> (prompt, answer slot, template index)``) and how the
served model gets its answer wrong, as :data:`ftops_dev.task_types.TASKS`."""
