"""Test-session environment: each pytest process (xdist worker or not) gets its own
ROS 2 domain, localhost-only discovery, a temporary ROS_HOME and the large-message
Fast DDS profile. Set here, before any test imports rclpy, so every node this process
or its children create stays on this machine and never meets another worker's nodes.

Nothing here imports rclpy: unit tests of ``llava3d_ros.core`` must run without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.ros_env import claim_domain_id, configure_ros_environment

_ros_home: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _ros_home
    _ros_home = tempfile.mkdtemp(prefix="llava3d_ros_home_")
    configure_ros_environment(os.environ, claim_domain_id(), _ros_home)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ros_home:
        shutil.rmtree(_ros_home, ignore_errors=True)
