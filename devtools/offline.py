"""An in-process network guard: any connection or name lookup that is not loopback fails at once.

The test suite installs it for its own process (tests/conftest.py), so that a code path reaching for
a model hub or any other host fails loudly instead of passing on a machine that happens to be online.
Child processes (ComfyUI servers, ``python -m train``) are started with HF_HUB_OFFLINE=1 instead.
"""
from __future__ import annotations

import ipaddress
import socket

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_installed: dict = {}


class NetworkBlocked(ConnectionError):
    """A non-loopback connection was attempted while the guard was on."""


def is_loopback(host) -> bool:
    if host is None:
        return True                         # getaddrinfo(None, port): a local wildcard address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%", 1)[0].strip("[]")
    if host.lower() in _LOOPBACK_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(family, address) -> None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not is_loopback(address[0]):
        raise NetworkBlocked(f"network access blocked by the test suite's offline guard: connect to {address!r} "
                             f"(only loopback is allowed; models must load from local files)")


def install() -> None:
    """Turn the guard on in this process (idempotent)."""
    if _installed:
        return
    orig = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex,
            "getaddrinfo": socket.getaddrinfo}

    def connect(self, address):
        _check(self.family, address)
        return orig["connect"](self, address)

    def connect_ex(self, address):
        _check(self.family, address)
        return orig["connect_ex"](self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            raise NetworkBlocked(f"network access blocked by the test suite's offline guard: name lookup of "
                                 f"{host!r} (only loopback is allowed; models must load from local files)")
        return orig["getaddrinfo"](host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    _installed.update(orig)


def uninstall() -> None:
    if _installed:
        socket.socket.connect = _installed["connect"]
        socket.socket.connect_ex = _installed["connect_ex"]
        socket.getaddrinfo = _installed["getaddrinfo"]
        _installed.clear()


def active() -> bool:
    return bool(_installed)
