"""Prometheus text: our writer's output parses back to the same values, escaping is right, llama-server's real
/metrics (captured fixture) parses, and a malformed line is reported with its line number."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import InputError
from agent.metrics.prom import MetricFamily, format_families, format_value, parse_text, sample_value

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamacpp"


def test_format_is_the_exposition_format() -> None:
    fam = MetricFamily("hosttune_gateway_ttft_seconds", "summary", "Time to first token.")
    fam.add(0.25, {"quantile": "0.5"}).add(1.5, {"quantile": "0.99"})
    fam.add(10.0, suffix="_sum").add(7, suffix="_count")
    text = format_families([fam, MetricFamily("up", "gauge", "x").add(None)])
    assert text.splitlines() == [
        "# HELP hosttune_gateway_ttft_seconds Time to first token.",
        "# TYPE hosttune_gateway_ttft_seconds summary",
        'hosttune_gateway_ttft_seconds{quantile="0.5"} 0.25',
        'hosttune_gateway_ttft_seconds{quantile="0.99"} 1.5',
        "hosttune_gateway_ttft_seconds_sum 10",
        "hosttune_gateway_ttft_seconds_count 7",
        "# HELP up x",
        "# TYPE up gauge",
    ]


def test_special_values_and_escaping() -> None:
    assert [format_value(v) for v in (math.inf, -math.inf, 3.0, 0.1)] == ["+Inf", "-Inf", "3", "0.1"]
    assert format_value(math.nan) == "NaN"
    fam = MetricFamily("m", "gauge", 'help with \\ and\nnewline').add(1, {"path": 'a"b\\c\nd'})
    text = format_families([fam])
    assert '# HELP m help with \\\\ and\\nnewline' in text
    assert 'm{path="a\\"b\\\\c\\nd"} 1' in text
    back = parse_text(text)
    assert back["m"].samples[0].labels == {"path": 'a"b\\c\nd'}
    assert back["m"].help == 'help with \\ and\nnewline'


def test_same_name_twice_is_merged_under_one_header() -> None:
    a = MetricFamily("x_total", "counter", "h").add(1, {"k": "a"})
    b = MetricFamily("x_total", "counter", "h").add(2, {"k": "b"})
    text = format_families([a, b])
    assert text.count("# TYPE x_total") == 1
    assert sample_value(parse_text(text), "x_total", {"k": "b"}) == 2


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError):
        format_families([MetricFamily("bad-name", "gauge", "h").add(1)])
    with pytest.raises(ValueError):
        format_families([MetricFamily("ok", "gauge", "h").add(1, {"bad-label": "v"})])
    with pytest.raises(ValueError):
        format_families([MetricFamily("ok", "weird", "h")])


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


def test_malformed_line_names_its_line() -> None:
    text = "# TYPE a gauge\na 1\na{x=\"1\" 2\n"
    with pytest.raises(InputError) as info:
        parse_text(text, source="worker /metrics")
    assert info.value.line == 3 and info.value.path == "worker /metrics"
    with pytest.raises(InputError):
        parse_text("a notanumber\n")
    with pytest.raises(InputError):
        parse_text("# TYPE a sometype\n")


def test_timestamps_and_untyped_samples() -> None:
    fams = parse_text('plain 4 1700000000000\nlabelled{a="1",b="2"} -Inf\n')
    assert fams["plain"].samples[0].timestamp_ms == 1700000000000
    assert fams["plain"].type == "untyped"
    assert sample_value(fams, "labelled", {"b": "2"}) == -math.inf
