"""Prometheus text through prometheus_client: our families render as the 0.0.4 text format and parse back to the
same values (prometheus_client's parser), escaping is right, collectors run at scrape time on a private registry,
llama-server's real /metrics (captured fixture) parses, and a malformed or over-long line is reported with its
line number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder

from agent.errors import InputError
from agent.metrics.histogram import Histogram
from agent.metrics.prom import (
    CONTENT_TYPE,
    MAX_LINE_CHARS,
    Exposition,
    MetricFamily,
    format_families,
    histogram_family,
    parse_text,
    sample_value,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamacpp"


def test_format_is_the_exposition_format() -> None:
    h = Histogram((0.5, 1))
    for v in (0.25, 0.75, 3):
        h.observe(v)
    fams = [histogram_family("hosttune_gateway_ttft_seconds", "Time to first token.", h.snapshot()),
            MetricFamily("hosttune_x_total", "counter", "A counter.").add(7, {"k": "v"}),
            MetricFamily("up", "gauge", "x").add(None)]
    assert format_families(fams).splitlines() == [
        "# HELP hosttune_gateway_ttft_seconds Time to first token.",
        "# TYPE hosttune_gateway_ttft_seconds histogram",
        'hosttune_gateway_ttft_seconds_bucket{le="0.5"} 1.0',
        'hosttune_gateway_ttft_seconds_bucket{le="1.0"} 2.0',
        'hosttune_gateway_ttft_seconds_bucket{le="+Inf"} 3.0',
        "hosttune_gateway_ttft_seconds_sum 4.0",
        "hosttune_gateway_ttft_seconds_count 3.0",
        "# HELP hosttune_x_total A counter.",
        "# TYPE hosttune_x_total counter",
        'hosttune_x_total{k="v"} 7.0',
        "# HELP up x",
        "# TYPE up gauge",
    ]


def test_content_type_is_what_prometheus_client_serves_plain_scrapers() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert choose_encoder("text/plain")[1] == CONTENT_TYPE


def test_special_values_and_escaping() -> None:
    fam = MetricFamily("m", "gauge", 'help with \\ and\nnewline').add(1, {"path": 'a"b\\c\nd'})
    inf = MetricFamily("n", "gauge", "h").add(math.inf, {"s": "p"}).add(-math.inf, {"s": "m"}).add(math.nan)
    text = format_families([fam, inf])
    assert '# HELP m help with \\\\ and\\nnewline' in text
    assert 'm{path="a\\"b\\\\c\\nd"} 1.0' in text
    assert 'n{s="p"} +Inf' in text and 'n{s="m"} -Inf' in text and "n NaN" in text
    back = parse_text(text)
    assert back["m"].samples[0].labels == {"path": 'a"b\\c\nd'}
    assert back["m"].help == 'help with \\ and\nnewline'
    assert sample_value(back, "n", {"s": "m"}) == -math.inf


def test_same_name_twice_is_merged_under_one_header() -> None:
    a = MetricFamily("x_total", "counter", "h").add(1, {"k": "a"})
    b = MetricFamily("x_total", "counter", "h").add(2, {"k": "b"})
    text = format_families([a, b])
    assert text.count("# TYPE x_total") == 1
    assert sample_value(parse_text(text), "x_total", {"k": "b"}) == 2


def test_a_counter_without_total_is_written_untyped_under_its_own_name() -> None:
    """prometheus_client would head it `# TYPE x_total counter` over samples called `x`; untyped keeps it whole."""
    text = format_families([MetricFamily("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "h").add(2, {"gpu": "0"})])
    assert "# TYPE DCGM_FI_DEV_ECC_DBE_VOL_TOTAL untyped" in text
    assert sample_value(parse_text(text), "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", {"gpu": "0"}) == 2


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError):
        format_families([MetricFamily("bad-name", "gauge", "h").add(1)])
    with pytest.raises(ValueError):
        format_families([MetricFamily("ok", "gauge", "h").add(1, {"bad-label": "v"})])
    with pytest.raises(ValueError):
        format_families([MetricFamily("ok", "weird", "h")])


def test_the_collector_renders_at_scrape_time_on_a_private_registry() -> None:
    value = [1.0]
    exposition = Exposition(lambda: [MetricFamily("hosttune_probe", "gauge", "h").add(value[0])])
    assert sample_value(parse_text(exposition.text()), "hosttune_probe") == 1
    value[0] = 5.0
    text = exposition.text()
    assert sample_value(parse_text(text), "hosttune_probe") == 5
    # nothing from the process-global registry (process_*, python_gc_*) leaks in
    assert set(parse_text(text)) == {"hosttune_probe"}


label_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.tuples(label_text, st.floats(allow_nan=False, width=64)), min_size=1, max_size=10))
def test_round_trip(samples: list[tuple[str, float]]) -> None:
    fam = MetricFamily("hosttune_x", "gauge", "round trip")
    for i, (label, value) in enumerate(samples):
        fam.add(value, {"i": str(i), "v": label})
    back = parse_text(format_families([fam]))["hosttune_x"]
    assert [(s.labels["v"], s.value) for s in back.samples] == samples


def test_parses_real_llama_server_metrics() -> None:
    fams = parse_text((FIXTURES / "metrics.txt").read_text())
    assert fams["llamacpp:tokens_predicted_total"].type == "counter"
    assert fams["llamacpp:requests_processing"].type == "gauge"
    assert sample_value(fams, "llamacpp:tokens_predicted_total") == 300
    assert sample_value(fams, "llamacpp:prompt_seconds_total") == pytest.approx(0.013465)
    assert "Number of generation tokens processed" in fams["llamacpp:tokens_predicted_total"].help


LLAMACPP_FAMILIES = {   # family -> TYPE, as parse_text returns them for the captured llama-server /metrics
    "llamacpp:prompt_tokens_total": "counter", "llamacpp:prompt_tokens_cached_total": "counter",
    "llamacpp:prompt_seconds_total": "counter", "llamacpp:tokens_predicted_total": "counter",
    "llamacpp:tokens_predicted_seconds_total": "counter", "llamacpp:n_decode_total": "counter",
    "llamacpp:n_tokens_max_total": "counter",   # `# TYPE llamacpp:n_tokens_max counter`: _total is added
    "llamacpp:spec_decode_num_draft_tokens_total": "counter",
    "llamacpp:spec_decode_num_accepted_tokens_total": "counter", "llamacpp:spec_decode_num_drafts_total": "counter",
    "llamacpp:prompt_tokens_seconds": "gauge", "llamacpp:predicted_tokens_seconds": "gauge",
    "llamacpp:requests_processing": "gauge", "llamacpp:requests_deferred": "gauge",
    "llamacpp:n_busy_slots_per_decode": "gauge"}


def test_real_llama_server_family_and_sample_names_are_pinned() -> None:
    """The names a reader must ask for (a renamed family would otherwise read back as None, silently)."""
    fams = parse_text((FIXTURES / "metrics.txt").read_text())
    assert {n: f.type for n, f in fams.items()} == LLAMACPP_FAMILIES
    assert all({s.name for s in f.samples} == {n} for n, f in fams.items())   # one unlabelled sample each
    assert "llamacpp:n_tokens_max" not in fams and sample_value(fams, "llamacpp:n_tokens_max") is None
    assert sample_value(fams, "llamacpp:n_tokens_max_total") is not None
    from agent.telemetry.worker import LLAMACPP_FIELDS

    assert set(LLAMACPP_FIELDS) <= set(fams)   # every name the worker sampler reads is one llama-server sends


def test_malformed_line_names_its_line() -> None:
    text = "# TYPE a gauge\na 1\na{x=\"1\" 2\n"
    with pytest.raises(InputError) as info:
        parse_text(text, source="worker /metrics")
    assert info.value.line == 3 and info.value.path == "worker /metrics"
    with pytest.raises(InputError):
        parse_text("a notanumber\n")
    with pytest.raises(InputError) as info:
        parse_text("a 1\n# TYPE b sometype\n")
    assert info.value.line == 2


def test_an_over_long_line_is_refused_before_parsing() -> None:
    """A worker's line of escaped quotes would cost the parser quadratic time: refused by length, with its line."""
    hostile = 'a{x="' + '\\"' * MAX_LINE_CHARS + '"} 1'
    with pytest.raises(InputError) as info:
        parse_text("a 1\n" + hostile + "\n", source="worker /metrics")
    assert info.value.line == 2


def test_timestamps_and_untyped_samples() -> None:
    fams = parse_text('plain 4 1700000000000\nlabelled{a="1",b="2"} -Inf\nplain 5\n')
    assert fams["plain"].samples[0].timestamp == 1700000000
    assert fams["plain"].type == "untyped" and [s.value for s in fams["plain"].samples] == [4, 5]
    assert sample_value(fams, "labelled", {"b": "2"}) == -math.inf
