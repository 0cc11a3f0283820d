"""Which addresses a webhook may be sent to: public ones, and the non-public networks staff allowed.

A subscriber URL is chosen by whoever configures it, so without this check a webhook is a request
from inside our network to anywhere: the cloud metadata service (credentials), an admin port on
loopback, a database on a private network (SSRF). The check is made on addresses, after DNS, and
transport.py connects to exactly the address that was checked, so a name that resolves to a public
address when checked and to 127.0.0.1 when connected (DNS rebinding) gets nowhere.

Refused unless inside WEBHOOK_ALLOWED_PRIVATE_NETWORKS: anything that is not globally routable
(loopback, private, link-local, unspecified, reserved, shared/CGNAT, documentation...) and multicast.
Refused always, whatever the allowlist says: the cloud metadata addresses (no receiver lives there).
An IPv4 address inside IPv6 (::ffff:a.b.c.d, 64:ff9b::a.b.c.d) is judged as the IPv4 address.
"""

import ipaddress
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# AWS/GCP/Azure/OpenStack (169.254.169.254), AWS over IPv6 (fd00:ec2::254), Alibaba (100.100.100.200),
# Azure's wire server (168.63.129.16, a public address that only answers from inside Azure).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DestinationRefused(ValueError):
    """A webhook URL's host resolves to an address we do not send to."""


def _unwrap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _kind(address: IPAddress) -> str:
    for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "not public"


def refusal(address: str | IPAddress, allowed: Iterable[Network] = ()) -> str | None:
    """Return why `address` may not receive a webhook ("loopback", "private", ...), or None
    if it may."""
    ip = _unwrap(ipaddress.ip_address(address))
    if ip in METADATA_ADDRESSES:
        return "cloud metadata, never allowed"
    if ip.is_global and not ip.is_multicast:
        return None
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    return _kind(ip)


def resolve(host: str, port: int, allowed: Iterable[Network] = ()) -> list[tuple]:
    """Resolve `host` once and return its addresses (getaddrinfo tuples for SOCK_STREAM).

    Raise DestinationRefused if ANY of them is refused (a name that mixes a public and a private
    address is not a receiver we trust), and OSError (socket.gaierror) if it does not resolve.
    """
    allowed = tuple(allowed)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        address = sockaddr[0].split("%", 1)[0]  # an IPv6 scope id ("fe80::1%eth0") is not part of it
        reason = refusal(address, allowed)
        if reason is not None:
            raise DestinationRefused(
                f"{host} resolves to {address} ({reason}), which is not in WEBHOOK_ALLOWED_PRIVATE_NETWORKS"
            )
    return infos
