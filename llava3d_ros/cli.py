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
    parser.add_argument(
        "ros_args", nargs=argparse.REMAINDER, help="further ROS arguments, e.g. -r __ns:=/r1"
    )


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default=None, help="include this backend's options")


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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava3d-ros",
        description="LLaVA-3D-style 3D scene understanding for ROS 2.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (target, help_text, add_args) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_target=target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args._target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
