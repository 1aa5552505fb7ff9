"""Helpers for integration tests: nodes in separate processes, a client-side rclpy
context spun in a background thread, and waiting on futures and conditions without
fixed sleeps. Imports rclpy, so only integration tests import this module."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future

from tests.ros_env import REPO_ROOT


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.01
) -> None:
    """Poll ``predicate`` until true; a clear failure naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


def wait_future(future: Future, timeout: float, what: str) -> Any:
    wait_until(future.done, timeout, what)
    exc = future.exception()
    if exc is not None:
        raise exc
    return future.result()


class NodeProcess:
    """A ROS 2 node (or any Python entry point) in its own process, with its log kept.

    The child inherits this process's environment (ROS_DOMAIN_ID, discovery range,
    ROS_HOME, LD_LIBRARY_PATH set by the wheels' bootstrapper), so it joins the test's
    private domain. Stopped with SIGINT, then SIGKILL if it does not exit."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = [sys.executable, *args]
        self.log_path = log_path
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
        )
        child_env.update(env or {})
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=child_env, cwd=REPO_ROOT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode


class ClientSide:
    """An rclpy context and node for the test process, spun by a background executor."""

    def __init__(self, name: str = "test_client"):
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the executor is torn down at close()
            self.executor.spin()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)
