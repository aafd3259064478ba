"""Filters of the firewall role: check, sort and test the addresses and networks the rules name.

nftables takes an address (``10.0.0.5``) or a network (``10.0.0.0/8``) in a set; an IPv4 entry
goes in an ``ip saddr`` set, an IPv6 one in an ``ip6 saddr`` set. These filters tell a bad entry
with the reason (preflight), split a list by IP version in a fixed order with every entry that
lies inside another dropped (so a rendered ruleset only changes when the networks do), and say
whether an address falls in a list (the lock-out check on the SSH networks).
"""

from __future__ import annotations

import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: Any) -> Network:
    """The network an entry names; a bare address is a one-address network. Raises ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not an address or network")
    text = value.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            wider = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"has host bits set (the network is {wider})") from None
        raise ValueError("not an IPv4/IPv6 address or CIDR network") from None


def firewall_invalid_networks(values: Any) -> list[str]:
    """Each entry of ``values`` that is not an address or a CIDR network, with the reason; [] when
    all are good. A string instead of a list is reported as such (a common inventory slip)."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        return [f"{values!r}: not a list (write [{values!r}] for one entry)"]
    bad = []
    for value in values:
        try:
            _parse(value)
        except ValueError as exc:
            bad.append(f"{value!r}: {exc}")
    return bad


def _text(network: Network) -> str:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def firewall_networks(values: Any, version: int) -> list[str]:
    """The entries of one IP version (4 or 6) as nftables writes them, sorted, without duplicates
    and without an entry that lies inside another one of the list."""
    if version not in (4, 6):
        raise ValueError(f"version must be 4 or 6, got {version!r}")
    bad = firewall_invalid_networks(values)
    if bad:
        raise ValueError("; ".join(bad))
    found = sorted(
        {n for n in (_parse(v) for v in values) if n.version == version},
        key=lambda n: (n.network_address, n.prefixlen),
    )
    kept: list[Network] = []
    for network in found:
        # Sorted by address, then prefix: a network that holds this one sorts before it.
        if not any(network.subnet_of(outer) for outer in kept):
            kept.append(network)
    return [_text(n) for n in kept]


def firewall_covers(values: Any, address: Any) -> bool:
    """Whether ``address`` lies in one of the networks of ``values`` (invalid entries never do)."""
    try:
        wanted = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    for value in values if isinstance(values, list | tuple) else []:
        try:
            if wanted in _parse(value):
                return True
        except ValueError:
            continue
    return False


class FilterModule:
    """Filters of the firewall role."""

    def filters(self) -> dict[str, Any]:
        return {
            "firewall_invalid_networks": firewall_invalid_networks,
            "firewall_networks": firewall_networks,
            "firewall_covers": firewall_covers,
        }
