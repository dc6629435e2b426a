"""The fetch address policy (worker_image/netpolicy.py): address classes, spellings, allow and block lists,
and the URL shape. Hypothesis covers the spelling space: any inet_aton form of an address reads as it."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_image.netpolicy import (
    BLOCKED_CLASS,
    DEFAULT_BLOCKED,
    FetchPolicy,
    Refused,
    check_url,
    ip_literal,
    parse_networks,
)

pytestmark = pytest.mark.unit

DEFAULT = FetchPolicy()
METADATA = "link-local (cloud metadata)"


@pytest.mark.parametrize(
    ("host", "address_class"),
    [
        ("169.254.169.254", METADATA),
        ("2852039166", METADATA),
        ("0xa9fea9fe", METADATA),
        ("0XA9FEA9FE", METADATA),
        ("0251.0376.0251.0376", METADATA),
        ("0xa9.0xfe.0xa9.0xfe", METADATA),
        ("169.254.43518", METADATA),
        ("169.16689662", METADATA),
        ("169.254.169.254.", METADATA),
        ("::ffff:169.254.169.254", f"IPv4-mapped IPv6 (169.254.169.254: {METADATA})"),
        ("[::ffff:a9fe:a9fe]", f"IPv4-mapped IPv6 (169.254.169.254: {METADATA})"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%25eth0", "link-local"),
        ("127.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("0x7f.1", "loopback"),
        ("2130706433", "loopback"),
        ("017700000001", "loopback"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("0", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.88.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "reserved: future use and broadcast"),
        ("192.0.2.1", "reserved: documentation"),
        ("::ffff:8.8.8.8", "IPv4-mapped IPv6 (8.8.8.8)"),
        ("64:ff9b::a9fe:a9fe", "NAT64: embeds an IPv4 address"),
        ("2002:a9fe:a9fe::1", "6to4: embeds an IPv4 address"),
    ],
)
def test_non_public_addresses_are_refused_in_every_spelling(host: str, address_class: str) -> None:
    address = ip_literal(host)
    assert address is not None
    assert DEFAULT.refusal(address) == address_class
    with pytest.raises(Refused) as refused:
        DEFAULT.check_host(host)
    assert refused.value.address_class == address_class
    assert refused.value.message.startswith(f"refused to fetch from {host}")


@pytest.mark.parametrize(
    "host", ["8.8.8.8", "1.1.1.1", "134744072", "2606:4700:4700::1111", "2001:4860::8888"]
)
def test_public_addresses_pass(host: str) -> None:
    address = ip_literal(host)
    assert address is not None and DEFAULT.refusal(address) is None
    DEFAULT.check_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "localhost.",
        "1_0",
        "+1",
        "256.1.1.1",
        "1.2.3.4.5",
        "08",
        "0x1g",
        "١٢٧.0.0.1",
    ],
)
def test_names_and_non_numbers_are_not_literals(host: str) -> None:
    # These are left to the resolver, whose every answer is judged (worker_image/pinned.py).
    assert ip_literal(host) is None


def _blocked_ipv4() -> st.SearchStrategy[IPv4Address]:
    networks = [network for network, _ in DEFAULT_BLOCKED if isinstance(network, IPv4Network)]
    return st.sampled_from(networks).flatmap(
        lambda network: st.integers(int(network.network_address), int(network.broadcast_address)).map(
            IPv4Address
        )
    )


@st.composite
def spellings(draw: st.DrawFn, address: IPv4Address) -> str:
    """Any inet_aton spelling of `address`: 1 to 4 parts, each decimal, hex (either case) or octal."""
    value = int(address)
    parts_count = draw(st.integers(1, 4))
    high = [(value >> (8 * (3 - index))) & 0xFF for index in range(parts_count - 1)]
    last = value & ((1 << (8 * (5 - parts_count))) - 1)
    parts = []
    for number in [*high, last]:
        form = draw(st.sampled_from(["dec", "hex", "HEX", "oct"]))
        padding = "0" * draw(st.integers(0, 3))
        if form == "dec":
            parts.append(str(number))
        elif form == "oct":
            parts.append(f"0{padding}{number:o}")
        else:
            prefix = "0x" if form == "hex" else "0X"
            digits = f"{padding}{number:x}"
            parts.append(prefix + (digits.upper() if form == "HEX" else digits))
    return ".".join(parts) + draw(st.sampled_from(["", "."]))


@given(st.data())
def test_any_spelling_of_a_blocked_ipv4_address_is_refused(data: st.DataObject) -> None:
    address = data.draw(_blocked_ipv4())
    host = data.draw(spellings(address))
    assert ip_literal(host) == address
    with pytest.raises(Refused):
        DEFAULT.check_host(host)
    with pytest.raises(Refused):
        check_url(f"http://{host}:8080/x.parquet", DEFAULT)


@given(st.data())
def test_any_spelling_reads_as_the_same_address(data: st.DataObject) -> None:
    address = IPv4Address(data.draw(st.integers(0, 2**32 - 1)))
    assert ip_literal(data.draw(spellings(address))) == address


@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_mapped_address_is_refused(value: int) -> None:
    mapped = IPv6Address(f"::ffff:{IPv4Address(value)}")
    reason = DEFAULT.refusal(mapped)
    assert reason is not None and reason.startswith("IPv4-mapped IPv6")


@pytest.mark.parametrize(
    ("allowed", "blocked", "address", "refusal"),
    [
        (["127.0.0.0/8"], [], "127.0.0.1", None),
        (["10.88.0.1/32"], [], "10.88.0.1", None),
        (["10.88.0.1/32"], [], "10.88.0.2", "private"),
        (["10.0.0.0/8"], ["10.96.0.0/12"], "10.96.0.1", BLOCKED_CLASS),
        (["10.0.0.0/8"], ["10.96.0.0/12"], "10.20.0.1", None),
        ([], ["203.0.0.0/8"], "203.1.2.3", BLOCKED_CLASS),
        (["127.0.0.0/8"], [], "::ffff:127.0.0.1", "IPv4-mapped IPv6 (127.0.0.1: loopback)"),
        (["::ffff:127.0.0.0/104"], [], "::ffff:127.0.0.1", None),
        (["169.254.169.254/32"], [], "169.254.169.254", None),
    ],
    ids=[
        "allow loopback",
        "allow one host",
        "allow is exact",
        "block beats allow",
        "allow around a block",
        "block a public range",
        "IPv4 allowance does not admit the mapped form",
        "mapped form admitted explicitly",
        "even the metadata address can be allowed",
    ],
)
def test_allow_and_block_lists(
    allowed: list[str], blocked: list[str], address: str, refusal: str | None
) -> None:
    assert FetchPolicy.from_lists(allowed, blocked).refusal(ip_address(address)) == refusal


@pytest.mark.parametrize("value", ["10.0.0.1/8", "not-a-network", "10.0.0.0/33", ""])
def test_malformed_networks_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_networks([value])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "dataset URLs must be http:// or https:// with a host"),
        ("ftp://example.com/x.parquet", "dataset URLs must be http:// or https:// with a host"),
        ("http://", "dataset URLs must be http:// or https:// with a host"),
        ("/x.parquet", "dataset URLs must be http:// or https:// with a host"),
        ("http://user:hunter2@example.com/x.parquet", "dataset URLs must not carry a user name or password"),
        ("http://user@example.com/x.parquet", "dataset URLs must not carry a user name or password"),
        ("http://h:port/x.parquet", "invalid dataset URL"),
        ("http://[::1/x.parquet", "invalid dataset URL"),
        ("http://\uff11\uff12\uff17.0.0.1/x.parquet", "invalid dataset URL"),  # fullwidth digits
        (
            "http://0251.0376.0251.0376/x",
            f"refused to fetch from 0251.0376.0251.0376 (169.254.169.254): {METADATA}",
        ),
        ("http://[::ffff:169.254.169.254]/x", "refused to fetch from ::ffff:169.254.169.254"),
        ("https://2852039166:443/x", f"refused to fetch from 2852039166 (169.254.169.254): {METADATA}"),
        ("http://127.0.0.1:80@169.254.169.254/x", "dataset URLs must not carry a user name or password"),
    ],
)
def test_url_refusals(url: str, message: str) -> None:
    with pytest.raises(Refused) as refused:
        check_url(url, DEFAULT)
    assert refused.value.message.startswith(message), refused.value.message
    assert "hunter2" not in refused.value.message


def test_names_pass_the_url_check_unresolved() -> None:
    assert check_url("https://data.example.com/x.parquet", DEFAULT).host == "data.example.com"
    assert check_url("http://localhost:8000/x.parquet", DEFAULT).host == "localhost"
