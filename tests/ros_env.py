"""ROS 2 environment isolation for tests (no rclpy import)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from llava3d_ros.ros.domains import claim_domain_id as _claim

REPO_ROOT = Path(__file__).resolve().parent.parent
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_localhost.xml"

# Domains 101..200: clear of the default domain 0 and inside Fast DDS's port range (<= 232).
_DOMAIN_RANGE = range(101, 201)


def claim_domain_id() -> int:
    """A ROS_DOMAIN_ID no other live test process on this machine holds."""
    start = os.getpid() % len(_DOMAIN_RANGE)  # spread the search, not correctness
    return _claim(_DOMAIN_RANGE, "llava3d_ros_test_domains", start)


def configure_ros_environment(env: MutableMapping[str, str], domain_id: int, ros_home: str) -> None:
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_HOME"] = ros_home
    env["ROS_LOG_DIR"] = os.path.join(ros_home, "log")
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    # Fast DDS 2.x (Jazzy) and 3.x (Kilted) read different variable names.
    env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)
    env["PYTHONUNBUFFERED"] = "1"
