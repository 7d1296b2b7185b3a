"""`hosttune daemon [--config FILE]`: run the daemon in the foreground (systemd runs it this way, Type=notify)."""

from __future__ import annotations

import argparse

HELP = """\
Run hosttune in the foreground: roll back an interrupted transaction, apply the configured policy, start the
worker and the gateway, run telemetry / drift checks, and serve the REST API; then tell systemd READY=1.

Signals: SIGHUP reloads the config and policy (applies the difference); SIGTERM stops the worker and leaves the
host tuned (unless revert_on_stop: true).

Config: --config FILE, else $HOSTTUNE_CONFIG, else /etc/hosttune/daemon.yaml if present, else defaults.
Every setting can be overridden by HOSTTUNE_<NAME> (nested: HOSTTUNE_API__PORT). See docs/daemon.md.
"""

EPILOG = """\
examples:
  hosttune daemon --config /etc/hosttune/daemon.yaml
  HOSTTUNE_STATE_DIR=/tmp/ht HOSTTUNE_API__PORT=7799 hosttune daemon
  curl -H "Authorization: Bearer $(cat /var/lib/hosttune/api.token)" http://127.0.0.1:7711/v1/status
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="run the daemon in the foreground (REST API, worker, scheduler)",
                       description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="daemon config (YAML)")
    p.add_argument("--check", action="store_true", help="validate the config (and token file) and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.daemon.lean import defer_models, skip_httpx_cli

    skip_httpx_cli()  # before anything imports httpx or defines a model: see agent/daemon/lean.py
    defer_models()
    from agent.config import config_path_from, load_settings

    path = config_path_from(args.config)
    if args.check:
        from agent.api.tokenfile import ensure_token

        settings = load_settings(path)
        if settings.token_path.exists():
            ensure_token(settings.token_path)
        print(f"config OK: {path or '(defaults and environment)'}")
        return 0
    from agent.daemon.runner import run_daemon

    return run_daemon(path)
