"""Fixtures of the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.support import VramSampler
from tests.conftest import OperatorHandle, TestCluster


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
