"""Byte units as users read them in reasons and statuses."""

GIB = 1024**3
MIB = 1024**2


def gib(value: int) -> str:
    """Bytes as GiB with one decimal, the unit users read in reasons."""
    return f"{value / GIB:.1f} GiB"
