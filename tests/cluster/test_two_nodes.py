"""Two Ray nodes on this machine (Ray's own `Cluster` test utility: a second raylet with its
own resources): with at most one replica per node, a model's two replicas land on both
nodes, and both answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import (
    STARTUP_S,
    RayInstance,
    async_wait_for,
    generate_directly,
    replicas,
)

pytestmark = pytest.mark.ray


@pytest.fixture
def second_node(ray_instance: RayInstance) -> Iterator[Any]:
    node = ray_instance.cluster.add_node(num_cpus=2, resources={"second-node": 1})
    yield node
    ray_instance.cluster.remove_node(node)


async def test_replicas_spread_over_two_nodes_and_both_answer(
    ray_instance: RayInstance, second_node: Any, deploy: Callable[..., Any], tiny_qwen2_vl: Path
) -> None:
    app = deploy("spread", tiny_qwen2_vl, min_replicas=2, max_replicas=2, max_replicas_per_node=1)
    placed = await async_wait_for(
        lambda: len(replicas(ray_instance, app)) == 2 and replicas(ray_instance, app),
        STARTUP_S,
        "two replicas",
    )
    assert {r.node_id for r in placed} == {
        second_node.node_id,
        ray_instance.cluster.head_node.node_id,
    }
    answered: set[str] = set()
    for k in range(200):  # random routing reaches both within a few requests
        answered.add((await generate_directly(app.alias, f"spread-{k}")).node_id)
        if len(answered) == 2:
            break
    assert answered == {r.node_id for r in placed}
