"""The ``llava3d-ros`` console command: one entry point with sub-commands.

Each sub-command lives in its own module and is imported only when it runs, so
``llava3d-ros --help`` stays fast and never loads torch or rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# name -> ("module:function" that takes the parsed args, help, argument adder)
_Adder = Callable[[argparse.ArgumentParser], None]


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_up(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", help="ROS 2 params file (YAML with a /** or node key)")
    parser.add_argument("--log-level", default="info", help="ROS log level")
    parser.epilog = (
        "further ROS arguments follow --ros-args, as with any ROS 2 node: "
        "llava3d-ros up --params p.yaml --ros-args -r __ns:=/robot1"
    )


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default=None, help="include this backend's options")


def _module_adder(module: str) -> _Adder:
    """Arguments defined by ``module.add_arguments``, imported only for that command."""

    def add(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(module).add_arguments(parser)

    return add


_COMMANDS: dict[str, tuple[str, str, _Adder]] = {
    "up": (
        "llava3d_ros.ros.launcher:run",
        "start the llava3d node with a params file (where `ros2 launch` is not available)",
        _add_up,
    ),
    "params": (
        "llava3d_ros.ros.params:print_params_yaml",
        "print every node parameter with its default and description as a params file",
        _add_params,
    ),
    "info": (
        "llava3d_ros.envinfo:run",
        "print versions, the ROS 2 environment and the compute devices",
        _add_info,
    ),
    "train-head": (
        "llava3d_ros.train.train_head:run",
        "render the head data set and train the default DINOv2 -> MiniLM alignment head",
        _module_adder("llava3d_ros.train.train_head"),
    ),
    "make-bag": (
        "llava3d_ros.sim.bag:run",
        "render a synthetic RGB-D walk-through of a composed room into a rosbag2 + scene.json",
        _module_adder("llava3d_ros.sim.bag"),
    ),
    "eval": (
        "llava3d_ros.eval.evaluate:run",
        "replay a bag into the node and score grounding, spatial QA, ingest and latency",
        _module_adder("llava3d_ros.eval.evaluate"),
    ),
    "demo": (
        "llava3d_ros.eval.demo:run",
        "make a short demo bag, run the node on it and print a table of answers",
        _module_adder("llava3d_ros.eval.demo"),
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All sub-commands are listed; only ``command``'s arguments are built, so its
    module alone is imported (``--help`` of the top level imports none)."""
    parser = argparse.ArgumentParser(
        prog="llava3d-ros",
        description="LLaVA-3D-style 3D scene understanding for ROS 2.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (target, help_text, add_args) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            add_args(p)
        p.set_defaults(_target=target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:  # everything after it belongs to ROS (argparse must not see it)
        cut = argv.index("--ros-args")
        argv, ros_args = argv[:cut], argv[cut + 1 :]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.ros_args = ros_args
    module_name, func_name = args._target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
