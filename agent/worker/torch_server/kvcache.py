"""The few places that touch transformers' KV-cache object, kept in one file because its API moved between
releases: 5.x keeps `cache.layers[i].keys/values` and names the forward argument `cache`; 4.x keeps
`cache.key_cache`/`value_cache` lists and names it `past_key_values`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import DynamicCache

KV = tuple[torch.Tensor, torch.Tensor]


def cache_layers(cache: Any) -> list[KV]:
    """(keys, values) per layer, each [rows, kv_heads, columns, head_dim]."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def build_cache(layers: list[KV]) -> DynamicCache:
    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


@functools.cache
def cache_kwarg(forward_owner: Any) -> str:
    """Name of the forward() argument that takes the cache for this model class."""
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model: Any, input_ids: torch.Tensor, cache: Any, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """One forward pass that extends `cache` in place; returns the last position's logits [rows, vocab] and the
    cache. Only the last position's logits are computed (logits_to_keep=1): the prompt's are never needed."""
    owner: Any = type(model)
    kwargs: dict[str, Any] = {cache_kwarg(owner): cache, "use_cache": True, "logits_to_keep": 1}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    out = model(input_ids=input_ids, **kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    if new_cache is None:
        new_cache = cache
    return out.logits[:, -1, :], new_cache
