"""The chat format shared by training, evaluation and serving: splitting a conversation into prompt turns
and reply, and the one encoder that tokenises a conversation with the chat template (labels only on the
final reply).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase



class ChatFormatError(ValueError):
    """A conversation or chat template that cannot be used: no prompt, no final reply, a template whose
    generation prompt is not a prefix of the rendered conversation."""


IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    """One conversation as token ids, with labels only on the final assistant turn."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int


def split_conversation(messages: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, str]], str]:
    """Split a conversation into the prompt turns and the final assistant reply.

    Args:
        messages: Chat turns, ``{"role": ..., "content": ...}``, ending with an assistant turn.

    Returns:
        The turns before the final reply, and the reply's text.

    Raises:
        ChatFormatError: The conversation is empty, has no prompt, or does not end with an assistant turn.
    """
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ChatFormatError("a conversation needs at least one prompt turn and must end with an assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]


ROLES = ("system", "user", "assistant")


def logged_messages(request: Any) -> list[dict[str, str]]:
    """The ``messages`` of a logged request: the interaction log's ``request`` column (JSON text or an object,
    ``{"messages": [{"role": ..., "content": ...}, ...], <sampling parameters>}``).

    Raises:
        ChatFormatError: Not JSON, not an object with a non-empty ``messages`` list of ``{role, content}`` with a
            role in :data:`ROLES` and text content, or no user message.
    """
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except ValueError:
            raise ChatFormatError("request is not JSON") from None
    messages = request.get("messages") if isinstance(request, Mapping) else None
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("request.messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatFormatError(f"request.messages[{i}] must be {{role: {'|'.join(ROLES)}, content: text}}")
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    if not any(m["role"] == "user" for m in out):
        raise ChatFormatError("request.messages holds no user message")
    return out


def context_and_prompt(messages: Sequence[Mapping[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The turns before the last user message (system prompt, earlier turns) and that message: a logged call's
    context and its ``prompt``. Turns after the last user message (none in a chat request) are left out."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:last]], messages[last]["content"]


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt_turns: Sequence[Mapping[str, str]]) -> str:
    """The prompt turns rendered with the chat template and its generation prompt: the text a model answers.

    Training masks exactly these tokens, and evaluation and serving generate from exactly this text.
    """
    return str(tokenizer.apply_chat_template([dict(m) for m in prompt_turns], tokenize=False,
                                             add_generation_prompt=True))  # fmt: skip


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], max_len: int | None = None
) -> EncodedExample:
    """Tokenise a conversation with the chat template, masking everything but the final reply.

    The prompt (rendered with ``add_generation_prompt=True``) and the completion (the rest of the fully
    rendered conversation, e.g. the reply and its end-of-turn token) are tokenised separately, so the
    prompt tokens are exactly what generation later starts from.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: Chat turns ending with the assistant reply to learn.
        max_len: Cut the example to this many tokens: the oldest prompt tokens go first (a long system prompt or
            history must not cut off the reply to learn), then the end of a reply that alone is longer;
            ``None`` keeps it whole.

    Returns:
        The ids, the labels (``-100`` on the prompt) and the prompt length.

    Raises:
        ChatFormatError: The template renders the prompt differently from the start of the full conversation.
    """
    prompt_turns, _ = split_conversation(messages)
    full = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False)
    prompt = render_prompt(tokenizer, prompt_turns)
    if not isinstance(full, str) or not full.startswith(prompt):
        raise ChatFormatError("the chat template's generation prompt is not a prefix of the rendered conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    prompt_ids, completion_ids = list(prompt_ids), list(completion_ids)
    if max_len is not None and len(prompt_ids) + len(completion_ids) > max_len:
        keep = max(max_len - len(completion_ids), 1)  # at least one prompt token to predict the reply from
        prompt_ids, completion_ids = prompt_ids[-keep:], completion_ids[: max_len - min(keep, len(prompt_ids))]
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return EncodedExample(input_ids=prompt_ids + completion_ids, labels=labels, prompt_len=len(prompt_ids))


def pad_batch(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
