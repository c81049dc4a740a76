"""Padding-free batches: a batch's examples concatenated into one row with restarting ``position_ids``,
and the probe that says whether a loaded model computes them exactly as separate examples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ftops.core.chat import EncodedExample

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
