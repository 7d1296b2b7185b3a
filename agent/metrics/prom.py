"""Prometheus text exposition (format 0.0.4) through prometheus_client: write our metrics, parse the workers'.

Our samplers export a snapshot they computed (the telemetry ring is the source of truth), not live counters owned by
a client registry. So they keep building MetricFamily lists (`MetricFamily(name, type, help).add(value, labels,
suffix=...)`), and a custom collector (FamiliesCollector) turns each list into prometheus_client's core metric
families at scrape time; `generate_latest` on a private CollectorRegistry (never the process-global REGISTRY, which
would mix in whatever else the process registered) writes the text. Parsing goes through
`prometheus_client.parser.text_string_to_metric_families`; `parse_text` hands the result back as MetricFamily
objects keyed by the name the TYPE line declared, so callers keep reading `fams[name]` and `sample_value`.

Counters: prometheus_client names a counter family without `_total` and writes `# TYPE x_total counter` for it, so
a counter here must be named `..._total` (hosttune's all are); one that is not (a foreign name) is written as
untyped rather than under a header that would not match its samples. When parsing, a counter declared without
`_total` is read with `_total` appended to its samples (prometheus_client's OpenMetrics naming).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from agent.errors import InputError
from agent.metrics.histogram import HistogramSnapshot

# What generate_latest writes. prometheus_client 0.2x's CONTENT_TYPE_LATEST names version=1.0.0, the text format of
# Prometheus 3 (UTF-8 names), which Prometheus 2.x scrapers do not negotiate; our names are all legacy ones.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_TYPES = ("counter", "gauge", "summary", "histogram", "untyped")
# prometheus_client 0.2x accepts (and escapes) UTF-8 names; ours stay in the legacy set every scraper reads
_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Longest line parse_text accepts. The worker is unprivileged and may be compromised; prometheus_client's label
# parser is quadratic in the escaped quotes of one line, so one huge line could hold the root daemon's sampler.
# Real lines (llama-server, the torch worker) are under 200 bytes.
MAX_LINE_CHARS = 4096

__all__ = ["CONTENT_TYPE", "MAX_LINE_CHARS", "Exposition", "FamiliesCollector", "MetricFamily", "Sample", "counter",
           "format_families", "gauge", "histogram_family", "iter_samples", "parse_text", "sample_value", "to_metrics"]


@dataclass
class MetricFamily:
    """One metric name with its HELP, TYPE and samples (histograms carry name_bucket/_sum/_count samples too)."""

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


def histogram_family(name: str, help: str, h: HistogramSnapshot) -> MetricFamily:
    """A cumulative histogram: `_bucket{le}` per bound and +Inf, then `_sum` and `_count` (= the +Inf bucket).
    `le` is written as prometheus_client writes bounds (0.5 -> "0.5", 1 -> "1.0"): rules select buckets by it."""
    fam = MetricFamily(name, "histogram", help)
    for bound, count in h.buckets():
        fam.add(count, {"le": floatToGoString(bound)}, suffix="_bucket")
    fam.add(h.sum, suffix="_sum")
    fam.add(h.count, suffix="_count")
    return fam


# --- writing -------------------------------------------------------------------------------------------------


def to_metrics(families: Iterable[MetricFamily]) -> list[Metric]:
    """prometheus_client core families; a name that appears twice is merged (HELP/TYPE once), as the format
    requires. Invalid names and types raise ValueError."""
    merged: dict[str, Metric] = {}
    for fam in families:
        if not _NAME_RE.match(fam.name):
            raise ValueError(f"invalid metric name {fam.name!r}")
        if fam.type not in METRIC_TYPES:
            raise ValueError(f"invalid metric type {fam.type!r} for {fam.name}")
        for s in fam.samples:
            for key in s.labels:
                if not _LABEL_RE.match(key):
                    raise ValueError(f"invalid label name {key!r} on {s.name}")
        metric = merged.get(fam.name)
        if metric is None:
            if fam.type == "counter" and fam.name.endswith("_total"):
                metric = Metric(fam.name[: -len("_total")], fam.help, "counter")
            else:
                metric = Metric(fam.name, fam.help, "untyped" if fam.type == "counter" else fam.type)
            merged[fam.name] = metric
        metric.samples.extend(fam.samples)
    return list(merged.values())


class FamiliesCollector:
    """A prometheus_client custom collector: `collect()` yields the core families built, at scrape time, from
    `families()` (a sampler's snapshot rendered by its `families` method)."""

    def __init__(self, families: Callable[[], Iterable[MetricFamily]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from to_metrics(self._families())


class Exposition:
    """A private registry holding one FamiliesCollector; `text()` is a /metrics body."""

    def __init__(self, families: Callable[[], Iterable[MetricFamily]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FamiliesCollector(families))

    def text(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


def format_families(families: Iterable[MetricFamily]) -> str:
    """Render families once (a fresh private registry): for callers that already hold the families."""
    fams = list(families)
    return Exposition(lambda: fams).text()


# --- parsing -------------------------------------------------------------------------------------------------

_PARSE_ERRORS = (ValueError, IndexError, KeyError, TypeError)


def _bad_line(text: str) -> tuple[int | None, str]:
    """The first line that fails to parse on its own, and why (the error path only: one parse per line)."""
    for lineno, line in enumerate(text.split("\n"), 1):
        try:
            for _ in text_string_to_metric_families(line):
                pass
        except _PARSE_ERRORS as e:
            return lineno, str(e) or type(e).__name__
    return None, "inconsistent exposition"


def parse_text(text: str, source: str = "<metrics>") -> dict[str, MetricFamily]:
    """Parse exposition text into families keyed by name (a counter under its `_total` name); the samples of a
    summary/histogram (`x_sum`, `x_bucket`) are filed under their family `x` when its TYPE was declared. A
    malformed line, an unknown TYPE or a line over MAX_LINE_CHARS raises InputError with its line."""
    if len(text) > MAX_LINE_CHARS:
        for lineno, line in enumerate(text.split("\n"), 1):  # only \n ends a line; \r may sit in a label
            if len(line) > MAX_LINE_CHARS:
                raise InputError(f"line longer than {MAX_LINE_CHARS} characters", path=source, line=lineno)
    families: dict[str, MetricFamily] = {}
    try:
        for metric in text_string_to_metric_families(text):
            if metric.type == "counter":
                name, typ = metric.name + "_total", "counter"
            else:
                name, typ = metric.name, "untyped" if metric.type == "unknown" else metric.type
            if typ not in METRIC_TYPES:
                raise ValueError(f"unknown metric type {typ!r}")
            fam = families.get(name)
            if fam is None:
                families[name] = MetricFamily(name, typ, metric.documentation, metric.samples)
            else:
                fam.samples.extend(metric.samples)
    except _PARSE_ERRORS as e:
        bad, why = _bad_line(text)
        raise InputError(f"malformed metrics: {why if bad else e}", path=source, line=bad) from None
    return families


def sample_value(families: Mapping[str, MetricFamily], name: str,
                 labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the first sample called `name` whose labels include `labels`; None if there is none."""
    for s in iter_samples(families):
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
            return float(s.value)
    return None


def iter_samples(families: Mapping[str, MetricFamily]) -> Iterator[Sample]:
    for fam in families.values():
        yield from fam.samples
