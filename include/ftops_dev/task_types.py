"""The simulator's three checkable task types: how a prompt is made, what the correct reply is, and what a
wrong one looks like. Each reply follows one fixed template, so a model's answer can be scored by exact match.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def reference_response(task_type: str, answer: str) -> str:
    """Return the one response template of a task filled with an answer.

    Args:
        task_type: One of :data:`TASK_TYPES`.
        answer: The slot: a sentiment label, a city name, or a number of metres (as digits).

    Returns:
        The response a correct model gives, at least 50 characters long.

    Raises:
        ValueError: Unknown task type or sentiment label.
    """
    if task_type == "sentiment":
        if answer not in _SENTIMENT_TEMPLATES:
            raise ValueError(f"unknown sentiment label {answer!r}")
        return _SENTIMENT_TEMPLATES[answer]
    if task_type == "city_extraction":
        return f"The city mentioned in the text is {answer}, so the answer is {answer}."
    if task_type == "unit_conversion":
        km = int(answer) // 1000
        return f"{km} km equals {answer} metres, because 1 km is 1000 metres."
    raise ValueError(f"unknown task type {task_type!r}")


_OPENERS = ("", "", "", "Hi! ", "Quick question: ", "Hello, ", "Please help. ", "Task: ", "hey, ")
_CLOSERS = ("", "", "", " Thanks!", " Thank you.", " Keep it short.", " Answer in one sentence.", " thx")


def _decorate(rng: random.Random, prompt: str) -> str:
    """Wrap a prompt in the small talk users add, so that prompts rarely repeat by chance."""
    return rng.choice(_OPENERS) + prompt + rng.choice(_CLOSERS)


_PRODUCTS = (
    "headphones", "blender", "phone case", "running shoes", "coffee maker", "backpack", "desk lamp",
    "keyboard", "water bottle", "tent", "vacuum cleaner", "toaster", "jacket", "office chair", "smartwatch",
    "frying pan", "charger", "mattress", "umbrella", "bike helmet", "novel", "printer", "sofa", "kettle",
)  # fmt: skip
_POSITIVE = (
    "I love it", "works perfectly", "excellent quality", "exceeded my expectations", "absolutely fantastic",
    "great value for the money", "would happily buy it again", "my new favourite", "sturdy and well made",
    "arrived early and works great", "highly recommended", "the best purchase I made this year",
    "really impressed", "wonderful, no complaints at all", "brilliant design",
)  # fmt: skip
_NEGATIVE = (
    "broke after two days", "a complete waste of money", "terrible quality", "I want a refund",
    "stopped working within a week", "very disappointed", "cheap and flimsy", "the worst purchase I have made",
    "arrived damaged and support never answered", "do not buy this", "awful, returned it immediately",
    "it feels fragile and useless", "horrible experience", "fell apart on first use", "really poor",
)  # fmt: skip
_NEUTRAL = (
    "it is okay", "it does the job, nothing special", "average quality", "works as described",
    "neither good nor bad", "about what I expected for the price", "fine for now", "it is acceptable",
    "nothing to write home about", "it is an ordinary product", "mixed feelings overall", "it is adequate",
    "not great, not terrible", "does what it says", "standard, like any other",
)  # fmt: skip
_REVIEW_ASIDES = (
    "", "", "", " Delivery took three days.", " I use it every day.", " The colour is grey.",
    " My partner picked it.", " It came with a manual.", " Second one I own.", " Price was 40 dollars.",
)  # fmt: skip
_REVIEW_SHAPES = (
    "The {product} {phrase}.",
    "{Phrase}. Bought the {product} last month.",
    "Got this {product} as a gift: {phrase}.",
    "My verdict on the {product}: {phrase}.",
    "{Phrase} - that is all I can say about this {product}.",
    "Ordered the {product} for my kitchen. {Phrase}.",
    "Honestly, {phrase}. The {product} came in a plain box.",
    "After a few weeks with the {product}, {phrase}.",
)
_SENTIMENT_PROMPTS = (
    'Classify the sentiment of this review as positive, negative or neutral: "{text}"',
    "What is the sentiment of the following product review?\n{text}",
    "Review: {text}\nIs this review positive, negative, or neutral?",
    "Please label the sentiment (positive/negative/neutral) of: {text}",
    "Sentiment analysis request. Text: {text}",
    "{text}\n\nHow does the customer feel about the product? Answer positive, negative or neutral.",
    "Tell me whether this customer review is positive, negative or neutral.\n\n{text}",
    "Determine the sentiment: {text}",
)


def _sentiment(rng: random.Random) -> tuple[str, str, int]:
    label = rng.choice(SENTIMENT_LABELS)
    phrases = {"positive": _POSITIVE, "negative": _NEGATIVE, "neutral": _NEUTRAL}[label]
    phrase = rng.choice(phrases)
    review = rng.choice(_REVIEW_SHAPES).format(
        product=rng.choice(_PRODUCTS), phrase=phrase, Phrase=phrase[0].upper() + phrase[1:]
    )
    review += rng.choice(_REVIEW_ASIDES)
    k = rng.randrange(len(_SENTIMENT_PROMPTS))
    return _decorate(rng, _SENTIMENT_PROMPTS[k].format(text=review)), label, k


def _sentiment_wrong(rng: random.Random, answer: str) -> str:
    return rng.choice([label for label in SENTIMENT_LABELS if label != answer])


_CITY_SENTENCES = (
    "My sister moved to {city} last spring.",
    "The conference will be held in {city} next month.",
    "We had the best coffee of our whole trip in {city}.",
    "Our flight was diverted to {city} because of the storm.",
    "She grew up in {city} before studying abroad.",
    "The company opened a new office in {city} this year.",
    "I left my umbrella in a taxi in {city}.",
    "Rents in {city} have gone up again.",
    "The marathon in {city} starts at seven in the morning.",
    "He sent me a postcard from {city} with a picture of the harbour.",
    "Our team meets the partners in {city} on Thursday.",
    "The museum in {city} was closed for renovation.",
    "They are planning a weekend in {city} in October.",
    "The train to {city} was two hours late.",
)
_CITY_PROMPTS = (
    "Which city is mentioned in this sentence? {text}",
    "Extract the city name from the text: {text}",
    'Text: "{text}"\nWhat city does it mention?',
    "Find the city in the following sentence.\n{text}",
    "Name the city referred to here: {text}",
    "{text}\nWhich city is this about?",
    "Please identify the location (city) in: {text}",
)


def _city(rng: random.Random) -> tuple[str, str, int]:
    city = rng.choice(CITIES)
    sentence = rng.choice(_CITY_SENTENCES).format(city=city)
    k = rng.randrange(len(_CITY_PROMPTS))
    return _decorate(rng, _CITY_PROMPTS[k].format(text=sentence)), city, k


def _city_wrong(rng: random.Random, answer: str) -> str:
    return rng.choice([c for c in CITIES if c != answer])


_UNIT_PROMPTS = (
    "Convert {n} km to metres.",
    "How many meters are in {n} kilometers?",
    "{n} km = ? m",
    "What is {n} kilometres in metres?",
    "Please convert a distance of {n} km into meters.",
    "I walked {n} km today. How many metres is that?",
    "Express {n} kilometers in meters.",
    "unit conversion: {n} km -> m",
)


def _unit(rng: random.Random) -> tuple[str, str, int]:
    n = rng.randint(1, 999)
    k = rng.randrange(len(_UNIT_PROMPTS))
    return _decorate(rng, _UNIT_PROMPTS[k].format(n=n)), str(n * 1000), k


def _unit_wrong(rng: random.Random, answer: str) -> str:
    km = int(answer) // 1000
    wrong = rng.choice((km * 100, km * 10_000, (km + 1) * 1000, km * 1024, max(1, km - 1) * 1000))
    if wrong == int(answer):
        wrong = km * 100
    # The template derives the km figure from the slot, so keep it: a wrong answer only changes the metres.
    return str(wrong)


def _respond(task_type: str, answer: str, slot: str) -> str:
    if task_type == "unit_conversion":
        km = int(answer) // 1000
        return f"{km} km equals {slot} metres, because 1 km is 1000 metres."
    return reference_response(task_type, slot)



TASK_TYPES: tuple[str, ...] = ("sentiment", "city_extraction", "unit_conversion")
SENTIMENT_LABELS: tuple[str, ...] = ("positive", "negative", "neutral")
CITIES: tuple[str, ...] = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Dublin",
    "Oslo", "Stockholm", "Helsinki", "Warsaw", "Athens", "Cairo", "Nairobi", "Sydney", "Toronto", "Chicago",
)  # fmt: skip
_SENTIMENT_TEMPLATES: dict[str, str] = {
    "positive": "Sentiment: positive. The review describes a satisfying experience.",
    "negative": "Sentiment: negative. The review describes a disappointing experience.",
    "neutral": "Sentiment: neutral. The review describes an unremarkable experience.",
}
TASKS: dict[str, tuple[Callable[[random.Random], tuple[str, str, int]], Callable[[random.Random, str], str]]] = {
    "sentiment": (_sentiment, _sentiment_wrong),
    "city_extraction": (_city, _city_wrong),
    "unit_conversion": (_unit, _unit_wrong),
}
