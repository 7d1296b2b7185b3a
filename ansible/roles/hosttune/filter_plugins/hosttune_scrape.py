"""Filters that check every value the role writes into a unit drop-in or a Prometheus config (no ansible.utils).

Inventory values are hostile until checked: a newline in a scrape source would add a directive to the unit, an
empty `IPAddressAllow=` would reset the allow-list, a quote in a label would break the JSON Prometheus reads. Each
filter either returns values in a canonical shape or fails the task naming the host and field.

  hosttune_scrape_sources(api_host)  IPv4/IPv6 addresses or CIDRs -> the same, canonical, plus the API's own
                           address (fails on anything else, and on networks so wide they amount to `any`: shorter
                           than /8 for IPv4 or /32 for IPv6, the unspecified address, v4-mapped/compatible IPv6)
  hosttune_bad_scrape_sources  the entries of a list that are not such addresses (for the role's assert)
  hosttune_file_sd  [{host, api_host, ansible_host, port, policy}] -> Prometheus file_sd target groups (labels
                           host and inventory_policy)
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any


class ScrapeValueError(ValueError):
    """A refused value. Ansible fails the task with this message ("The filter plugin ... failed: ..."). Not
    ansible.errors' class: importing ansible patches sys.intern process-wide, and the unit tests load this file."""

# Shapes before parsing: digits, hex, dots, colons and one optional /prefix; no scope ids, spaces or newlines.
SOURCE_RE = re.compile(r"^[0-9A-Fa-f:.]{2,45}(/[0-9]{1,3})?$")
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.-]{0,128}$")  # inventory host names and policy names
WILDCARD_BINDS = ("0.0.0.0", "::")
# `IPAddressAllow=0.0.0.0/0` is `any`: it would cancel the unit's IPAddressDeny=any. A source narrower than these.
MIN_PREFIX = {4: 8, 6: 32}
# IPv6 ranges that carry IPv4 addresses (v4-mapped, v4-compatible): a way around the IPv4 checks, never a source.
V4_IN_V6 = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("::/96"))
MAX_SOURCES = 64
MAX_TARGETS = 10000


def _source(value: object) -> str | None:
    """The canonical form of one scrape source (an address, or a network with its host bits clear), or None."""
    if not isinstance(value, str) or not SOURCE_RE.fullmatch(value):
        return None
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return None
    if network.prefixlen < MIN_PREFIX[network.version] or network.network_address.is_unspecified:
        return None  # as wide as `any`, or containing the unspecified address (0.0.0.0/8, ::)
    if isinstance(network, ipaddress.IPv6Network) and str(network) != "::1/128" and any(
            network.overlaps(v4) for v4 in V4_IN_V6):
        return None
    return str(network) if "/" in value else str(network.network_address)


def bad_scrape_sources(values: object) -> list[str]:
    if not isinstance(values, list):
        return [f"not a list: {values!r}"[:120]]
    return [repr(v)[:120] for v in values if _source(v) is None]


def scrape_sources(values: object, api_host: object = None) -> list[str]:
    """The sources for the unit's IPAddressAllow=, canonical and deduplicated. `api_host`, when it is one
    non-loopback IP address (not a wildcard), is added too: the role's own checks reach the API from the host
    itself, and such a connection comes from that address, not from localhost."""
    bad = bad_scrape_sources(values)
    if bad or not isinstance(values, list):
        raise ScrapeValueError(f"hosttune_scrape_sources: not an IPv4/IPv6 address or CIDR: {', '.join(bad)}")
    if not values or len(values) > MAX_SOURCES:
        raise ScrapeValueError(f"hosttune_scrape_sources: give 1 to {MAX_SOURCES} addresses or CIDRs")
    sources = {str(_source(v)) for v in values}
    own = _source(api_host)
    if own is not None and "/" not in own and own not in WILDCARD_BINDS and not ipaddress.ip_address(own).is_loopback:
        sources.add(own)
    return sorted(sources, key=lambda s: (":" in s, s))


def _address(value: object) -> str | None:
    """A target address: an IP address or a DNS name (no port, no scheme, nothing else)."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value if HOST_NAME_RE.fullmatch(value) and not value.replace(".", "").isdigit() else None


def _unreachable(address: str) -> bool:
    """A target Prometheus must not be sent to with the scrape token: loopback, link-local (169.254.169.254 is the
    cloud metadata service), unspecified or multicast, also when written as a v4-mapped IPv6 address; localhost."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        name = address.lower().rstrip(".")
        return name == "localhost" or name.endswith(".localhost")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def file_sd(hosts: object) -> list[dict[str, Any]]:
    """One Prometheus file_sd target group per host: `targets: ["ADDR:PORT"]`, labels host and inventory_policy.
    Not `policy`: a target label wins over the scraped series' own, so `hosttune_policy_info{policy}` (the policy
    the host really runs) would arrive as `exported_policy` and every `group_left(policy)` join would copy the
    inventory's name instead."""
    if not isinstance(hosts, list) or len(hosts) > MAX_TARGETS:
        raise ScrapeValueError("hosttune_file_sd: expected a list of hosts")
    groups = []
    for entry in hosts:
        if not isinstance(entry, dict):
            raise ScrapeValueError(f"hosttune_file_sd: not a host entry: {entry!r}"[:200])
        name = entry.get("host")
        if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
            raise ScrapeValueError(f"host {name!r}: the inventory name is not a plain host name"[:200])
        api_host = entry.get("api_host")
        address = _address(entry.get("ansible_host") if api_host in WILDCARD_BINDS else api_host)
        if address is None or _unreachable(address):
            raise ScrapeValueError(f"host {name}: hosttune_api_host (or ansible_host for a wildcard bind) is not "
                                     f"a remote IP address or DNS name Prometheus can reach: "
                                     f"{entry.get('api_host')!r}"[:300])
        port = entry.get("port")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ScrapeValueError(f"host {name}: hosttune_api_port {port!r} is not a port (1-65535)"[:200])
        policy = entry.get("policy")
        if not isinstance(policy, str) or not LABEL_VALUE_RE.fullmatch(policy):
            raise ScrapeValueError(f"host {name}: hosttune_policy {policy!r} is not a policy name"[:200])
        target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        groups.append({"targets": [target], "labels": {"host": name, "inventory_policy": policy}})
    return groups


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"hosttune_scrape_sources": scrape_sources, "hosttune_bad_scrape_sources": bad_scrape_sources,
                "hosttune_file_sd": file_sd}
