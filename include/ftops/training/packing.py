"""How a training batch is computed: padding-free batches (a batch's examples concatenated into one row with
restarting ``position_ids``), the loss with logits only where a label is, and the probes that say whether a
loaded model computes either exactly as the plain way does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ftops.core.chat import IGNORE_INDEX, EncodedExample

if TYPE_CHECKING:
    import torch


logger = logging.getLogger(__name__)


def flatten_batch(examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
    """Concatenate encoded examples into one row with per-example ``position_ids`` (padding-free).

    No attention mask: the model derives a block-diagonal causal mask from the restarting positions. The
    first label of every example is ``-100`` (it is a prompt token), so no example learns to predict the
    next one's start.
    """
    import torch

    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
    }


def supports_padding_free(model: Any, vocab_size: int) -> bool:
    """Whether ``model`` gives packed examples the same logits as separate ones.

    Models whose attention honours restarting ``position_ids`` (Transformers' packed-sequence masks, or
    flash attention) pass; others would let examples attend to each other and must be padded instead.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab_size, (1, 7), generator=generator)
    b = torch.randint(0, vocab_size, (1, 5), generator=generator)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            separate = torch.cat([model(input_ids=x.to(device), use_cache=False).logits[0] for x in (a, b)])
            packed = model(
                input_ids=torch.cat([a, b], dim=1).to(device),
                position_ids=torch.tensor([list(range(7)) + list(range(5))], device=device),
                use_cache=False,  # with a cache Transformers does not look for packed sequences
            ).logits[0]
    except (TypeError, ValueError, RuntimeError) as exc:
        logger.info("Padding-free batches not supported by this model (%s)", exc)
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(separate.float(), packed.float(), atol=1e-3, rtol=1e-3))


# Attention kernels that compute each packed example on its own (varlen); others build a dense n x n mask.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def use_padding_free(setting: str, model: Any, vocab_size: int) -> bool:
    if setting == "off":
        return False
    attention = str(getattr(model.config, "_attn_implementation", ""))
    if setting == "auto" and attention not in VARLEN_ATTENTION:
        return False
    return supports_padding_free(model, vocab_size)


def reply_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[torch.Tensor, Any]:
    """Causal-LM loss with the LM head applied only at positions whose next token has a label.

    Only the reply is labelled (~15 of ~55 tokens of an example), and on a small model the LM head
    (width x vocabulary) costs as much as the transformer layers, so projecting the prompt positions only to
    ignore them wastes a third of a step (benchmarks/bench_train.py: 9.5 s -> 6.4 s). Same value as the model's own
    loss: the sum over labelled positions, divided by ``num_items_in_batch`` (the Trainer's count over the
    gradient-accumulation window) or else by the labelled positions of this batch.

    Returns:
        The loss and the model's outputs (``logits`` holds only the kept positions, flattened).
    """
    import torch

    labels = inputs["labels"]
    targets = torch.nn.functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
    keep = targets != IGNORE_INDEX
    # no cache: with one, Transformers does not find packed sequences (padding-free batches) in position_ids
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep, use_cache=False)
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), targets[keep], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)), outputs


def supports_reply_logits(model: Any, vocab_size: int) -> bool:
    """Whether ``model`` accepts a boolean ``logits_to_keep`` mask and returns exactly those positions' logits.

    Transformers' causal LMs that slice with ``slice_logits_to_keep`` do; a model without the argument, or
    one that reads the mask as indices, fails the probe and is trained with its own loss.
    """
    import torch

    ids = torch.randint(0, vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    keep = torch.tensor([[False, False, False, True, True, False, True]])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=ids.to(device), use_cache=False).logits[0]
            sliced = model(input_ids=ids.to(device), use_cache=False, logits_to_keep=keep.to(device)).logits
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        logger.info("Logits of labelled positions only: not supported by this model (%s)", exc)
        return False
    finally:
        model.train(was_training)
    expected = full[keep[0].to(device)]
    return sliced.shape == expected.shape and bool(torch.allclose(sliced.float(), expected.float(), atol=1e-4))
