"""What a policy submitted over the API may not say (agent/policy/inline.py), and the loader's bounds on hostile
input: nesting, expression length, models outside the configured model directories."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.policy import expr
from agent.policy.inline import WORKER_REFUSED
from agent.policy.loader import load_policy, load_policy_text
from agent.policy.yamlnodes import MAX_DEPTH
from tests.support.policy_hosts import ci_vm


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def search(tmp_path: Path) -> Path:
    """A search-path directory with a root-owned-style parent that names a binary, argv and a model path."""
    d = tmp_path / "search"
    write(d / "trusted.yaml", """
        name: trusted
        worker:
          engine: llamacpp
          binary: /usr/local/bin/llama-server
          extra_args: ["--mlock"]
          health_url: http://127.0.0.1:8081/health
    """)
    return d


@pytest.fixture
def models(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    (d / "tiny.gguf").write_bytes(b"GGUF" + b"\0" * 4092)
    return d


def inline(text: str, tmp_path: Path, search: Path, model_dirs: list[Path] | None = None) -> object:
    source = tmp_path / "state" / "api-policies" / "request-0123456789abcdef.yaml"
    return load_policy_text(textwrap.dedent(text).lstrip(), source, ci_vm(), search_path=[search],
                            model_dirs=model_dirs or [])


@pytest.mark.parametrize("ref", ["/etc/os-release", "../../etc/passwd", "/proc/self/pagemap", "x.yaml"])
def test_inline_extends_by_path_is_refused_without_reading_the_file(ref: str, tmp_path: Path,
                                                                     search: Path) -> None:
    with pytest.raises(InputError) as e:
        inline(f"name: x\nextends: {ref!r}\n", tmp_path, search)
    assert e.value.field == "extends" and e.value.line == 2
    assert "by name on the search path only" in e.value.message
    assert "ID=" not in str(e.value) and "root:" not in str(e.value)  # nothing of the file is echoed


def test_inline_extends_a_name_on_the_search_path(tmp_path: Path, search: Path) -> None:
    loaded = inline("name: mine\nextends: trusted\nsysctl:\n  vm.swappiness: 5\n", tmp_path, search)
    assert loaded.policy.worker is not None  # type: ignore[attr-defined]
    # The trusted parent's binary and arguments stay: they were written by whoever owns the search path.
    assert loaded.policy.worker.binary == "/usr/local/bin/llama-server"  # type: ignore[attr-defined]


def test_inline_extends_never_finds_earlier_bodies_next_to_it(tmp_path: Path, search: Path) -> None:
    write(tmp_path / "state" / "api-policies" / "request-aaaa.yaml", "name: old\nworker:\n  binary: /bin/sh\n")
    with pytest.raises(InputError, match="not found"):
        inline("name: x\nextends: request-aaaa\n", tmp_path, search)


@pytest.mark.parametrize("key", WORKER_REFUSED)
def test_inline_worker_program_argv_and_urls_are_refused(key: str, tmp_path: Path, search: Path) -> None:
    value = '["/bin/sh", "-c", "id"]' if key in ("argv", "extra_args") else '"/bin/sh"'
    with pytest.raises(InputError) as e:
        inline(f"name: x\nworker:\n  engine: command\n  {key}: {value}\n", tmp_path, search)
    assert e.value.field == f"worker.{key}" and e.value.line == 4


def test_inline_worker_field_guarded_by_when_is_refused_too(tmp_path: Path, search: Path) -> None:
    with pytest.raises(InputError) as e:
        inline("name: x\nworker:\n  when: cpu.cores > 10000\n  binary: /bin/sh\n", tmp_path, search)
    assert e.value.field == "worker.binary"


def test_file_policies_on_the_search_path_keep_binary_and_model_paths(tmp_path: Path, search: Path) -> None:
    model = tmp_path / "elsewhere.gguf"
    model.write_bytes(b"x" * 1000)
    write(search / "site.yaml", f"""
        name: site
        extends: trusted
        worker:
          model: {model}
        sysctl:
          vm.swappiness: "=model.size_bytes // 100"
    """)
    loaded = load_policy("site", ci_vm(), search_path=[search])
    assert loaded.policy.sysctl["vm.swappiness"] == 10


@pytest.mark.parametrize("model", ["/etc/shadow", "/etc/does-not-exist", "../../../etc/shadow", "/proc/self/pagemap"])
def test_inline_model_outside_model_dirs_is_refused_and_no_size_oracle(model: str, tmp_path: Path, search: Path,
                                                                        models: Path) -> None:
    text = f"name: x\nworker:\n  model: {model!r}\nsysctl:\n  vm.swappiness: '=model.size_bytes % 100'\n"
    with pytest.raises(InputError) as e:
        inline(text, tmp_path, search, [models])
    assert e.value.field == "worker.model" and e.value.line == 3
    # The same words whether the file exists or not: the refusal says nothing about the file.
    assert e.value.message.startswith("an inline policy names models only as `default`")


def test_inline_computed_model_path_is_checked_after_evaluation(tmp_path: Path, search: Path, models: Path) -> None:
    with pytest.raises(InputError) as e:
        inline("name: x\nworker:\n  model: \"='/etc/' + 'shadow'\"\n", tmp_path, search, [models])
    assert e.value.field == "worker.model" and e.value.line == 3


def test_inline_model_inside_model_dirs_by_name_or_path(tmp_path: Path, search: Path, models: Path) -> None:
    for name in ("tiny.gguf", str(models / "tiny.gguf")):
        text = f"name: x\nworker:\n  model: {name!r}\nsysctl:\n  vm.swappiness: '=model.size_bytes // 1024'\n"
        loaded = inline(text, tmp_path, search, [models])
        assert loaded.policy.sysctl["vm.swappiness"] == 4  # type: ignore[attr-defined]


def test_inline_model_symlink_out_of_model_dirs_is_refused(tmp_path: Path, search: Path, models: Path) -> None:
    (models / "escape.gguf").symlink_to("/etc/hostname")
    with pytest.raises(InputError, match="model_dirs"):
        inline("name: x\nworker:\n  model: escape.gguf\n", tmp_path, search, [models])


def test_yaml_nested_500_deep_is_an_input_error_with_a_line(tmp_path: Path, search: Path) -> None:
    with pytest.raises(InputError) as e:
        inline("name: x\nsysctl: " + "[" * 500 + "]" * 500 + "\n", tmp_path, search)
    assert f"nested more than {MAX_DEPTH} levels" in e.value.message and e.value.line == 2


def test_999_term_expression_is_an_input_error(tmp_path: Path, search: Path) -> None:
    terms = "+".join(["1"] * 499)  # 997 characters: under the length cap, deeper than the evaluator may recurse
    with pytest.raises(InputError) as e:
        inline(f"name: x\nsysctl:\n  vm.swappiness: '={terms}'\n", tmp_path, search)
    assert "operations chained" in e.value.message and e.value.field == "sysctl.vm.swappiness"
    assert len(str(e.value)) < 400  # the expression is not echoed whole


def test_expression_tree_depth_is_measured_without_recursion() -> None:
    assert expr.tree_depth(expr.parse("+".join(["1"] * 100))) == 100
    with pytest.raises(expr.ExprError, match="operations chained"):
        expr.parse("*".join(["2"] * 102))
    # names() (now iterative) keeps its order: an if-else lists its condition first.
    assert [n.dotted for n in expr.names(expr.parse("a.b + max(c, d) if e else f"))] == ["e", "a.b", "c", "d", "f"]
