"""Fixtures for integration tests: real nodes in separate processes over DDS."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.ros_harness import ClientSide, NodeProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def client_side() -> Iterator[ClientSide]:
    side = ClientSide()
    yield side
    side.close()


@pytest.fixture
def start_process(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., NodeProcess]]:
    """Start processes that are stopped at teardown; their logs are printed on failure."""
    started: list[NodeProcess] = []

    def start(args: Sequence[str], name: str = "node", env: dict[str, str] | None = None):
        proc = NodeProcess(args, tmp_path / f"{name}.log", env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        code = proc.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(f"--- log of {proc.args} (exit {code}) ---\n{proc.log_text()}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
