"""``llava3d-ros info``: what this environment can run, for bug reports and setup checks."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # any import failure means "not usable here"
        return None
    return str(getattr(mod, "__version__", "present"))


def collect() -> dict[str, object]:
    info: dict[str, object] = {
        "llava3d_ros": _version("llava3d_ros"),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "transformers": _version("transformers"),
        "tensorrt": _version("tensorrt"),
        "rclpy": _version("rclpy"),
        "llava3d_interfaces": _version("llava3d_interfaces"),
        "tf2_ros": _version("tf2_ros"),
        "launch": _version("launch"),
        "env": {
            k: os.environ.get(k)
            for k in (
                "ROS_DISTRO",
                "ROS_DOMAIN_ID",
                "ROS_AUTOMATIC_DISCOVERY_RANGE",
                "RMW_IMPLEMENTATION",
                "FASTDDS_DEFAULT_PROFILES_FILE",
                "ROS_HOME",
            )
        },
    }
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:
        info["cuda"] = False
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:20s} {value}")
    return 0
