"""Prometheus text exposition format 0.0.4: write our metrics, parse llama-server's.

Written by hand rather than with prometheus_client because we export a snapshot computed by our own samplers (the
ring buffer is the source of truth), not live counters owned by a client registry, and the format is small:
`# HELP`, `# TYPE`, then `name{label="value"} number` lines, with \\, " and newline escaped in label values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from agent.errors import InputError
from agent.metrics.histogram import HistogramSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_TYPES = ("counter", "gauge", "summary", "histogram", "untyped")
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp_ms: int | None = None


@dataclass
class MetricFamily:
    """One metric name with its HELP, TYPE and samples (summaries carry name_sum/name_count samples too)."""

    name: str
    type: str
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float | int | None, labels: Mapping[str, str] | None = None,
            suffix: str = "") -> MetricFamily:
        """Add one sample; None (no data) is skipped rather than exported as NaN."""
        if value is not None:
            self.samples.append(Sample(self.name + suffix, dict(labels or {}), float(value)))
        return self


def gauge(name: str, help: str, value: float | int | None = None,
          labels: Mapping[str, str] | None = None) -> MetricFamily:
    return MetricFamily(name, "gauge", help).add(value, labels)


def counter(name: str, help: str, value: float | int | None = None,
            labels: Mapping[str, str] | None = None) -> MetricFamily:
    return MetricFamily(name, "counter", help).add(value, labels)


def le_label(bound: float) -> str:
    """The `le` label of a bucket bound as prometheus_client writes it (0.5 -> "0.5", 1 -> "1.0", inf -> "+Inf"):
    rules and dashboards select buckets by this exact string."""
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


def histogram_family(name: str, help: str, h: HistogramSnapshot) -> MetricFamily:
    """A cumulative histogram: `_bucket{le}` per bound and +Inf, then `_sum` and `_count` (= the +Inf bucket)."""
    fam = MetricFamily(name, "histogram", help)
    for bound, count in h.buckets():
        fam.add(count, {"le": le_label(bound)}, suffix="_bucket")
    fam.add(h.sum, suffix="_sum")
    fam.add(h.count, suffix="_count")
    return fam


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_families(families: Iterable[MetricFamily]) -> str:
    """Render families; a name that appears twice is merged (HELP/TYPE once), as the format requires."""
    merged: dict[str, MetricFamily] = {}
    for fam in families:
        if not _NAME_RE.match(fam.name):
            raise ValueError(f"invalid metric name {fam.name!r}")
        if fam.type not in METRIC_TYPES:
            raise ValueError(f"invalid metric type {fam.type!r} for {fam.name}")
        if fam.name in merged:
            merged[fam.name].samples.extend(fam.samples)
        else:
            merged[fam.name] = MetricFamily(fam.name, fam.type, fam.help, list(fam.samples))
    lines: list[str] = []
    for fam in merged.values():
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for s in fam.samples:
            for key in s.labels:
                if not _LABEL_RE.match(key):
                    raise ValueError(f"invalid label name {key!r} on {s.name}")
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in s.labels.items())
            head = f"{s.name}{{{labels}}}" if labels else s.name
            ts = f" {s.timestamp_ms}" if s.timestamp_ms is not None else ""
            lines.append(f"{head} {format_value(s.value)}{ts}")
    return "\n".join(lines) + "\n" if lines else ""


# --- parsing -------------------------------------------------------------------------------------------------


def _parse_float(text: str) -> float:
    special = {"+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    return float(text)


def _parse_labels(text: str, where: str) -> tuple[dict[str, str], int]:
    """Parse `k="v",...}` starting just after `{`; returns labels and the index after `}`."""
    labels: dict[str, str] = {}
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in " ,":
            i += 1
        if i < n and text[i] == "}":
            return labels, i + 1
        eq = text.find("=", i)
        if eq < 0:
            raise ValueError(f"{where}: label without '='")
        key = text[i:eq].strip()
        if not _LABEL_RE.match(key):
            raise ValueError(f"{where}: invalid label name {key!r}")
        i = eq + 1
        if i >= n or text[i] != '"':
            raise ValueError(f"{where}: label value of {key} is not quoted")
        i += 1
        out: list[str] = []
        while True:
            if i >= n:
                raise ValueError(f"{where}: unterminated label value of {key}")
            c = text[i]
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                i += 2
                continue
            if c == '"':
                i += 1
                break
            out.append(c)
            i += 1
        labels[key] = "".join(out)


def parse_text(text: str, source: str = "<metrics>") -> dict[str, MetricFamily]:
    """Parse exposition text into families keyed by name. Samples of a summary/histogram (`x_sum`, `x_bucket`)
    are filed under their family `x` when its TYPE was declared. A malformed line raises InputError with its line."""
    families: dict[str, MetricFamily] = {}
    declared: dict[str, str] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):  # only \n ends a line; \r may sit in a label
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                rest = parts[3] if len(parts) > 3 else ""
                fam = families.setdefault(name, MetricFamily(name, "untyped", ""))
                if parts[1] == "HELP":
                    fam.help = rest.replace("\\n", "\n").replace("\\\\", "\\")
                else:
                    if rest not in METRIC_TYPES:
                        raise InputError(f"unknown metric type {rest!r}", path=source, line=lineno, field=name)
                    fam.type = rest
                    declared[name] = rest
            continue
        try:
            brace = line.find("{")
            space = line.find(" ")
            if brace >= 0 and (space < 0 or brace < space):
                name = line[:brace]
                labels, end = _parse_labels(line[brace + 1:], f"line {lineno}")
                fields = line[brace + 1 + end:].split()
            else:
                name, *fields = line.split()
                labels = {}
            if not _NAME_RE.match(name):
                raise ValueError(f"invalid metric name {name!r}")
            if not fields:
                raise ValueError("sample without a value")
            value = _parse_float(fields[0])
            ts = int(fields[1]) if len(fields) > 1 else None
        except ValueError as e:
            raise InputError(f"malformed sample: {e}", path=source, line=lineno) from None
        family_name = name
        for suffix in ("_sum", "_count", "_bucket", "_total", "_created"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and declared.get(base) in ("summary", "histogram"):
                family_name = base
                break
        fam = families.setdefault(family_name, MetricFamily(family_name, "untyped", ""))
        fam.samples.append(Sample(name, labels, value, ts))
    return families


def sample_value(families: Mapping[str, MetricFamily], name: str,
                 labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the first sample called `name` whose labels include `labels`; None if there is none."""
    for s in iter_samples(families):
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
            return s.value
    return None


def iter_samples(families: Mapping[str, MetricFamily]) -> Iterator[Sample]:
    for fam in families.values():
        yield from fam.samples
