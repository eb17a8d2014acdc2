"""Random token-id records for models built from config: no tokenizer to train, no text to ship."""

from __future__ import annotations

from typing import Any

import torch


class IdTokenizer:
    """Texts of space-separated token ids as those ids, with 0 as the pad and EOS token."""

    def __init__(self, vocabulary: int) -> None:
        self.vocabulary, self.pad_token_id, self.eos_token_id = vocabulary, 0, 0

    def __len__(self) -> int:
        return self.vocabulary

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}


def random_texts(count: int, length: int, vocabulary: int, seed: int) -> list[str]:
    """``count`` texts of ``length`` random token ids in [1, vocabulary), for :class:`IdTokenizer`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocabulary, (count, length), generator=generator)
    return [" ".join(map(str, row.tolist())) for row in ids]
