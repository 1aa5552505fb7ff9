"""``llava3d-ros up``: the node with a params file, for machines without ``ros2 launch``
(ROS 2 from wheels). Same node, same parameters as ``launch/llava3d.launch.py``."""

from __future__ import annotations

import argparse
from pathlib import Path


def build_ros_args(params: str | None, log_level: str, extra: list[str]) -> list[str]:
    args = ["llava3d_node", "--ros-args", "--log-level", log_level]
    if params:
        path = Path(params)
        if not path.is_file():
            raise SystemExit(f"params file not found: {params}")
        args += ["--params-file", str(path.resolve())]
    rest = [a for a in extra if a != "--ros-args"]
    return args + rest


def run(args: argparse.Namespace) -> int:
    from llava3d_ros.ros.node import main

    return main(build_ros_args(args.params, args.log_level, list(args.ros_args)))
