"""The Kubernetes quantity parser of :mod:`hybrid_compute.api.units` agrees with the
Kubernetes client's on every form the API server accepts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from kubernetes.utils import parse_quantity as client_parse_quantity

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.units import parse_quantity

QUANTITIES = [
    # the values of test_models.test_parse_bytes
    "7Gi", "512Mi", "20G",
    # binary SI
    "1Ki", "1.5Gi", ".5Gi", "3Ti", "1Pi", "1Ei", "0.1Ti",
    # decimal SI, below and above one
    "100n", "3u", "500m", "1", "0", "5.", "2k", "1M", "4T", "1P", "1E",
    # exponents: 1E3 is an exponent, 1E alone an exa
    "1e3", "1E3", "2e-3", "1.5e+2", "7E9",
    # signs and big numbers
    "-1Gi", "+2k", "12345678901234567890",
]


@pytest.mark.parametrize("text", QUANTITIES)
def test_parse_quantity_agrees_with_the_kubernetes_client(text: str) -> None:
    parsed = parse_quantity(text)

    assert isinstance(parsed, Decimal)
    assert parsed == client_parse_quantity(text)
    assert parse_bytes(text) == int(client_parse_quantity(text))


@pytest.mark.parametrize("text", ["", "Gi", "1ki", "1mi", "1Gb", "1.2.3", "e3", "1 Gi", "1Gi "])
def test_parse_quantity_rejects_what_is_no_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)
