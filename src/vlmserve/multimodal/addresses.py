"""Which hosts and IP addresses media may be fetched from.

Owns three decisions: whether a host written as a number is an IP address (and which),
whether a resolved address is public, and whether a host name matches the domain allow-list.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance-metadata services hand out cloud credentials; they are the first SSRF target.
# Some are link-local or private anyway; naming them makes the refusal self-explanatory, and
# Azure's WireServer sits on a public address, so only this list blocks it.
_METADATA = {
    ipaddress.ip_address("169.254.169.254"): "cloud metadata endpoint (AWS/GCP/Azure/OpenStack)",
    ipaddress.ip_address("169.254.170.2"): "cloud metadata endpoint (AWS ECS task credentials)",
    ipaddress.ip_address("100.100.100.200"): "cloud metadata endpoint (Alibaba Cloud)",
    ipaddress.ip_address("168.63.129.16"): "cloud metadata endpoint (Azure WireServer)",
    ipaddress.ip_address("fd00:ec2::254"): "cloud metadata endpoint (AWS IPv6)",
}
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_RFC1918 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: low 32 bits are the IPv4
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # operator-local translation
_TEREDO = ipaddress.ip_network("2001::/32")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public destination, or None when it is one."""
    if ip in _METADATA:
        return _METADATA[ip]
    if isinstance(ip, ipaddress.IPv6Address):
        return _blocked_v6_reason(ip)
    checks: list[tuple[bool, str]] = [
        (ip in _THIS_NETWORK, "unspecified ('this network') address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address"),
        (ip in _SHARED, "shared address space (carrier-grade NAT, 100.64.0.0/10)"),
        (any(ip in net for net in _RFC1918), "private address (RFC 1918)"),
        (ip.is_multicast, "multicast address"),
        (ip == _BROADCAST, "broadcast address"),
        (ip.is_reserved, "reserved address (240.0.0.0/4)"),
        # Everything else IANA lists as special-purpose: documentation, benchmarking, ...
        (not ip.is_global, "special-purpose address (not globally routable)"),
    ]
    return next((reason for hit, reason in checks if hit), None)


def _blocked_v6_reason(ip: ipaddress.IPv6Address) -> str | None:
    # An IPv6 address that carries an IPv4 one reaches that IPv4 host (mapped sockets,
    # NAT64 gateways, 6to4 relays), so it is judged by the address it carries.
    embedded = ip.ipv4_mapped or ip.sixtofour
    if ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if embedded is not None:
        inner = blocked_reason(embedded)
        return None if inner is None else f"{inner} ({embedded} embedded in IPv6)"
    checks: list[tuple[bool, str]] = [
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address"),
        (ip.is_site_local, "site-local address"),
        (ip in _UNIQUE_LOCAL, "private address (unique local, fc00::/7)"),
        (ip.is_multicast, "multicast address"),
        (ip in _NAT64_LOCAL, "local-use NAT64 address"),
        # Teredo hides the real IPv4 destination behind obfuscation; not worth the risk.
        (ip in _TEREDO, "Teredo tunnel address"),
        (ip.is_reserved, "reserved address"),
        (not ip.is_global, "special-purpose address (not globally routable)"),
    ]
    return next((reason for hit, reason in checks if hit), None)


def parse_ip_host(host: str) -> IPAddress | None:
    """The IP address `host` denotes, or None when it is a domain name.

    Resolvers (inet_aton) and browsers (WHATWG URL) read `2130706433`, `0x7f.1`,
    `0177.0.0.1` and `127.1` as 127.0.0.1. Reading them the same way here means the address
    policy judges the address a connection would really reach, without any DNS lookup.
    Raises ValueError for a host that is numeric but not a valid address (`256.0.0.1`).
    """
    if ":" in host:
        return ipaddress.ip_address(host)  # only IPv6 literals contain a colon
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot does not make a number a name
    if _ipv4_number(parts[-1]) is None:
        return None  # WHATWG: the last label decides whether a host is numeric
    numbers = [_ipv4_number(part) for part in parts]
    if len(numbers) > 4 or any(n is None for n in numbers):
        raise ValueError(f"invalid IPv4 address {host!r}")
    values = [n for n in numbers if n is not None]
    *head, last = values
    # Leading parts are single bytes; the last part fills all the remaining bytes.
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise ValueError(f"invalid IPv4 address {host!r}")
    value = last
    for position, byte in enumerate(head):
        value += byte << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int | None:
    base, digits = 10, part
    if part[:2].lower() == "0x":
        base, digits = 16, part[2:] or "0"
    elif len(part) > 1 and part.startswith("0"):
        base, digits = 8, part[1:]
    alphabet = "0123456789abcdef"[:base]
    if not digits or any(c not in alphabet for c in digits.lower()):
        return None
    return int(digits, base)


def normalize_host(host: str) -> str:
    """Lower-case ASCII (IDNA) form without a trailing dot; raises ValueError if invalid."""
    ascii_host = host.encode("idna").decode("ascii").lower()
    return ascii_host[:-1] if ascii_host.endswith(".") else ascii_host


def domain_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether normalized `host` is one of `patterns` (exact) or below a `*.suffix` one.

    `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`
    itself: list both when both are wanted. Matching is on whole labels, so
    `evilexample.com` never matches.
    """
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith("." + normalize_host(pattern[2:])):
                return True
        elif host == normalize_host(pattern):
            return True
    return False
