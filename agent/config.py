"""The daemon's configuration: a YAML file validated like a policy, with HOSTTUNE_* environment overrides.

One pydantic model validates the file and the environment together (systemd drop-ins and containers set env
vars), and refuses unsafe values in one place — an API bound to a non-loopback address needs
`api.allow_remote: true`, so a typo cannot expose a root daemon to the network. The environment is read here
(`environment_values`) rather than by pydantic-settings: that package cost the long-running daemon about 1.1 MB
of resident memory for the twenty lines below.

Precedence: environment (HOSTTUNE_POLICY, HOSTTUNE_API__PORT, ...; nested fields joined by "__") over the file over
the defaults. Errors name where the bad value came from: `FILE:LINE: field: message` for the file, or the
environment variable's name. Relative paths in the file are taken relative to the file's directory.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from agent.errors import InputError
from agent.fsio import read_text_capped
from agent.gateway.settings import GatewaySettings
from agent.hostfs import HostPaths
from agent.httpguard import ServerLimits, host_names, is_loopback, normalize_host_name
from agent.policy.yamlnodes import locations, nearest_location, parse_yaml, to_plain

ENV_PREFIX = "HOSTTUNE_"
ENV_CONFIG = "HOSTTUNE_CONFIG"
DEFAULT_CONFIG = Path("/etc/hosttune/daemon.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/hosttune")
TOKEN_FILE_NAME = "api.token"
AUDIT_LOG_NAME = "audit.log"
CONFIG_MAX_BYTES = 1 << 20

# Fields holding paths: relative values in a config file are resolved against the file's directory.
_PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("state_dir",), ("token_file",), ("audit_log",), ("procfs",), ("sysfs",), ("rootfs",), ("nvml_sim",),
    ("api", "unix_socket"), ("api", "metrics_token_file"),
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


HostName = Annotated[str, AfterValidator(normalize_host_name)]


class ServedSection(Section):
    """What the API and the gateway share: the Host names they answer to and the limits on a request's head and on
    concurrent connections (agent/httpguard.py)."""

    allowed_hosts: list[HostName] = Field(default_factory=list, max_length=32,
                                          description="Host header names accepted besides localhost, 127.0.0.1, "
                                                      "::1 and the bind address (others get 421: DNS rebinding)")
    max_url_bytes: int = Field(8192, ge=256, le=65536, description="longest URL (path and query); 414 above it")
    max_header_bytes: int = Field(32768, ge=1024, le=1 << 20, description="largest header block; 431 above it")
    max_connections: int = Field(256, ge=8, le=100000, description="concurrent connections and requests; 503 "
                                 "above it")
    header_timeout_s: float = Field(10.0, ge=0.1, le=300, description="a connection that has not sent a whole "
                                    "request head this long after it opened (or after a request began) is closed")

    def server_limits(self, bind_host: str | None) -> ServerLimits:
        """The limits of a server bound to `bind_host` (None: a unix socket, where the Host is not checked)."""
        names = None if bind_host is None else host_names(bind_host, self.allowed_hosts)
        return ServerLimits(names, self.max_url_bytes, self.max_header_bytes, self.max_connections,
                            self.header_timeout_s)


class ApiSettings(ServedSection):
    allow_remote: bool = Field(False, description="permit a non-loopback `host` (the API can retune the host)")
    host: str = Field("127.0.0.1", description="TCP address to bind (ignored when unix_socket is set)")
    port: int = Field(7711, ge=0, le=65535, description="TCP port; 0 picks a free one (tests)")
    unix_socket: Path | None = Field(None, description="serve on this unix socket (mode 0600) instead of TCP")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="largest request body accepted")
    metrics_token_file: Path | None = Field(None, validate_default=True,
                                            description="a read-only scrape credential: when set, /metrics "
                                            "needs `Authorization: Bearer` with the token in this file (0600, "
                                            "never created by the daemon, not the API token); unset: /metrics "
                                            "needs no token, so a remote API (allow_remote, non-loopback host) "
                                            "must set it")

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, v: str, info: ValidationInfo) -> str:
        if not is_loopback(v) and not info.data.get("allow_remote", False):
            raise ValueError(f"{v!r} is not a loopback address: set api.allow_remote: true to expose the API")
        return v

    @field_validator("metrics_token_file")
    @classmethod
    def _scrape_token_when_remote(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        # /metrics carries the policy's name and digest, the model file, the version and GPU UUIDs: open to
        # localhost only. A unix socket is not remote, whatever `host` says.
        remote = not is_loopback(info.data.get("host", "127.0.0.1")) and info.data.get("unix_socket") is None
        if v is None and remote and info.data.get("allow_remote", False):
            raise ValueError("api.allow_remote: true with a non-loopback api.host needs api.metrics_token_file "
                             "(a scrape token): /metrics is otherwise open to every address that reaches the API")
        return v


class GatewaySection(ServedSection):
    """The daemon config's `gateway:` section: where the gateway listens, and the admission knobs a config file
    may set (bounded tighter than the gateway's own settings: a typo in a root daemon's file is refused)."""

    enabled: bool = Field(True, description="run the OpenAI-compatible gateway in front of the worker")
    allow_remote: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    limit: int = Field(4, ge=1, le=4096, description="requests in flight to the worker (the controller moves it)")
    max_queue: int = Field(128, ge=0, le=100000, description="requests waiting for admission; more get 503")
    queue_timeout_s: float = Field(30.0, gt=0, le=3600, description="wait for admission or a restarting worker")
    max_connections: int = Field(1024, ge=8, le=100000, description="concurrent connections and requests; 503 "
                                 "above it")

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, v: str, info: ValidationInfo) -> str:
        if not is_loopback(v) and not info.data.get("allow_remote", False):
            raise ValueError(f"{v!r} is not a loopback address: set gateway.allow_remote: true to expose it")
        return v

    def settings(self) -> GatewaySettings:
        """The running gateway's settings: this section's admission knobs, the gateway's defaults for the rest."""
        return GatewaySettings(limit=self.limit, max_queue=self.max_queue, queue_timeout_s=self.queue_timeout_s)


class WorkerSettings(Section):
    enabled: bool = Field(True, description="start the policy's worker section (if it has one)")
    allow_remote: bool = Field(False, description="permit a policy's non-loopback worker.host (the worker has no "
                               "auth and no admission limit of its own)")
    user: str = Field("hosttune-worker", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
                      description="unprivileged user the worker runs as (no capabilities, scrubbed environment); "
                      "when it does not exist the worker runs as nobody, with a warning; `root` (dev machines "
                      "only) keeps the worker privileged")
    stop_timeout_s: float = Field(10.0, gt=0, le=300, description="SIGTERM, then SIGKILL after this long")
    ready_timeout_s: float = Field(300.0, gt=0, le=3600, description="longest model load before READY gives up")
    backoff_initial_s: float = Field(1.0, gt=0, le=600, description="wait before restarting after a crash; doubles "
                                     "with each further crash inside crashloop_window_s")
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="longest wait between restarts")
    crashloop_count: int = Field(5, ge=1, le=10000, description="this many crashes within crashloop_window_s: the "
                                 "worker is marked failed and no longer restarted (POST /v1/worker/restart re-arms)")
    crashloop_window_s: float = Field(120.0, gt=0, le=86400)


class TelemetrySection(Section):
    node_series: bool = Field(False, description="also export node_cpu_seconds_total, node_memory_*_bytes and "
                              "node_load1 under node_exporter's names (off: a node_exporter on the host exports "
                              "them, and two exporters of one name clash)")


class DaemonSettings(Section):
    """Everything `hosttune daemon` needs; see docs/daemon.md for each field. load_settings() adds the
    environment's HOSTTUNE_* overrides; constructing the model directly reads no environment."""

    policy: str | None = Field(None, description="policy name or path applied at start; none: apply nothing")
    state_dir: Path = Field(DEFAULT_STATE_DIR, description="journal, token, audit log, worker logs")
    procfs: Path | None = Field(None, description="procfs root (fixture trees, containers)")
    sysfs: Path | None = None
    rootfs: Path | None = None
    nvml_sim: Path | None = Field(None, description="simulate NVML from a GPU description file")
    token_file: Path | None = Field(None, description=f"API bearer token (default STATE_DIR/{TOKEN_FILE_NAME})")
    audit_log: Path | None = Field(None, description=f"JSON-lines audit log (default STATE_DIR/{AUDIT_LOG_NAME})")
    audit_max_bytes: int = Field(8 << 20, ge=64 << 10, le=1 << 30, description="rotate the audit log at this size")
    audit_keep: int = Field(2, ge=1, le=10, description="rotated audit logs kept (audit.log.1 ...)")
    api: ApiSettings = Field(default_factory=ApiSettings)
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    drift_check_s: float = Field(60.0, ge=0, le=86400, description="verify the applied policy every N s; 0: off")
    reapply_on_drift: bool = Field(False, description="re-apply drifted tunables (else only report them)")
    telemetry_interval_s: float = Field(1.0, ge=0.1, le=3600)
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    controller_enabled: bool = Field(True, description="run the controller when the worker's policy has an SLO")
    controller_interval_s: float = Field(5.0, ge=0.5, le=3600)
    revert_on_stop: bool = Field(False, description="revert host tuning on SIGTERM (off: fleets saw outages)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model_dirs: list[Path] | None = Field(
        None, max_length=32, description="directories a policy submitted over the API may name worker models "
        "from; default: the bundled model's directory. Policy files on the search path may name any path")

    # Derived locations -------------------------------------------------------------------------------------
    @property
    def token_path(self) -> Path:
        return self.token_file or self.state_dir / TOKEN_FILE_NAME

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.state_dir / AUDIT_LOG_NAME

    def inline_model_dirs(self) -> list[Path]:
        from agent.model_files import default_model_dirs

        return list(self.model_dirs) if self.model_dirs is not None else default_model_dirs()

    def host_paths(self) -> HostPaths:
        return HostPaths.from_options(
            str(self.procfs) if self.procfs else None,
            str(self.sysfs) if self.sysfs else None,
            str(self.rootfs) if self.rootfs else None,
        )


# --- loading with file:line errors ----------------------------------------------------------------------------

def read_yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[str, tuple[Path, int]]]:
    """Parse a YAML mapping and where each key was written (dotted key -> (file, line)), with the reader policies
    use (agent.policy.yamlnodes). Syntax errors and non-mappings raise InputError."""
    try:
        text = read_text_capped(path, CONFIG_MAX_BYTES)
    except OSError as e:
        raise InputError(f"cannot read config: {e.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise InputError("config is not valid UTF-8", path=path) from None
    root = parse_yaml(text, path, what="config")
    if root is None or root.value is None:
        return {}, {}
    if not root.is_map():
        raise InputError("a daemon config must be a mapping of settings", path=path, line=1)
    return to_plain(root), locations(root)


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    for field_path in _PATH_FIELDS:
        holder: Any = data
        for name in field_path[:-1]:
            holder = holder.get(name) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            value = holder.get(field_path[-1])
            if isinstance(value, str) and value and not os.path.isabs(value):
                holder[field_path[-1]] = str(base / value)
    policy = data.get("policy")
    if isinstance(policy, str) and ("/" in policy or policy.endswith((".yaml", ".yml"))) \
            and not os.path.isabs(policy):
        data["policy"] = str(base / policy)


def environment_values(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """HOSTTUNE_<SETTING> and HOSTTUNE_<SECTION>__<SETTING> variables as nested values (names are not case
    sensitive). Variables whose first part names no setting (HOSTTUNE_CONFIG, HOSTTUNE_CACHE, ...) belong to
    someone else and are left alone; empty ones are ignored. A whole section may be given as JSON
    (HOSTTUNE_API='{"port": 7799}')."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for key, value in sorted(env.items()):
        if not key.upper().startswith(ENV_PREFIX) or value == "":
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        field = DaemonSettings.model_fields.get(path[0])
        if field is None or not all(path):
            continue
        if len(path) == 1 and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            try:
                out[path[0]] = _merged(out.get(path[0], {}), json.loads(value))
            except (ValueError, TypeError):
                out[path[0]] = value  # not JSON: validation names the variable
            continue
        holder = out
        for part in path[:-1]:
            nested = holder.setdefault(part, {})
            if not isinstance(nested, dict):
                break
            holder = nested
        else:
            holder[path[-1]] = value
    return out


def _merged(base: Any, over: Any) -> Any:
    """`over` on top of `base`, mappings merged key by key."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


def _env_name(loc: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in loc)


def _known_fields(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Field names valid at the parent of `loc` (for 'did you mean')."""
    current: Any = model
    for name in loc[:-1]:
        field = current.model_fields.get(name) if hasattr(current, "model_fields") else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        current = field.annotation
    return list(current.model_fields)


def _explain(err: Mapping[str, Any]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_fields(DaemonSettings, loc), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown setting{hint}"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def load_settings(path: Path | None = None) -> DaemonSettings:
    """Validate the config file (optional) plus HOSTTUNE_* environment variables, or raise InputError."""
    data: dict[str, Any] = {}
    lines: dict[str, tuple[Path, int]] = {}
    if path is not None:
        data, lines = read_yaml_with_lines(path)
        _resolve_relative(data, path.resolve().parent)
    try:
        return DaemonSettings.model_validate(_merged(data, environment_values()))
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        message = _explain(err)
        for n in range(len(loc), 0, -1):
            if _env_name(loc[:n]) in os.environ:
                raise InputError(message, path=f"environment {_env_name(loc[:n])}", field=".".join(loc)) from None
        where = nearest_location(lines, ".".join(loc))
        raise InputError(message, path=path or "<defaults>", line=where[1] if where else None,
                         field=".".join(loc)) from None


def config_path_from(arg: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """--config wins, then $HOSTTUNE_CONFIG, then /etc/hosttune/daemon.yaml if it exists; else no file."""
    environ = os.environ if env is None else env
    if arg:
        return Path(arg)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
