"""The cost of a fine-tuning job before it is submitted: tokens of the training examples × epochs × the price
per 1M training tokens from the config's table, and the budget check that refuses more than
``max_cost_usd``. Tokens are estimated at ~4 characters each unless a real tokenizer is passed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ftops.core.config import OpenAIBackend

if TYPE_CHECKING:
    pass


CHARS_PER_TOKEN = 4
"""Characters per token in the default estimate (English prose; code and other scripts use more tokens)."""

# Per-message overhead of the chat format, as in OpenAI's token-counting recipe: each message costs its
# content plus ~3 framing tokens (+1 for a name), and each example ~3 more to prime the reply.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_TOKENS_PER_EXAMPLE = 3


class BudgetExceededError(ValueError):
    """The estimated training cost is above ``max_cost_usd``."""


# -- cost ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostEstimate:
    """What training would cost, before it starts.

    Attributes:
        model: The base model priced.
        examples: Training examples.
        tokens_per_epoch: Estimated tokens in the training file.
        n_epochs: Epochs the job trains.
        billable_tokens: ``tokens_per_epoch × n_epochs`` (what OpenAI bills as trained tokens).
        usd_per_1m_tokens: The price used.
        usd: The estimate.
        method: How tokens were counted.
    """

    model: str
    examples: int
    tokens_per_epoch: int
    n_epochs: int
    billable_tokens: int
    usd_per_1m_tokens: float
    usd: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chars_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def count_example_tokens(rows: Sequence[Mapping[str, Any]], count_tokens: Callable[[str], int] | None = None) -> int:
    """Tokens in chat examples: each message's content and name plus the chat format's framing.

    Args:
        rows: ``{"messages": [{"role", "content"}, ...]}`` examples.
        count_tokens: Tokens of one string; default ``ceil(len / 4)``.

    Returns:
        The total over all rows.
    """
    count = count_tokens or _chars_tokens
    total = 0
    for row in rows:
        total += _TOKENS_PER_EXAMPLE
        for message in row["messages"]:
            total += _TOKENS_PER_MESSAGE + count(str(message.get("content") or ""))
            if message.get("name"):
                total += _TOKENS_PER_NAME + count(str(message["name"]))
    return total


_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def price_per_1m(model: str, prices: Mapping[str, float]) -> float:
    """The training price of ``model`` from the config's table.

    A fine-tuned model (``ft:<base>:...``, trained further) is priced as its base; a name with or without a
    snapshot date (``gpt-4.1-mini`` / ``gpt-4.1-mini-2025-04-14``) matches the other form when the table has
    one price for that family.

    Raises:
        ValueError: The table has no price for the model.
    """
    if model.startswith("ft:"):
        model = model.split(":")[1]
    if model in prices:
        return float(prices[model])
    family = _DATE_SUFFIX.sub("", model)
    found = {float(p) for name, p in prices.items() if _DATE_SUFFIX.sub("", name) == family}
    if len(found) == 1:
        return found.pop()
    raise ValueError(
        f"no training price for model {model!r} in training.backend.price_per_1m_training_tokens "
        f"(priced: {', '.join(sorted(prices)) or 'none'}); add it to the config to train this model"
    )


def estimate_cost(
    train_rows: Sequence[Mapping[str, Any]],
    backend: OpenAIBackend,
    *,
    count_tokens: Callable[[str], int] | None = None,
) -> CostEstimate:
    """Estimate the training cost: tokens of the training examples × epochs × the price per 1M tokens.

    Validation examples are not counted: OpenAI bills the trained tokens only (check for other services).

    Args:
        train_rows: Chat-format training examples.
        backend: Model, epochs and the price table.
        count_tokens: Tokens of one string; default ~4 characters per token.

    Returns:
        The estimate.

    Raises:
        ValueError: The model has no price in the table.
    """
    price = price_per_1m(backend.base_model, backend.price_per_1m_training_tokens)
    tokens = count_example_tokens(train_rows, count_tokens)
    billable = tokens * backend.n_epochs
    method = f"chars/{CHARS_PER_TOKEN}" if count_tokens is None else getattr(count_tokens, "__name__", "custom")
    return CostEstimate(model=backend.base_model, examples=len(train_rows), tokens_per_epoch=tokens,
                        n_epochs=backend.n_epochs, billable_tokens=billable, usd_per_1m_tokens=price,
                        usd=billable * price / 1_000_000, method=method)  # fmt: skip


def check_budget(estimate: CostEstimate, backend: OpenAIBackend) -> None:
    """Refuse a training run whose estimate is above ``backend.max_cost_usd``.

    Raises:
        BudgetExceededError: With the estimate and its arithmetic.
    """
    if estimate.usd > backend.max_cost_usd:
        raise BudgetExceededError(
            f"estimated ${estimate.usd:.2f} exceeds max_cost_usd ${backend.max_cost_usd:g}: "
            f"{estimate.tokens_per_epoch:,} tokens × {estimate.n_epochs} epochs at "
            f"${estimate.usd_per_1m_tokens:g}/1M for {estimate.model} ({estimate.method} estimate)"
        )
