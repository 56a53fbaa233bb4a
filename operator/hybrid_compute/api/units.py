"""Byte units as users read them in reasons and statuses, and Kubernetes quantities."""

import re
from decimal import Decimal

GIB = 1024**3
MIB = 1024**2

# Kubernetes quantity grammar (k8s.io/apimachinery resource.Quantity): a signed decimal
# number, then a binary SI suffix, a decimal exponent or a decimal SI suffix. The
# exponent is tried before the one-letter suffixes so 1E3 is 1000, while 1E is an exa.
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>[KMGTPE])i|[eE](?P<exponent>[+-]?[0-9]+)|(?P<decimal>[numkMGTPE]))?"
)
_POWERS_OF_1024 = {prefix: power for power, prefix in enumerate("KMGTPE", start=1)}
_POWERS_OF_TEN = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
                  "E": 18}


def parse_quantity(quantity: str) -> Decimal:
    """A Kubernetes quantity (``7Gi``, ``20G``, ``500m``, ``1e3``) as an exact number."""
    match = _QUANTITY.fullmatch(quantity)
    if match is None:
        raise ValueError(f"invalid quantity {quantity!r}; use forms like 7Gi, 512Mi or 20G")
    number = Decimal(match["number"])
    if match["binary"]:
        return number * Decimal(1024) ** _POWERS_OF_1024[match["binary"]]
    if match["exponent"]:
        return number.scaleb(int(match["exponent"]))
    if match["decimal"]:
        return number.scaleb(_POWERS_OF_TEN[match["decimal"]])
    return number


def gib(value: int) -> str:
    """Bytes as GiB with one decimal, the unit users read in reasons."""
    return f"{value / GIB:.1f} GiB"
