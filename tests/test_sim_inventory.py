"""The simulated pool's cluster file: the nodes every run shares, and `orch validate` checking a run
against them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli import main
from orchestrator.errors import SpecError
from orchestrator.sim.cluster import SimCluster
from orchestrator.spec import PoolSpec
from orchestrator.spec.inventory import CLUSTER_FILE_ENV, load_cluster_file
from tests.conftest import ROOT, spec_data, write_spec

SHARED = ROOT / "examples" / "clusters" / "shared-32.yaml"


def test_the_example_cluster_file_gives_four_nodes_of_eight_gpus_dealt_to_two_zones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CLUSTER_FILE_ENV, str(SHARED))
    cluster = SimCluster.from_env()
    nodes = sorted(cluster.list_nodes(), key=lambda n: n.name)
    assert [(n.name, n.pool, n.gpus, n.zone) for n in nodes] == [
        ("sim-node-0", "node", 8, "zone-a"),
        ("sim-node-1", "node", 8, "zone-b"),
        ("sim-node-2", "node", 8, "zone-a"),
        ("sim-node-3", "node", 8, "zone-b"),
    ]
    cluster.prepare_pools({"other": PoolSpec(gpus=8)})
    assert {n.pool for n in cluster.list_nodes()} == {"node"}, "runs no longer bring their own nodes"


def test_a_bad_cluster_file_is_one_line_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"pools": {"node": {"nodes": 0, "gpu_type": "H100"}}}))
    with pytest.raises(SpecError) as raised:
        load_cluster_file(path)
    assert any(line.startswith(f"{path}: pools.node.nodes") for line in raised.value.problems)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["trainer"].update(pool="big") or d["pools"].update(big={"gpus": 8}), "trainer.pool"),
        (lambda d: d["pools"]["node"].update(gpu_type="A100-80GB"), "pools.node.gpu_type"),
        (
            lambda d: d["pools"]["node"].update(gpus=64) or d["trainer"].update(gpus=40),
            "can never fit the cluster",
        ),
    ],
    ids=["a pool the cluster lacks", "another GPU type", "a gang larger than the pool"],
)
def test_validate_checks_a_run_against_the_cluster_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, expected: str
) -> None:
    monkeypatch.setenv(CLUSTER_FILE_ENV, str(SHARED))
    data = spec_data()
    change(data)
    result = CliRunner().invoke(main, ["validate", str(write_spec(tmp_path, data))])
    assert result.exit_code != 0
    assert expected in result.output
    fine = CliRunner().invoke(main, ["validate", str(write_spec(tmp_path, spec_data(), "ok.yaml"))])
    assert fine.exit_code == 0, fine.output
