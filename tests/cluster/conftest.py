"""Fixtures of the cluster tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.support import VramSampler
from tests.conftest import OPERATOR_ARGS, OperatorHandle, TestCluster, operator_env


@pytest.fixture
def sampler(k8s: TestCluster) -> Iterator[VramSampler]:
    """Checks the GPU budget and the mutex every 50 ms while the test runs."""
    with VramSampler(k8s.core) as running:
        yield running


@pytest.fixture
def clock(operator: OperatorHandle) -> Iterator[OperatorHandle]:
    """The operator's clock, reset to real time after the test."""
    yield operator
    operator.reset_clock()


@pytest.fixture
def sole_operator(k8s: TestCluster) -> Iterator[None]:
    """Stops the suite's shared operator for the test, so whatever happens is the
    test's own operators' doing; restarts it afterwards on the same ports."""
    state = k8s.cluster.state()
    assert state is not None
    pid = state.pids.get("operator")
    was_running = pid is not None and _alive(pid)
    ports = dict(state.ports)
    k8s.cluster.stop_operator()
    yield
    if was_running:
        k8s.cluster.start_operator(extra_args=OPERATOR_ARGS, ports=ports,
                                   extra_env=operator_env(k8s.cluster))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
