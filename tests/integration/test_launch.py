"""launch/llava3d.launch.py: consistent with the node everywhere; executed where the
ROS 2 `launch` packages are importable (robots with a ROS install)."""

from __future__ import annotations

import ast
import importlib.util

import pytest

from llava3d_ros.ros.params import NODE_PARAMS
from tests.ros_env import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / "launch" / "llava3d.launch.py"


def _launch_arguments() -> dict[str, str]:
    tree = ast.parse(LAUNCH_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGUMENTS":
            pairs = zip(node.value.keys, node.value.values, strict=True)  # type: ignore[union-attr]
            return {k.value: v.elts[0].value for k, v in pairs}  # type: ignore[union-attr]
    raise AssertionError("ARGUMENTS not found in the launch file")


def test_launch_arguments_match_node_parameters() -> None:
    params = {p.name: p.default for p in NODE_PARAMS}
    args = _launch_arguments()
    for topic in ("color_topic", "depth_topic", "camera_info_topic"):
        assert args[topic] == params[topic], topic
    assert {"namespace", "use_sim_time", "log_level"} <= set(args)
    text = LAUNCH_FILE.read_text()
    setup = (REPO_ROOT / "setup.py").read_text()
    assert 'executable="llava3d_node"' in text and "llava3d_node = " in setup
    assert 'name="llava3d"' in text  # actions live under /llava3d/... as documented


@pytest.mark.skipif(
    importlib.util.find_spec("launch_ros") is None, reason="ROS 2 launch is not installed"
)
def test_launch_description_builds() -> None:  # pragma: no cover - needs a ROS install
    spec = importlib.util.spec_from_file_location("llava3d_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    description = module.generate_launch_description()
    names = {getattr(e, "name", None) for e in description.entities}
    assert {"params_file", "namespace", "use_sim_time"} <= names
