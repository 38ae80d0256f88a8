"""Whether a host's TCP port accepts connections. Standard library only: it ships to hosts with
the netem agent and with the trainer."""

from __future__ import annotations

import socket
import time


def port_open(address: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to address:port succeeds within `timeout` seconds."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_listening(address: str, port: int, timeout_s: float = 30.0, poll_s: float = 0.05) -> None:
    """Block until a TCP server accepts on address:port; the last OSError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(poll_s)
