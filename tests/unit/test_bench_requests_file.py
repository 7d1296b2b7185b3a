"""`hosttune bench --requests FILE.jsonl`: the file format, and hostile files refused with the file, the line and
the key named, before anything is sent."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from agent.bench import requests_file
from agent.bench.requests_file import load_requests
from agent.errors import InputError


def _write(tmp_path: Path, lines: list[object] | str) -> Path:
    path = tmp_path / "traffic.jsonl"
    text = lines if isinstance(lines, str) else "\n".join(
        ln if isinstance(ln, str) else json.dumps(ln) for ln in lines) + "\n"
    path.write_text(text)
    return path


def test_messages_prompt_session_and_order(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}],
         "max_tokens": 32, "session": "conv-1"},
        "",
        {"prompt": "Summarise this.", "max_tokens": 128},
    ])
    replay = load_requests(path)
    assert not replay.timed and len(replay.requests) == 2
    first, second = replay.requests
    assert first.messages is not None and first.messages[-1] == ("user", "and?")
    assert first.system == "be brief" and first.prompt == "and?" and first.session == "conv-1"
    assert first.max_tokens == 32
    assert second.messages is None and second.prompt == "Summarise this." and second.session is None
    source = replay.source()
    rng = random.Random(1)
    assert [source.draw(rng), source.draw(rng)] == replay.requests
    with pytest.raises(IndexError):
        source.draw(rng)


def test_arrival_times_give_a_timeline_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "b", "max_tokens": 1, "at_s": 2.5}, {"prompt": "a", "max_tokens": 1,
                                                                             "at_s": 0}])
    replay = load_requests(path)
    assert replay.timed and replay.at_s == [2.5, 0.0]
    assert [(t, r.prompt) for t, r in replay.timeline()] == [(0.0, "a"), (2.5, "b")]


BAD_LINES = [
    ("{not json", 2, None, "not valid JSON"),
    ("[1, 2]", 2, None, "expected a JSON object"),
    ({"prompt": "x", "max_tokens": 1, "model": "gpt"}, 2, None, "unknown key 'model'"),
    ({"max_tokens": 4}, 2, None, "exactly one of"),
    ({"prompt": "x", "messages": [], "max_tokens": 4}, 2, None, "exactly one of"),
    ({"prompt": "x"}, 2, "max_tokens", "integer from 1"),
    ({"prompt": "x", "max_tokens": 0}, 2, "max_tokens", "integer from 1"),
    ({"prompt": "x", "max_tokens": 10 ** 9}, 2, "max_tokens", "integer from 1"),
    ({"prompt": "x", "max_tokens": True}, 2, "max_tokens", "integer from 1"),
    ({"prompt": "x", "max_tokens": "8"}, 2, "max_tokens", "integer from 1"),
    ({"prompt": "", "max_tokens": 8}, 2, "prompt", "non-empty string"),
    ({"prompt": ["x"], "max_tokens": 8}, 2, "prompt", "non-empty string"),
    ({"prompt": "x", "max_tokens": 8, "session": "a\r\nX-Evil: 1"}, 2, "session", "header"),
    ({"prompt": "x", "max_tokens": 8, "session": "s" * 200}, 2, "session", "header"),
    ({"prompt": "x", "max_tokens": 8, "session": 7}, 2, "session", "header"),
    ({"messages": "hi", "max_tokens": 8}, 2, "messages", "list of 1 to"),
    ({"messages": [], "max_tokens": 8}, 2, "messages", "list of 1 to"),
    ({"messages": [{"role": "user"}], "max_tokens": 8}, 2, "messages[0]", '"role"'),
    ({"messages": [{"role": "wizard", "content": "x"}], "max_tokens": 8}, 2, "messages[0].role", "one of"),
    ({"messages": [{"role": ["user"], "content": "x"}], "max_tokens": 8}, 2, "messages[0].role", "one of"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}], "max_tokens": 8}, 2,
     "messages[0].content", "string"),
    ({"messages": [{"role": "system", "content": "x"}], "max_tokens": 8}, 2, "messages", "no user message"),
    ({"prompt": "x", "max_tokens": 8, "at_s": -1}, 2, "at_s", "seconds"),
    ("{\"prompt\": \"x\", \"max_tokens\": 8, \"at_s\": NaN}", 2, "at_s", "seconds"),
    ({"prompt": "x", "max_tokens": 8, "at_s": 1e12}, 2, "at_s", "seconds"),
    ("[" * 100000 + "]" * 100000, 2, None, "not valid JSON"),
]


@pytest.mark.parametrize(("line", "number", "key", "words"), BAD_LINES)
def test_a_bad_line_is_named_by_file_line_and_key(tmp_path: Path, line: object, number: int, key: str | None,
                                                  words: str) -> None:
    path = _write(tmp_path, [{"prompt": "fine", "max_tokens": 4}, line])
    with pytest.raises(InputError) as info:
        load_requests(path)
    err = info.value
    assert err.path == str(path) and err.line == number and err.field == "--requests"
    assert words in err.message
    if key is not None:
        assert err.message.startswith(f"{key}: ")
    assert str(err).startswith(f"{path}:{number}: --requests: ")


def test_at_s_on_some_lines_only_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "a", "max_tokens": 1, "at_s": 0}, {"prompt": "b", "max_tokens": 1}])
    with pytest.raises(InputError, match="every line or on none") as info:
        load_requests(path)
    assert info.value.line == 2


def test_not_utf8_and_empty_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "\xff", "max_tokens": 1}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        load_requests(bad)
    for text in ("", "\n\n  \n"):
        with pytest.raises(InputError, match="no requests"):
            load_requests(_write(tmp_path, text))
    with pytest.raises(InputError, match="cannot read") as info:
        load_requests(tmp_path / "absent.jsonl")
    assert info.value.path == str(tmp_path / "absent.jsonl")
    with pytest.raises(InputError, match=r"cannot read|not a regular file"):
        load_requests(tmp_path)


def test_caps_on_file_size_line_count_and_line_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = {"prompt": "x" * 50, "max_tokens": 1}
    path = _write(tmp_path, [line] * 10)
    assert len(load_requests(path).requests) == 10
    monkeypatch.setattr(requests_file, "MAX_LINES", 9)
    with pytest.raises(InputError, match="more than 9 lines"):
        load_requests(path)
    monkeypatch.setattr(requests_file, "MAX_LINES", 10)
    assert len(load_requests(path).requests) == 10
    monkeypatch.setattr(requests_file, "MAX_LINE_BYTES", 40)
    with pytest.raises(InputError, match="longer than 40 bytes") as info:
        load_requests(path)
    assert info.value.line == 1
    monkeypatch.setattr(requests_file, "MAX_FILE_BYTES", 100)
    with pytest.raises(InputError, match="larger than the limit"):
        load_requests(path)



def _requests_parser() -> argparse.ArgumentParser:
    from agent.commands.bench import _requests_value

    parser = argparse.ArgumentParser(prog="hosttune bench")
    parser.add_argument("--requests", type=_requests_value)
    return parser


@pytest.mark.parametrize("value", ["10.5", "1O", "reqests.json"])
def test_requests_flag_refuses_what_is_neither_an_integer_nor_a_jsonl_file(
        value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        _requests_parser().parse_args(["--requests", value])
    assert exc.value.code == 2
    assert "expected an integer or a FILE.jsonl" in capsys.readouterr().err


def test_requests_flag_takes_an_integer_a_jsonl_name_or_an_existing_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mix.txt").write_text("{}\n")
    parse = _requests_parser().parse_args
    assert parse(["--requests", "12"]).requests == 12
    assert parse(["--requests", "later.jsonl"]).requests == Path("later.jsonl")
    assert parse(["--requests", "mix.txt"]).requests == Path("mix.txt")
