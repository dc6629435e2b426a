"""Which dataset URLs and addresses a fetch may reach: the SSRF policy, pure (no I/O).

A URL must be http or https with a host and no user name or password. Its addresses must be public
unicast: by default every address in `DEFAULT_BLOCKED` is refused, each named by its class (loopback,
link-local and the cloud metadata address, private, carrier-grade NAT, unspecified, multicast, reserved,
IPv4-mapped IPv6 and other IPv6 forms that embed an IPv4 address). A `FetchPolicy` adjusts that:

- ``allowed`` (``PODQ_FETCH_ALLOWED_NETWORKS``): networks admitted although the defaults refuse them;
- ``blocked`` (``PODQ_FETCH_BLOCKED_NETWORKS``): further networks to refuse, such as a cluster's service
  and pod ranges when they are not private. It wins over ``allowed``, so a broad allowance (``10.0.0.0/8``
  for a data lake) can still exclude the cluster's own ranges inside it.

Hosts are judged in every spelling a resolver accepts: `ip_literal` reads IPv4 as inet_aton(3) and the
WHATWG URL parser do (``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``, ``127.1``, a trailing
dot) and IPv6 with or without brackets. Any other host is a name: the caller resolves it once, judges
every address with `FetchPolicy.refusal` and connects only to an address it judged (worker_image/fetch.py).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

ALLOW_SETTING = "PODQ_FETCH_ALLOWED_NETWORKS"
BLOCK_SETTING = "PODQ_FETCH_BLOCKED_NETWORKS"
BLOCKED_CLASS = f"blocked network ({BLOCK_SETTING})"

# First match names the class, so specific entries come before the ranges holding them.
DEFAULT_BLOCKED: tuple[tuple[Network, str], ...] = tuple(
    (ip_network(cidr), name)
    for cidr, name in [
        ("169.254.169.254/32", "link-local (cloud metadata)"),
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "reserved: IETF protocol assignments"),
        ("192.0.2.0/24", "reserved: documentation"),
        ("198.51.100.0/24", "reserved: documentation"),
        ("203.0.113.0/24", "reserved: documentation"),
        ("192.88.99.0/24", "reserved: 6to4 relay"),
        ("198.18.0.0/15", "reserved: benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved: future use and broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6"),
        ("::ffff:0:0:0/96", "reserved: IPv4-translated IPv6"),
        ("::/96", "reserved: IPv4-compatible IPv6"),
        ("64:ff9b::/96", "NAT64: embeds an IPv4 address"),
        ("64:ff9b:1::/48", "NAT64: local use"),
        ("100::/64", "reserved: discard-only"),
        ("2001:db8::/32", "reserved: documentation"),
        ("2001::/23", "reserved: IETF protocol assignments"),
        ("2002::/16", "6to4: embeds an IPv4 address"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "reserved: site-local"),
        ("ff00::/8", "multicast"),
    ]
)


class Refused(ValueError):
    """A URL or address the policy refuses. The message says why; `address_class` names the class."""

    def __init__(self, message: str, address_class: str | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.address_class = address_class
        self.address = address

    def details(self) -> dict[str, str]:
        found = {"address_class": self.address_class, "address": self.address}
        return {key: value for key, value in found.items() if value is not None}


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs such as ``10.88.0.1/32``; host bits set (``10.88.0.1/24``) are refused as ambiguous."""
    networks = []
    for value in values:
        try:
            networks.append(ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network in CIDR notation: {exc}") from None
    return tuple(networks)


@dataclass(frozen=True)
class FetchPolicy:
    allowed: tuple[Network, ...] = ()
    blocked: tuple[Network, ...] = ()

    @classmethod
    def from_lists(cls, allowed: Iterable[str] = (), blocked: Iterable[str] = ()) -> FetchPolicy:
        return cls(parse_networks(allowed), parse_networks(blocked))

    def refusal(self, address: Address) -> str | None:
        """The class that makes `address` refused, or None when a fetch may connect to it."""
        if any(address in network for network in self.blocked):
            return BLOCKED_CLASS
        if any(address in network for network in self.allowed):
            return None
        return default_class(address)

    def check_address(self, host: str, address: Address) -> None:
        reason = self.refusal(address)
        if reason is None:
            return
        shown = host if host == str(address) else f"{host} ({address})"
        hint = "" if reason == BLOCKED_CLASS else f" unless {ALLOW_SETTING} admits them"
        raise Refused(
            f"refused to fetch from {shown}: {reason}; datasets must be on public addresses{hint}",
            address_class=reason,
            address=str(address),
        )

    def check_host(self, host: str) -> None:
        """Refuses a host that is a blocked address in any spelling; a name is left to resolution."""
        address = ip_literal(host)
        if address is not None:
            self.check_address(host, address)


def default_class(address: Address) -> str | None:
    for network, name in DEFAULT_BLOCKED:
        if address in network:
            if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
                inner = default_class(address.ipv4_mapped)
                return f"{name} ({address.ipv4_mapped}" + (f": {inner})" if inner else ")")
            return name
    return None


def ip_literal(host: str) -> Address | None:
    """`host` as an address if it is one in any spelling a resolver accepts, else None (a name)."""
    host = host.strip("[]").lower()
    if ":" in host:
        try:
            return IPv6Address(host.replace("%25", "%", 1))
        except ValueError:
            return None
    value = _ipv4_number(host.removesuffix("."))
    return None if value is None else IPv4Address(value)


def _ipv4_number(host: str) -> int | None:
    """inet_aton(3): 1 to 4 parts, each decimal, 0x-hex or 0-octal; the last part fills the low bytes."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_part(part) for part in parts]
    if any(number is None for number in numbers):
        return None
    *high, last = [number for number in numbers if number is not None]
    if any(number > 255 for number in high) or last >= 256 ** (4 - len(high)):
        return None
    value = last
    for index, number in enumerate(high):
        value += number << (8 * (3 - index))
    return value


_DIGITS = {8: frozenset("01234567"), 10: frozenset("0123456789"), 16: frozenset("0123456789abcdef")}


def _ipv4_part(part: str) -> int | None:
    if part.startswith("0x"):
        digits, base = part[2:] or "0", 16
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    # Plain character sets: int() alone would also take "1_0", "+1" and non-ASCII digits.
    if not digits or not set(digits) <= _DIGITS[base]:
        return None
    return int(digits, base)


def check_url(url: str, policy: FetchPolicy) -> httpx.URL:
    """The URL parsed as the fetch will parse it; refuses a bad shape or a host that is a blocked address."""
    # Imported here: every worker loads this module to read its request, and httpx costs ~100 ms of
    # start-up that a query without datasets never needs.
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        # httpx refuses some spellings of an address (0251.0376.0251.0376); name the class if it is one.
        policy.check_host(_lenient_host(url))
        raise Refused(f"invalid dataset URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Refused(f"dataset URLs must be http:// or https:// with a host; refused {url!r}")
    if parsed.userinfo:
        # The URL is not repeated: it holds a password.
        raise Refused("dataset URLs must not carry a user name or password (user:password@host)")
    policy.check_host(parsed.host)
    return parsed


def _lenient_host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""
