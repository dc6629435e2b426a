"""Kubernetes resource quantities (the subset podq accepts for cpu and memory), parsed without I/O.

cpu: "500m", "1", "1.5", "2"  -> millicores
memory: "512Mi", "1Gi", "256M", "1000000", "1e9" -> bytes
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?P<suffix>[a-zA-Z]{0,2}|[eE][+-]?[0-9]+)$")


class QuantityError(ValueError):
    pass


def _split(text: str) -> tuple[Decimal, str]:
    match = _QUANTITY.match(text.strip())
    if not match:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity")
    try:
        return Decimal(match["number"]), match["suffix"]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise QuantityError(f"{text!r} is not a Kubernetes quantity") from exc


def _whole_and_positive(value: Decimal, text: str, fractional: str, not_positive: str) -> int:
    if value != value.to_integral_value():
        raise QuantityError(f"{text!r}: {fractional}")
    if value <= 0:
        raise QuantityError(f"{text!r}: {not_positive}")
    return int(value)


def parse_cpu_millicores(text: str) -> int:
    """'500m' -> 500, '2' -> 2000. Sub-millicore precision is refused, as Kubernetes does."""
    number, suffix = _split(text)
    if suffix == "m":
        value = number
    elif suffix == "":
        value = number * 1000
    else:
        raise QuantityError(f"{text!r}: cpu takes a plain number of cores or millicores like '500m'")
    return _whole_and_positive(value, text, "cpu is precise to 1m at most", "cpu must be positive")


def parse_memory_bytes(text: str) -> int:
    """'512Mi' -> 536870912. Decimal and binary suffixes and exponents as in Kubernetes."""
    number, suffix = _split(text)
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    elif suffix[:1] in ("e", "E"):
        value = number * (Decimal(10) ** int(suffix[1:]))
    elif suffix == "":
        value = number
    else:
        raise QuantityError(f"{text!r}: unknown memory suffix {suffix!r} (use Ki, Mi, Gi, k, M, G...)")
    return _whole_and_positive(
        value, text, "memory must be a whole number of bytes", "memory must be positive"
    )
