"""The robot install path: ``pip install`` of the package into an environment that
already has rclpy and the message packages (this test environment, whose ROS wheels
stand in for /opt/ros) installs the package alone and no ROS wheel, for the base
install and for every extra; and the declared dependencies name no ROS package, so a
robot's system rclpy is never shadowed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ros_env import REPO_ROOT

pytestmark = pytest.mark.slow

EXTRAS = ("", "[eval]", "[train]", "[dev]")
# Distributions that would replace a robot's ROS install.
ROS_NAME = re.compile(r"^(ros-[a-z]+-|rclpy$|rosidl|rmw|ament|.*_msgs$)", re.IGNORECASE)


def _dry_run(target: str, report: Path) -> dict:  # type: ignore[type-arg]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--no-build-isolation",
        "--disable-pip-version-check",
        "--quiet",
        "--report",
        str(report),
        target,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(report.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("extra", EXTRAS)
def test_install_over_an_existing_ros_installs_the_package_alone(
    extra: str, tmp_path: Path
) -> None:
    # --no-index: everything the package needs is already here, so pip resolves offline.
    report = _dry_run(f"{REPO_ROOT}{extra}", tmp_path / "report.json")
    installs = [item["metadata"]["name"] for item in report["install"]]
    assert installs == ["llava3d_ros"], installs
    requires = report["install"][0]["metadata"].get("requires_dist", [])
    names = [re.split(r"[\s<>=!;\[~(]", r, maxsplit=1)[0] for r in requires]
    assert names and not [n for n in names if ROS_NAME.match(n)], names
