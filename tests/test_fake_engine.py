"""The fake engine as a real process with vLLM's CLI shape: flags, endpoints, weights, sleep, answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from orchestrator.testing.fake_model import FakeModel, p_correct
from orchestrator.tools.grading.extract import last_boxed
from tests.conftest import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [
    {"id": f"p{i}", "prompt": f"What is {i} + {2 * i + 7}?", "answer": str(3 * i + 7)} for i in range(200)
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "orchestrator.testing.fake_engine", "serve", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    directory = tmp_path / "weights-v0"
    directory.mkdir()
    (directory / "version").write_text("0\n")
    return directory


@pytest.fixture
def answers(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROBLEMS))
    return path


@pytest.fixture
def engine(weights: Path, answers: Path) -> Iterator[str]:
    """A fake engine process launched with the flags orch generates for vLLM; its base URL."""
    port = _free_port()
    process = _launch(
        str(weights), "--port", str(port), "--host", "127.0.0.1", "--tensor-parallel-size", "2",
        "--max-model-len", "4096", "--enable-prefix-caching", "--gpu-memory-utilization", "0.85",
        "--served-model-name", "policy", "--fake-answers", str(answers),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url)
        yield url
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "serving on " + url in out


def _complete(url: str, prompt: str, *, seed: int = 0, max_tokens: int = 256) -> requests.Response:
    body = {"model": "policy", "prompt": prompt, "max_tokens": max_tokens, "seed": seed}
    return requests.post(url + "/v1/completions", json=body, timeout=10)


def _new_weights(tmp_path: Path, version: int) -> Path:
    directory = tmp_path / f"weights-v{version}"
    directory.mkdir(exist_ok=True)
    (directory / "version").write_text(f"{version}\n")
    return directory


def test_an_unknown_flag_is_refused_in_one_line(weights: Path) -> None:
    process = _launch(str(weights), "--port", str(_free_port()), "--enable-magic")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.strip().splitlines() == ["fake_engine: error: unrecognized arguments: --enable-magic"]


def test_health_models_and_vllm_metrics(engine: str) -> None:
    assert requests.get(engine + "/health", timeout=5).status_code == 200
    assert requests.get(engine + "/v1/models", timeout=5).json()["data"][0]["id"] == "policy"
    metrics = requests.get(engine + "/metrics", timeout=5).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{engine="0",model_name="policy"}}' in metrics
    assert 'fake_engine_weights_version{model_name="policy"} 0.0' in metrics


def test_a_vllm_reload_changes_the_version_in_answers_and_metrics(engine: str, tmp_path: Path) -> None:
    before = _complete(engine, PROBLEMS[0]["prompt"])
    assert before.headers["X-Weights-Version"] == "0" and before.json()["weights_version"] == 0
    rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(_new_weights(tmp_path, 3))}}
    reloaded = requests.post(engine + "/collective_rpc", json=rpc, timeout=5)
    assert reloaded.status_code == 200 and reloaded.json() == {"results": [None, None]}  # one per TP worker
    after = _complete(engine, PROBLEMS[0]["prompt"])
    assert after.headers["X-Weights-Version"] == "3" and after.json()["weights_version"] == 3
    assert "fake_engine_weights_version" in (text := requests.get(engine + "/metrics", timeout=5).text)
    assert 'fake_engine_weights_version{model_name="policy"} 3.0' in text


def test_an_sglang_reload_from_disk_and_a_bad_path(engine: str, tmp_path: Path) -> None:
    ok = requests.post(
        engine + "/update_weights_from_disk", json={"model_path": str(_new_weights(tmp_path, 5))}
    )
    assert ok.status_code == 200 and ok.json()["success"] is True
    assert _complete(engine, "hi").json()["weights_version"] == 5
    bad = requests.post(engine + "/update_weights_from_disk", json={"model_path": str(tmp_path / "absent")})
    assert bad.status_code == 400 and bad.json()["success"] is False
    rpc = requests.post(
        engine + "/collective_rpc", json={"method": "reload_weights", "kwargs": {"weights_path": "/nope"}}
    )
    assert rpc.status_code == 500
    assert _complete(engine, "hi").json()["weights_version"] == 5  # a failed reload keeps the weights


def test_sleep_refuses_completions_with_503_until_woken(engine: str) -> None:
    assert requests.post(engine + "/sleep", params={"level": "1"}, timeout=5).status_code == 200
    assert requests.get(engine + "/is_sleeping", timeout=5).json() == {"is_sleeping": True}
    assert _complete(engine, "hi").status_code == 503
    assert requests.get(engine + "/health", timeout=5).status_code == 200
    assert requests.post(engine + "/wake_up", timeout=5).status_code == 200
    assert requests.get(engine + "/is_sleeping", timeout=5).json() == {"is_sleeping": False}
    assert _complete(engine, "hi").status_code == 200
    # SGLang's names for the same
    assert requests.post(engine + "/release_memory_occupation", json={}, timeout=5).status_code == 200
    assert _complete(engine, "hi").status_code == 503
    assert requests.post(engine + "/resume_memory_occupation", json={}, timeout=5).status_code == 200
    assert _complete(engine, "hi").status_code == 200


def test_a_request_longer_than_max_model_len_is_refused(engine: str) -> None:
    response = _complete(engine, "x" * 4 * 4000, max_tokens=200)
    assert response.status_code == 400
    assert "maximum context length is 4096" in response.json()["error"]["message"]


def _solve_rate(url: str, seed: int) -> tuple[float, int]:
    """(share of PROBLEMS answered correctly, answers that called the tool), every tool call answered."""
    correct = code = 0
    for problem in PROBLEMS:
        text = problem["prompt"]
        answer = _complete(url, text, seed=seed).json()["choices"][0]["text"]
        if answer.rstrip().endswith("```"):
            code += 1
            text += answer + "\n```output\n(ran)\n```\n"  # the balancer's tool-output block
            answer = _complete(url, text, seed=seed).json()["choices"][0]["text"]
            assert "```python" not in answer  # the turn after a tool call is final
        correct += last_boxed(answer) == problem["answer"]
    return correct / len(PROBLEMS), code


def test_the_share_of_correct_answers_grows_with_the_version(engine: str, tmp_path: Path) -> None:
    rates = []
    for version in (0, 2, 6):
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(_new_weights(tmp_path, version))}}
        assert requests.post(engine + "/collective_rpc", json=rpc, timeout=5).status_code == 200
        rate, code = _solve_rate(engine, seed=7)
        assert 20 <= code <= 120, code  # some answers carry a python code block, not all
        rates.append(rate)
    assert rates[0] < rates[1] < rates[2], rates
    assert rates[0] < 0.35 and rates[2] > 0.75, rates  # p_correct 0.2 and ~0.9, less the unboxed answers


def test_answers_are_deterministic_in_prompt_seed_and_version() -> None:
    model = FakeModel({row["prompt"]: row["answer"] for row in PROBLEMS})
    prompt = "<|user|>" + PROBLEMS[3]["prompt"] + "<|assistant|>"  # a chat template around the dataset prompt
    assert model.problem(prompt) == PROBLEMS[3]["prompt"]
    assert model.reply(prompt, seed=1, version=2) == model.reply(prompt, seed=1, version=2)
    solved = [
        model.reply(row["prompt"], seed=0, version=v).correct for v in range(6) for row in PROBLEMS[:50]
    ]
    for v in range(5):  # once solved, a problem stays solved at every later version
        assert all(
            b or not a
            for a, b in zip(solved[v * 50 : v * 50 + 50], solved[v * 50 + 50 : v * 50 + 100], strict=True)
        )
    assert [round(p_correct(v), 2) for v in (0, 1, 2)] == [0.2, 0.44, 0.61]
