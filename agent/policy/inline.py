"""What a policy submitted over the API (inline YAML/JSON) may not say, that a policy file on the search path may.

Files on the search path are root-owned: whoever wrote them could run anything as root anyway, so they may name
binaries, argv, extra arguments, URLs, any model path and parents by path. An inline body comes from a token
holder, who must not be able to make the root daemon read, stat or run an arbitrary file through it:

- `extends:` names policies on the search path only (no paths: `/etc/shadow`, `../../x`, `/proc/self/pagemap`);
- `worker.binary`, `worker.argv`, `worker.extra_args`, `worker.health_url` and `worker.metrics_url` are refused;
- `worker.model` is `default` or a file inside the daemon's `model_dirs` (agent.model_files.resolve_model),
  both for the worker and for `model.*` names in expressions (`=model.size_bytes` of any file was a file-size oracle).

Only what the inline body itself writes is checked: values it inherits from a parent on the search path are that
trusted file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from agent.errors import InputError
from agent.policy.yamlnodes import Node

WORKER_REFUSED = ("binary", "argv", "extra_args", "health_url", "metrics_url")


@dataclass(frozen=True)
class InlineRules:
    """The restrictions for one inline policy; `source` is the path the body is known by (it need not exist)."""

    source: Path
    model_dirs: tuple[Path, ...]

    def is_inline(self, path: Path) -> bool:
        return path == self.source

    def refuse_path_extends(self, ref: str, node: Node) -> NoReturn:
        shown = ref if len(ref) <= 80 else ref[:77] + "..."
        raise InputError(f"an inline policy extends policies by name on the search path only, not by path "
                         f"({shown!r})", path=node.file, line=node.line, field="extends")

    def check_own(self, root: Node) -> None:
        """Refuse the worker fields an inline body may not set, at the line that sets them."""
        worker = root.value.get("worker")
        if worker is None or not worker.is_map():
            return
        for key in WORKER_REFUSED:
            node = worker.value.get(key)
            if node is not None and node.value is not None:
                raise InputError(f"an inline policy cannot set worker.{key} (it names a program, its arguments "
                                 f"or a URL): put it in a policy file on the daemon's search path",
                                 path=node.file, line=node.line, field=f"worker.{key}")
        model = worker.value.get("model")
        if model is not None and isinstance(model.value, str) and model.value != "default" \
                and not model.value.startswith("="):
            self.check_model(model)

    def check_model(self, node: Node) -> Path:
        from agent.model_files import resolve_model

        try:
            return resolve_model(str(node.value), self.model_dirs)
        except InputError as e:
            raise InputError(e.message, path=node.file, line=node.line, field="worker.model") from None
