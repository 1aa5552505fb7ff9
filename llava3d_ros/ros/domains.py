"""Claim a ROS_DOMAIN_ID that no other live process on this machine holds (plain Python,
no rclpy): an exclusive flock per domain, released by the kernel when the process dies,
so concurrent test workers and evaluations never share a DDS domain and never retry."""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_held: list[IO[str]] = []  # open lock files: the claim lasts as long as this process


def claim_domain_id(domains: Sequence[int], lock_dir_name: str, start: int = 0) -> int:
    """The first free domain of ``domains``, searching from index ``start`` (wrapping)."""
    lock_dir = Path(tempfile.gettempdir()) / lock_dir_name
    lock_dir.mkdir(exist_ok=True)
    for offset in range(len(domains)):
        domain = domains[(start + offset) % len(domains)]
        handle = open(lock_dir / f"{domain}.lock", "w")  # noqa: SIM115 - held for the process life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return domain
    raise RuntimeError(f"every ROS_DOMAIN_ID in {domains[0]}..{domains[-1]} is held elsewhere")
