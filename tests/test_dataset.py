"""Dataset files: the shipped example regenerates byte for byte with every answer right, and a bad line is
one error naming file:line and field."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec import load_spec, read_problems
from orchestrator.spec.dataset import parse_problems

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "examples" / "datasets"


def make_arith() -> ModuleType:
    loaded = importlib.util.spec_from_file_location("make_arith", DATASETS / "make_arith.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_the_shipped_dataset_regenerates_byte_for_byte() -> None:
    module = make_arith()
    assert module.dumps(module.generate()) == (DATASETS / "arith.jsonl").read_text(encoding="utf-8")


def test_every_shipped_answer_is_right_checked_from_the_prompt() -> None:
    module = make_arith()
    problems = read_problems(DATASETS / "arith.jsonl")
    assert len(problems) == 300
    assert {p.id.split("-")[0] for p in problems} == {"arith", "linear", "system", "quadratic", "modular"}
    wrong = [p.id for p in problems if not module.check({"id": p.id, "prompt": p.prompt, "answer": p.answer})]
    assert wrong == []
    assert all(int(p.answer) == int(p.answer.strip()) for p in problems)  # integer answers


def test_the_check_catches_a_wrong_answer() -> None:
    module = make_arith()
    for record in module.generate()[::37]:
        assert not module.check({**record, "answer": str(int(record["answer"]) + 1)}), record["id"]


def test_a_spec_reads_its_dataset_relative_to_itself_and_counts_the_problems(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"id": "a", "prompt": "1+1?", "answer": 2}\n\n')
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    del data["dataset"]["problems"]
    data["dataset"]["uri"] = "data/p.jsonl"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "run.yaml")
    assert spec.dataset.problems == 1
    assert spec.dataset.uri == str((tmp_path / "data" / "p.jsonl").resolve())
    assert read_problems(f"file://{spec.dataset.uri}")[0].answer == "2"

    data["dataset"]["problems"] = 5
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"run.yaml: dataset.problems: 5 but .* holds 1 problems; remove"):
        load_spec(tmp_path / "run.yaml")


def test_a_missing_dataset_file_is_one_line(tmp_path: Path) -> None:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    data["dataset"]["uri"] = "nowhere.jsonl"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"run.yaml: dataset.uri: .*nowhere.jsonl: cannot read the dataset"):
        load_spec(tmp_path / "run.yaml")


def test_a_remote_dataset_uri_is_refused_by_the_spec(tmp_path: Path) -> None:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    data["dataset"]["uri"] = "s3://bucket/p.jsonl"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"dataset.uri: .*only a local path or a file:// URI"):
        load_spec(tmp_path / "run.yaml")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "a", "prompt": "p"}', "d.jsonl:2: answer: required field is missing"),
        ('{"id": 7, "prompt": "p", "answer": 1}', "d.jsonl:2: id: got 7"),
        ('{"id": "b", "prompt": "", "answer": 1}', "d.jsonl:2: prompt: got ''"),
        ('{"id": "b", "prompt": "p", "answer": true}', "d.jsonl:2: answer: got True"),
        ('{"id": "b", "prompt": "p", "answer": 1.5}', "d.jsonl:2: answer: got 1.5"),
        ('{"id": "a", "prompt": "p", "answer": 1}', "d.jsonl:2: id: 'a' is already the id of line 1"),
        ('["a", "p", 1]', "d.jsonl:2: expected an object"),
        ('{"id": "b", ', "d.jsonl:2: not JSON"),
    ],
)
def test_a_bad_line_names_file_line_and_field(line: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_problems(['{"id": "a", "prompt": "p", "answer": 1}', line], "d.jsonl")
    assert caught.value.problems == (caught.value.problems[0],)
    assert caught.value.problems[0].startswith(expected), caught.value.problems[0]


def test_many_bad_lines_are_capped() -> None:
    lines = [json.dumps({"id": str(i)}) for i in range(50)]
    with pytest.raises(SpecError) as caught:
        parse_problems(lines, "d.jsonl")
    assert len(caught.value.problems) == 21
    assert caught.value.problems[-1] == "d.jsonl: 30 more bad lines"


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(SpecError, match="no problems"):
        parse_problems(["", "  "], "d.jsonl")
