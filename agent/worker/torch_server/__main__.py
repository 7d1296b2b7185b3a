"""`python -m agent.worker.torch_server --model PATH --host 127.0.0.1 --port P [...]`

The HTTP port opens first and answers /health with 503 while the model loads in a background thread, as
llama-server does, so the supervisor's readiness probe sees "loading" rather than "nothing there". A model that
cannot load ends the process with exit status 1 and the reason on stderr (the supervisor keeps the tail).

Environment: HOSTTUNE_TORCH_INJECT_OOM=N makes the first N decode steps raise an out-of-memory error (the same
test switch as POST /control {"inject_oom": N}).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from agent.errors import HostTuneError, InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.worker.torch_server",
                                description="hosttune's PyTorch worker: OpenAI-compatible, continuous batching, "
                                            "live max batch and KV budget")
    p.add_argument("--model", required=True, type=Path, help="a .gguf file or a transformers model directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-batch", type=int, default=8, help="sequences per decode step (live: POST /control)")
    p.add_argument("--kv-budget-tokens", type=int, default=None,
                   help="cap on prompt + max_tokens summed over running sequences (live: POST /control)")
    p.add_argument("--control-token-file", type=Path, default=None,
                   help="bearer token for /control (mode 0600); without it /control answers 403")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the CPUs allowed)")
    p.add_argument("--weights-arena", default=None, choices=["thp", "hugetlb"],
                   help="copy the weights into one huge-page arena: thp (MADV_HUGEPAGE) or hugetlb (the 2 MiB pool)")
    p.add_argument("--mlock-weights", action="store_true", help="mlock the weights arena (needs --weights-arena)")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    p.add_argument("--alias", default=None, help="model name in /v1/models and answers (default: file stem)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    for name in ("max_batch", "kv_budget_tokens", "threads", "default_max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"must be at least 1, got {value}", field="--" + name.replace("_", "-"))
    if args.mlock_weights and args.weights_arena is None:
        raise InputError("needs --weights-arena", field="--mlock-weights")
    if not 0 < args.port < 65536:
        raise InputError(f"port {args.port} out of range", field="--port")
    if not args.model.exists():
        raise InputError("model not found", path=args.model, field="--model")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        token = None
        if args.control_token_file is not None:
            from agent.worker.torch_control import read_token

            token = read_token(args.control_token_file)
        inject = int(os.environ.get("HOSTTUNE_TORCH_INJECT_OOM", "0") or 0)
    except HostTuneError as e:
        print(f"torch_server: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"torch_server: error: HOSTTUNE_TORCH_INJECT_OOM: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("hosttune.torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    import uvicorn

    from agent.worker.torch_server.api import ServerState, create_app
    from agent.worker.torch_server.arena import pack_weights
    from agent.worker.torch_server.loader import load_model, pick_device, pick_dtype
    from agent.worker.torch_server.scheduler import Scheduler

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    state = ServerState(control_token=token, default_max_tokens=args.default_max_tokens)
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=args.host, port=args.port,
                                           log_level="warning", access_log=False))

    def load() -> None:
        t0 = time.monotonic()
        try:
            device = pick_device(args.device)
            dtype = pick_dtype(args.dtype, device)
            loaded = load_model(args.model, device, dtype)
            if args.weights_arena is not None:
                loaded.arena = pack_weights(loaded.model, args.weights_arena, lock=args.mlock_weights)
                log.info("weights: %d tensors, %d bytes in a %s arena%s", loaded.arena.tensors,
                         loaded.arena.weight_bytes, loaded.arena.mode, " (locked)" if loaded.arena.locked else "")
                loaded.load_seconds = time.monotonic() - t0
            if args.alias:
                loaded.name = args.alias
            sched = Scheduler(loaded.model, device=loaded.device, dtype=loaded.dtype, max_batch=args.max_batch,
                              kv_budget_tokens=args.kv_budget_tokens, model_name=loaded.name, inject_oom=inject)
            sched.start()
            state.loaded, state.scheduler = loaded, sched
            log.info("model %s loaded in %.1fs on %s (%s, %d torch threads); serving on %s:%d", loaded.name,
                     loaded.load_seconds, device, dtype, torch.get_num_threads(), args.host, args.port)
        except Exception as e:
            state.load_error = str(e)
            log.error("cannot load %s: %s", args.model, e)
            server.should_exit = True

    threading.Thread(target=load, name="torch-load", daemon=True).start()
    server.run()
    if state.scheduler is not None:
        state.scheduler.stop()
    return 1 if state.load_error else 0


if __name__ == "__main__":
    sys.exit(main())
