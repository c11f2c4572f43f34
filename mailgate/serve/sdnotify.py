"""systemd's notification protocol (sd_notify): READY, WATCHDOG, STOPPING, STATUS.

The protocol is one datagram to the socket in $NOTIFY_SOCKET; outside systemd (no such
variable) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send STATES (e.g. "READY=1", "STATUS=…"); False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2
