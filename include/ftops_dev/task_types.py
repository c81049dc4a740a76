"""The simulator's task types: how a prompt is made, what the correct reply is, and what a wrong one looks like.

The three default task types (:data:`TASK_TYPES`) are checkable by exact match: each reply follows one fixed
template. The free-text task type ``support_reply`` (:data:`FREE_TEXT_TASK_TYPES`, simulated only on request)
answers a customer's order problem; its right reply can be phrased several ways, so exact match is unfair to
it, while :func:`is_right`, which knows the truth behind every prompt the simulator makes, is not.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable


def reference_response(task_type: str, answer: str) -> str:
    """Return the one response template of a task filled with an answer.

    Args:
        task_type: One of :data:`TASK_TYPES`.
        answer: The slot: a sentiment label, a city name, a number of metres (as digits), or for
            ``support_reply`` ``"<action>|<product>|<order>"`` (the phrasing is chosen by the slot).

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
    if task_type == "support_reply":
        replies = support_replies(answer)
        return replies[zlib.crc32(answer.encode()) % len(replies)]  # phrasings vary from prompt to prompt
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


def review_request(
    rng: random.Random, phrases: tuple[tuple[str, ...], ...], shapes: tuple[str, ...], asides: tuple[str, ...],
    prompts: tuple[str, ...],
) -> tuple[str, str, int]:  # fmt: skip
    """A sentiment prompt of one phrasing family: ``phrases`` per label (in :data:`SENTIMENT_LABELS`' order),
    review ``shapes``, ``asides`` and ``prompts`` templates. Returns ``(prompt, label, template index)``."""
    label = rng.choice(SENTIMENT_LABELS)
    phrase = rng.choice(phrases[SENTIMENT_LABELS.index(label)])
    review = rng.choice(shapes).format(
        product=rng.choice(_PRODUCTS), phrase=phrase, Phrase=phrase[0].upper() + phrase[1:]
    )
    review += rng.choice(asides)
    k = rng.randrange(len(prompts))
    return _decorate(rng, prompts[k].format(text=review)), label, k


def _sentiment(rng: random.Random) -> tuple[str, str, int]:
    phrases = (_POSITIVE, _NEGATIVE, _NEUTRAL)
    return review_request(rng, phrases, _REVIEW_SHAPES, _REVIEW_ASIDES, _SENTIMENT_PROMPTS)


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
    return city_request(rng, CITIES)


def city_request(rng: random.Random, cities: tuple[str, ...]) -> tuple[str, str, int]:
    """A city-extraction prompt about one of ``cities``: ``(prompt, city, template index)``."""
    city = rng.choice(cities)
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


# -- support_reply: free text ----------------------------------------------------------------------------------
SUPPORT_ACTIONS: tuple[str, ...] = ("replacement", "tracking", "return_label", "refund", "duplicate_refund")
"""What support must do for each kind of order problem: damaged item, late delivery, wrong item, refund request,
double charge."""
_SUPPORT_MESSAGES: dict[str, tuple[str, ...]] = {
    "replacement": (
        "My {product} from order {order} arrived damaged",
        "Order {order}: the {product} was cracked when I opened the box",
        "The {product} I got with order {order} came broken",
        "I just unpacked my {product} (order {order}) and it is smashed",
    ),
    "tracking": (
        "Where is my {product}? Order {order} still has not arrived",
        "My order {order} with the {product} is two weeks late",
        "The {product} from order {order} was supposed to arrive last Monday and never came",
        "Order {order} for the {product} is delayed and I have no update",
    ),
    "return_label": (
        "I received the wrong item in order {order}: I had ordered the {product}",
        "Order {order} contained a different model, not the {product} I paid for",
        "You sent me the wrong {product} in order {order}, wrong colour and wrong size",
    ),
    "refund": (
        "I would like a refund for the {product} of order {order}, I no longer need it",
        "Please refund order {order}. I changed my mind about the {product}",
        "Can I get my money back for order {order}? The {product} is not for me",
    ),
    "duplicate_refund": (
        "I was charged twice for order {order} ({product})",
        "My card shows a double charge for the {product}, order {order}",
        "Order {order} for the {product} appears two times on my bank statement",
    ),
}
_SUPPORT_ASIDES = ("", "", "", " I need it by Friday.", " This is my second message about it.", " Please hurry.",
                   " I have been a customer for years.", " What can you do?")  # fmt: skip
_SUPPORT_PROMPTS = (
    "Write a reply to this customer message: {text}",
    "Customer message:\n{text}\n\nDraft a short support reply.",
    'You are a support agent. Answer the customer: "{text}"',
    "Reply to the customer and say what we will do.\n{text}",
    "Support ticket: {text}",
    "{text}\n\nHow should support respond?",
)
_SUPPORT_REPLIES: dict[str, tuple[str, ...]] = {
    "replacement": (
        "Sorry your {product} arrived damaged. We are sending a free replacement for order {order} today.",
        "Apologies for the damaged {product}! A replacement for order {order} is on its way, at no cost to you.",
        "I'm sorry about that. I have arranged a replacement {product} for order {order}; keep the broken one.",
    ),
    "tracking": (
        "Sorry your {product} is late. Here is the tracking link for order {order}; it should arrive in two days.",
        "Apologies for the delay with order {order}. I have e-mailed you the tracking details of your {product}.",
        "We are sorry order {order} is taking so long. Follow your {product} with the tracking number we sent.",
    ),
    "return_label": (
        "Sorry we sent the wrong item. Here is a prepaid return label for order {order}; your {product} follows.",
        "Apologies for the mix-up in order {order}. Use the attached return label and we send the {product} you ordered.",
        "That was our mistake. I have e-mailed a free return label for order {order} to swap it for the right {product}.",
    ),
    "refund": (
        "I have issued a full refund for order {order}; the money for the {product} is back on your card in 3-5 days.",
        "No problem: order {order} is cancelled and a full refund for the {product} is on its way.",
        "Done! You will receive a full refund for the {product} (order {order}) within five business days.",
    ),
    "duplicate_refund": (
        "Sorry about the double billing. We refunded the duplicate charge on order {order}; you pay for the {product} once.",
        "You are right, order {order} was billed twice. The duplicate charge for the {product} has been reversed.",
        "Apologies! I have cancelled the duplicate charge on order {order}. You keep your {product} and pay for it once.",
    ),
    # Asked only with drift (ftops_dev.drift): a problem the base model and the first champion never saw.
    "address_change": (
        "No problem: order {order} now goes to your new delivery address, and the {product} ships as planned.",
        "Done! I have updated the delivery address of order {order}; your {product} will arrive at the new address.",
        "Thanks for telling us. The shipping address of order {order} is changed, so the {product} goes there.",
    ),
}
_ACTION_WORDS: dict[str, tuple[str, ...]] = {
    "replacement": ("replacement", "send you a new"),
    "tracking": ("tracking",),
    "return_label": ("return label", "return shipping label"),
    "refund": ("full refund", "refunded in full"),
    "duplicate_refund": ("duplicate charge", "double charge", "second charge"),
    "address_change": ("delivery address", "new address", "shipping address"),
}
"""Words that name each action in a reply; a right reply names its action's and no other's."""


def support_replies(answer: str) -> tuple[str, ...]:
    """Every phrasing of the right reply to a support message (each names the action and the product).

    Args:
        answer: The slot ``"<action>|<product>|<order>"``, e.g. ``"refund|kettle|#48213"``.

    Raises:
        ValueError: Not such a slot, or an unknown action.
    """
    action, product, order = _support_slot(answer)
    return tuple(t.format(product=product, order=order) for t in _SUPPORT_REPLIES[action])


def _support_slot(answer: str) -> tuple[str, str, str]:
    parts = answer.split("|")
    if len(parts) != 3 or parts[0] not in _SUPPORT_REPLIES:
        raise ValueError(f"not a support_reply slot '<action>|<product>|<order>': {answer!r}")
    return parts[0], parts[1], parts[2]


def _support(rng: random.Random) -> tuple[str, str, int]:
    action = rng.choice(SUPPORT_ACTIONS)
    product, order = rng.choice(_PRODUCTS), f"#{rng.randint(10_000, 99_999)}"
    text = rng.choice(_SUPPORT_MESSAGES[action]).format(product=product, order=order) + "."
    text = text.replace("?.", "?") + rng.choice(_SUPPORT_ASIDES)
    k = rng.randrange(len(_SUPPORT_PROMPTS))
    return _decorate(rng, _SUPPORT_PROMPTS[k].format(text=text)), f"{action}|{product}|{order}", k


def _support_wrong(rng: random.Random, answer: str) -> str:
    action, product, order = _support_slot(answer)
    return "|".join((rng.choice([a for a in SUPPORT_ACTIONS if a != action]), product, order))


def _words_pattern(text: str) -> str:
    """A regex for ``text`` that tolerates any run of whitespace where it has a space."""
    return r"\s+".join(re.escape(word) for word in text.split())


_PRODUCT_GROUP = "(?P<product>" + "|".join(_words_pattern(p) for p in sorted(_PRODUCTS, key=len, reverse=True)) + ")"


def _shape_pattern(shape: str) -> re.Pattern[str]:
    """The regex that finds a support message of this shape in a prompt (any case, any whitespace)."""
    parts = []
    for part in re.split(r"(\{product\}|\{order\}|\s+)", shape):
        if part == "{product}":
            parts.append(_PRODUCT_GROUP)
        elif part == "{order}":
            parts.append(r"(?P<order>#\d{5})")
        elif part.isspace():
            parts.append(r"\s+")
        elif part:
            parts.append(re.escape(part))
    return re.compile("".join(parts), re.IGNORECASE)


_SUPPORT_PATTERNS = tuple((a, _shape_pattern(s)) for a, shapes in _SUPPORT_MESSAGES.items() for s in shapes)


def _respond(task_type: str, answer: str, slot: str) -> str:
    if task_type == "unit_conversion":
        km = int(answer) // 1000
        return f"{km} km equals {slot} metres, because 1 km is 1000 metres."
    return reference_response(task_type, slot)


TASK_TYPES: tuple[str, ...] = ("sentiment", "city_extraction", "unit_conversion")
"""The default task types (simulation, CI): checkable by exact match."""
FREE_TEXT_TASK_TYPES: tuple[str, ...] = ("support_reply",)
"""Task types whose right answer can be phrased several ways (a judge's job); simulated only when asked for."""
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
    "support_reply": (_support, _support_wrong),
}
