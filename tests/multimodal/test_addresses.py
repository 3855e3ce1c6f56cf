"""The address policy and numeric-host parsing, without any network."""

from __future__ import annotations

import ipaddress

import pytest

from vlmserve.multimodal.addresses import (
    blocked_reason,
    domain_allowed,
    normalize_host,
    parse_ip_host,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),  # one 32-bit number
        ("0x7f.1", "127.0.0.1"),  # hex, short form
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("127.1", "127.0.0.1"),  # short form: the last part fills three bytes
        ("0x7F000001", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"),  # trailing dot
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("1.2.3.example", None),
    ],
)
def test_parse_ip_host_reads_every_numeric_form(host: str, expected: str | None) -> None:
    parsed = parse_ip_host(host)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize("host", ["256.0.0.1", "08.0.0.1", "1.2.3.4.5", "a.1", "1.16777216"])
def test_parse_ip_host_refuses_malformed_numbers(host: str) -> None:
    with pytest.raises(ValueError):
        parse_ip_host(host)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private address (RFC 1918)"),
        ("172.16.5.4", "private address (RFC 1918)"),
        ("192.168.1.1", "private address (RFC 1918)"),
        ("169.254.169.254", "cloud metadata endpoint"),
        ("169.254.1.1", "link-local"),
        ("168.63.129.16", "Azure WireServer"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "special-purpose"),  # documentation range
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique local"),
        ("fd00:ec2::254", "cloud metadata endpoint (AWS IPv6)"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback address (127.0.0.1 embedded in IPv6)"),
        ("::ffff:169.254.169.254", "cloud metadata endpoint"),
        ("64:ff9b::a00:1", "private address (RFC 1918) (10.0.0.1 embedded in IPv6)"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:c0a8:101::1", "192.168.1.1 embedded in IPv6"),  # 6to4
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_blocked_reason_names_the_category(address: str, reason: str) -> None:
    found = blocked_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_domain_allowed_matches_exact_hosts_and_whole_label_suffixes() -> None:
    patterns = ("img.example.com", "*.cdn.test")
    assert domain_allowed("img.example.com", patterns)
    assert domain_allowed("a.cdn.test", patterns)
    assert domain_allowed("a.b.cdn.test", patterns)
    assert not domain_allowed("cdn.test", patterns)  # `*.` needs a label in front
    assert not domain_allowed("evilcdn.test", patterns)
    assert not domain_allowed("img.example.com.evil.test", patterns)
    assert not domain_allowed("other.example.com", patterns)


def test_normalize_host_folds_case_unicode_and_trailing_dot() -> None:
    assert normalize_host("IMG.Example.COM.") == "img.example.com"
    assert normalize_host("\u212a.com") == "k.com"  # Kelvin sign folds to k
    assert normalize_host("bücher.de") == "xn--bcher-kva.de"
