"""Load a causal LM and its tokenizer: a GGUF file (transformers dequantizes it into torch weights; needs the gguf
and accelerate packages) or a local transformers directory (config.json + safetensors). Never from a hub: the
worker sets HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE and passes local_files_only, so a missing file is an error here
and not a download attempt.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agent.errors import InputError
from agent.worker.torch_server.arena import WeightArena

log = logging.getLogger("hosttune.torch")

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    dtype_name: str
    name: str
    context_limit: int
    eos_ids: frozenset[int]
    load_seconds: float = 0.0
    arena: WeightArena | None = None  # the weights' huge-page arena (--weights-arena)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but torch sees no CUDA device", field="--device")
    return torch.device(choice)


def pick_dtype(choice: str, device: torch.device) -> str:
    """`auto`: bf16 on a GPU (half the memory and bandwidth of fp32), fp32 on the CPU (faster there)."""
    if choice == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if choice not in DTYPES:
        raise InputError(f"unknown dtype {choice!r}; one of auto, {', '.join(DTYPES)}", field="--dtype")
    return choice


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_model(path: Path, device: torch.device, dtype_name: str) -> LoadedModel:
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF dequantizer's progress bar would flood the worker log
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.monotonic()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputError("model file is not a .gguf; give a GGUF file or a transformers directory", path=path)
        where, kwargs["gguf_file"] = path.parent, path.name
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError("model directory has no config.json", path=path)
        where = path
    else:
        raise InputError("model not found", path=path)
    dtype = DTYPES[dtype_name]
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(where, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(where, **kwargs, **{_dtype_kwarg(): dtype})
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot load the model: {e}", path=path) from e
    model.to(device).eval()
    gen = getattr(model, "generation_config", None)
    eos: set[int] = set()
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, list | tuple):
            eos.update(int(x) for x in source)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, dtype_name=dtype_name,
                       name=path.stem if path.is_file() else path.name, context_limit=limit,
                       eos_ids=frozenset(eos), load_seconds=time.monotonic() - t0)
