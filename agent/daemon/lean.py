"""Keep the long-running daemon from importing (and building) what it never uses.

Pydantic builds a model's validator when its class is defined; the daemon defines a few hundred model classes
(API schemas, controller decisions, torch worker control, ...) of which an idle daemon validates a few dozen.
`defer_models()` makes pydantic build each one on first use instead (its documented `defer_build` setting, set
on BaseModel before any of hosttune's models is defined, so every subclass inherits it): about 1-2 MB less
resident memory, and nothing changes in what is validated.

httpx's package __init__ imports its command-line client (`httpx._main`) whenever click is installed, and that
imports rich and pygments: about 5 MB of resident memory in a daemon that only ever makes loopback requests.
(click comes with uvicorn; rich with transformers, via typer.) Registering a stand-in for `httpx._main` before
httpx is first imported skips it; httpx's own fallback for a missing CLI is the same kind of stub.
"""

from __future__ import annotations

import sys
import types


def defer_models() -> None:
    import pydantic

    pydantic.BaseModel.model_config["defer_build"] = True


def _no_cli() -> None:
    raise SystemExit("httpx's command-line client is not loaded in the hosttune daemon")


def skip_httpx_cli() -> bool:
    """Install the stand-in if httpx is not imported yet; True if it was installed."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return False
    stub = types.ModuleType("httpx._main")
    stub.main = _no_cli  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stub
    return True
