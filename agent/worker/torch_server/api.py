"""HTTP side of the torch worker: the OpenAI-compatible API the gateway expects (/v1/completions and
/v1/chat/completions, streaming as SSE `data: {...}` chunks ending in `data: [DONE]`, or one JSON answer, both with
`usage`), /health (503 while loading, like llama-server), /v1/models, Prometheus /metrics, and the authenticated
/control endpoint for the live levers.

Each request becomes a Seq handed to the scheduler thread; the scheduler pushes events back into the request's
asyncio queue with call_soon_threadsafe. A client that goes away cancels its sequence, which leaves the batch at
the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.metrics.prom import CONTENT_TYPE
from agent.worker.torch_control import ControlUpdate
from agent.worker.torch_server import metrics
from agent.worker.torch_server.loader import LoadedModel
from agent.worker.torch_server.scheduler import Scheduler
from agent.worker.torch_server.sequence import Event, SamplingParams, Seq


@dataclass
class ServerState:
    """What the app serves from; `loaded`/`scheduler` stay None until the model is loaded (503 until then)."""

    control_token: str | None = None
    default_max_tokens: int = 256
    loaded: LoadedModel | None = None
    scheduler: Scheduler | None = None
    load_error: str | None = None
    started: float = field(default_factory=time.time)


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    ignore_eos: bool = False
    return_tokens: bool = Field(False, description="llama.cpp extension: include the generated token ids")


class CompletionRequest(_Params):
    prompt: str | list[int] | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Params):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="hosttune torch worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}", param=where or None)

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, str(exc), param=exc.param)

    def ready() -> tuple[LoadedModel, Scheduler] | JSONResponse:
        if state.load_error:
            return _error(500, f"model failed to load: {state.load_error}", "server_error")
        if state.loaded is None or state.scheduler is None:
            return _error(503, "Loading model", "unavailable_error")
        if state.scheduler.error is not None:
            return _error(500, f"scheduler stopped: {state.scheduler.error!r}", "server_error")
        return state.loaded, state.scheduler

    @app.get("/health")
    def health() -> Response:
        r = ready()
        if isinstance(r, JSONResponse):
            return r
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    def models() -> Response:
        r = ready()
        if isinstance(r, JSONResponse):
            return r
        loaded, _ = r
        return JSONResponse({"object": "list", "data": [{
            "id": loaded.name, "object": "model", "created": int(state.started), "owned_by": "hosttune",
            "meta": {"device": str(loaded.device), "dtype": loaded.dtype_name, "n_ctx_train": loaded.context_limit},
        }]})

    @app.get("/metrics")
    def prom() -> Response:
        if state.scheduler is None:
            return _error(503, "Loading model", "unavailable_error")
        return PlainTextResponse(metrics.render(state.scheduler), media_type=CONTENT_TYPE)

    def authorized(request: Request) -> JSONResponse | None:
        if state.control_token is None:
            return _error(403, "control is disabled: the worker was started without --control-token-file",
                          "permission_error")
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                   state.control_token.encode()):
            return JSONResponse({"error": {"message": "missing or wrong bearer token", "type": "auth_error",
                                           "code": 401}}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def controllable(request: Request) -> tuple[LoadedModel, Scheduler] | JSONResponse:
        """The model and scheduler an authorized control request acts on, or the refusal to send back."""
        denied = authorized(request)
        return denied if denied is not None else ready()

    @app.get("/control")
    def control_get(request: Request) -> Response:
        r = controllable(request)
        if isinstance(r, JSONResponse):
            return r
        loaded, sched = r
        return JSONResponse(sched.state(loaded.dtype_name).model_dump(mode="json"))

    @app.post("/control")
    async def control_post(request: Request) -> Response:
        r = controllable(request)
        if isinstance(r, JSONResponse):
            return r
        loaded, sched = r
        try:
            body = await request.json()
            update = ControlUpdate.model_validate(body)
        except (ValueError, ValidationError) as e:
            return _error(400, f"bad control update: {e}")
        sched.configure(update.model_dump(include=update.model_fields_set))
        return JSONResponse(sched.state(loaded.dtype_name).model_dump(mode="json"))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Response:
        r = ready()
        if isinstance(r, JSONResponse):
            return r
        loaded, sched = r
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise BadRequest("one prompt per request", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = list(loaded.tokenizer(prompt)["input_ids"])
        else:
            ids = [int(t) for t in prompt]
            vocab = int(loaded.model.config.vocab_size)
            if any(t < 0 or t >= vocab for t in ids):
                raise BadRequest(f"token ids must be in [0, {vocab})", "prompt")
        return await _serve(state, loaded, sched, req, ids, "text_completion", req.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Response:
        r = ready()
        if isinstance(r, JSONResponse):
            return r
        loaded, sched = r
        tok = loaded.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BadRequest("this model has no chat template; use /v1/completions", "messages")
        messages = [{"role": m.role, "content": _text(m.content)} for m in req.messages]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        return await _serve(state, loaded, sched, req, ids, "chat.completion", req.max_completion_tokens or
                            req.max_tokens)

    return app


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise BadRequest("only text content parts are supported", "messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


async def _serve(state: ServerState, loaded: LoadedModel, sched: Scheduler, req: _Params, ids: list[int],
                 kind: Literal["text_completion", "chat.completion"], max_tokens: int | None) -> Response:
    if not ids:
        raise BadRequest("empty prompt", "prompt")
    room = loaded.context_limit - len(ids)
    if room < 1:
        raise BadRequest(f"the prompt has {len(ids)} tokens; the model's context is {loaded.context_limit}",
                         "prompt")
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    params = SamplingParams(max_tokens=min(max_tokens or state.default_max_tokens, room),
                            temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                            stop=tuple(s for s in stops if s), ignore_eos=req.ignore_eos)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    tok = loaded.tokenizer
    seq = Seq(prompt_ids=ids, params=params, sink=sink, eos_ids=loaded.eos_ids, stream=req.stream,
              decode=lambda t: tok.decode(t, skip_special_tokens=True))
    rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    sched.submit(seq)
    if req.stream:
        return StreamingResponse(_stream(seq, sched, queue, rid, created, loaded.name, kind, req.return_tokens),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    text: list[str] = []
    tokens: list[int] = []
    try:
        while True:
            event = await queue.get()
            if event.kind == "delta":
                text.append(event.text)
                tokens.extend(event.token_ids)
                continue
            if event.kind == "error":
                return _error(500, event.message, "server_error")
            break
    finally:
        if seq.finished is None:
            seq.cancel()
            sched.wake()
    choice: dict[str, Any] = {"index": 0, "finish_reason": event.finish_reason, "logprobs": None}
    if kind == "chat.completion":
        choice["message"] = {"role": "assistant", "content": "".join(text)}
    else:
        choice["text"] = "".join(text)
    if req.return_tokens:
        choice["tokens"] = tokens
    return JSONResponse({"id": rid, "object": kind, "created": created, "model": loaded.name, "choices": [choice],
                         "usage": _usage(event)})


def _usage(event: Event) -> dict[str, int]:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(seq: Seq, sched: Scheduler, queue: asyncio.Queue[Event], rid: str, created: int, model: str,
                  kind: str, return_tokens: bool) -> AsyncIterator[bytes]:
    chat = kind == "chat.completion"
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any], **extra: Any) -> bytes:
        return _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], **extra})

    try:
        if chat:
            yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        while True:
            event = await queue.get()
            if event.kind == "delta":
                if not event.text and not return_tokens:
                    continue
                choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                if chat:
                    choice["delta"] = {"content": event.text}
                else:
                    choice.update(text=event.text, logprobs=None)
                if return_tokens:
                    choice["tokens"] = list(event.token_ids)
                yield chunk(choice)
            elif event.kind == "error":
                yield _sse({"error": {"message": event.message, "type": "server_error", "code": 500}})
                yield b"data: [DONE]\n\n"
                return
            else:
                end: dict[str, Any] = {"index": 0, "finish_reason": event.finish_reason}
                if chat:
                    end["delta"] = {}
                else:
                    end.update(text="", logprobs=None)
                yield chunk(end, usage=_usage(event))
                yield b"data: [DONE]\n\n"
                return
    finally:
        if seq.finished is None:
            seq.cancel()
            sched.wake()
