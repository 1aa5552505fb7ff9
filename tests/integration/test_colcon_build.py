"""The repository also builds as a colcon workspace, the way a robot with a ROS 2
install builds it: the ament_python package at the root plus the interface package
under ros2_ws/src (tf2_msgs is COLCON_IGNOREd there so it never shadows a system one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ros_env import REPO_ROOT

pytestmark = pytest.mark.slow


def test_colcon_builds_both_packages(tmp_path: Path) -> None:
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    if colcon is None:
        pytest.fail("colcon is not installed in the environment (make setup installs it)")
    venv = Path(sys.prefix)
    env = dict(os.environ)
    env.update(AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    install = tmp_path / "install"
    cmd = [
        colcon,
        "--log-base",
        str(tmp_path / "log"),
        "build",
        "--base-paths",
        str(REPO_ROOT),
        str(REPO_ROOT / "ros2_ws" / "src"),
        "--build-base",
        str(tmp_path / "build"),
        "--install-base",
        str(install),
        "--cmake-args",
        "-DBUILD_TESTING=OFF",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(p.name for p in install.iterdir() if (p / "share").is_dir()) == [
        "llava3d_interfaces",
        "llava3d_ros",
    ]
    # ros2 run / launch find the console command under lib/<package>.
    assert (install / "llava3d_ros" / "lib" / "llava3d_ros" / "llava3d-ros").is_file()
    assert (install / "llava3d_ros" / "share" / "llava3d_ros" / "package.xml").is_file()
    # A shell that sources the workspace imports the interfaces from the install space.
    probe = (
        f"source {install / 'setup.bash'} && cd {tmp_path} && {sys.executable} -c "
        "'import llava3d_interfaces.action as a; print(a.Ground.__module__, a.__file__)'"
    )
    done = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert str(install / "llava3d_interfaces") in done.stdout
