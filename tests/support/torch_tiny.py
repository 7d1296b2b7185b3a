"""A tiny random-weight Llama in float64 (real torch, real transformers, no files) and an oracle for it: greedy
decoding by full forward passes over the whole sequence, no KV cache, one sequence at a time. float64 keeps
cache/no-cache and batched/unbatched arithmetic far from argmax ties, so outputs can be compared exactly."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.support import tiers


def require_torch() -> Any:
    """Import torch + transformers, or skip (fail on CI, where `make setup` installs the torch extra)."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        if tiers.on_ci():
            pytest.fail(f"the torch extra must be installed on CI: {e}", pytrace=False)
        pytest.skip(f"torch extra not installed ({e}); run `make setup`")
    return torch


def tiny_model(seed: int = 0, vocab: int = 96) -> Any:
    torch = require_torch()
    from transformers import LlamaConfig, LlamaForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()
    return model


def oracle(model: Any, prompt: list[int], n: int) -> list[int]:
    torch = require_torch()
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]
