"""The node's lifecycle in-process, without spinning: cleanup lets go of everything a
configuration built (encoder, voxel memory, object layer), so configure/cleanup cycles on
a robot cannot accumulate models. Checked by reference, which is exact; the subprocess
test in tests/integration/test_node_reliability.py bounds the resident size."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from llava3d_ros.ros.node import Llava3DNode
from tests.model_fixtures import make_tiny_clip

SUCCESS = TransitionCallbackReturn.SUCCESS


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def test_cleanup_releases_the_configuration(context: Context, tmp_path: Path) -> None:
    clip = make_tiny_clip(tmp_path / "clip")
    node = Llava3DNode(
        context=context,
        parameter_overrides=[
            Parameter("encoder.backend", value="hf_clip"),
            Parameter("encoder.model", value=str(clip)),
            Parameter("snapshot.dir", value=str(tmp_path / "snapshots")),
        ],
    )
    try:
        released: list[weakref.ref[object]] = []
        for _ in range(3):
            assert node.trigger_configure() == SUCCESS
            assert node.trigger_activate() == SUCCESS
            pipe = node.pipeline
            assert pipe is not None
            released.append(weakref.ref(pipe))
            del pipe
            assert node.trigger_deactivate() == SUCCESS
            assert node.trigger_cleanup() == SUCCESS
            # No gc.collect() here: the node's cleanup must do what it takes.
            assert [r() is None for r in released] == [True] * len(released)
    finally:
        node.destroy_node()
