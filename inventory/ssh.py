"""The one SSH layer: run a command on every host in parallel, upload files.

Connections are opened once per host and reused; every host gets its own timeout and its own
result, so one dead host never hides the answers of the others. Host keys are checked strictly
against the fleet's known_hosts (or the user's) unless the inventory turns that off. A host
behind a jump host is reached through a channel of the jump host's connection (one hop).
"""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from inventory.models import Fleet, Host, JumpHost

Command = list[str] | Callable[[Host], list[str]]


@dataclass
class HostResult:
    """What one host answered: exit code, output, seconds taken, or the error that stopped it."""

    host: str
    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict:
        """Plain-dict form for JSON output."""
        return asdict(self)


def quote_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Build a remote command line from an argument vector, quoting every word."""
    words = [f"{key}={value}" for key, value in (env or {}).items()]
    prefix = ["env", *words] if words else []
    return shlex.join([*prefix, *argv])


class Stream:
    """A long-running remote command: write lines to its stdin, read lines of its output.

    Standard error is merged into the output, so a chatty command can never block on a full
    pipe; `read_message` picks out the lines of a protocol (marked by a prefix) and keeps the
    last few other lines in `chatter`, for error messages.
    """

    CHATTER_LINES = 20

    def __init__(self, host: str, channel: paramiko.Channel):
        self.host = host
        self.channel = channel
        self.chatter: list[str] = []
        self._buffer = b""

    def send_line(self, text: str) -> None:
        """Send one line to the command's stdin."""
        self.channel.sendall((text + "\n").encode())

    def read_line(self, timeout: float) -> str | None:
        """The next output line; None once the command has ended. TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.host}: no output within {timeout:g} s")
            self.channel.settimeout(remaining)
            try:
                chunk = self.channel.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"{self.host}: no output within {timeout:g} s") from None
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest.decode(errors="replace") if rest else None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def read_message(self, mark: str, timeout: float) -> dict | None:
        """The JSON of the next line that starts with `mark`; None once the command has ended.

        TimeoutError if no such line comes within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.read_line(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise TimeoutError(f"{self.host}: no answer within {timeout:g} s") from None
            if line is None:
                return None
            if line.startswith(mark):
                return json.loads(line[len(mark) :])
            self.chatter = [*self.chatter[-(self.CHATTER_LINES - 1) :], line]

    def close(self) -> None:
        """Close the channel (the remote command sees end of input)."""
        self.channel.close()


KEEPALIVE_S = 5


class FleetSSH:
    """Parallel SSH over a fleet, one reusable connection per host; use as a context manager."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self._connections: dict[str, Connection] = {}
        self._jumps: dict[JumpHost, Connection] = {}
        self._jump_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(64, len(fleet.hosts))))

    def __enter__(self) -> FleetSSH:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection and the worker threads."""
        for connection in [*self._connections.values(), *self._jumps.values()]:
            connection.close()
        self._connections.clear()
        self._jumps.clear()
        self._pool.shutdown(wait=True)

    def _open(self, target: Host | JumpHost, sock: paramiko.Channel | None = None) -> Connection:
        """An open connection to `target` (through `sock`, a jump host's channel), its host key
        checked as the fleet says."""
        connect_kwargs = {"allow_agent": True, "look_for_keys": target.key_file is None}
        if target.key_file is not None:
            connect_kwargs["key_filename"] = str(target.key_file)
        if sock is not None:
            connect_kwargs["sock"] = sock
        connection = Connection(
            target.address,
            user=target.user,
            port=target.port,
            connect_timeout=self.fleet.connect_timeout,
            connect_kwargs=connect_kwargs,
            # An empty SSH client configuration: the library would otherwise read the user's
            # and the system's, whose HostName, Port or ProxyCommand would override the
            # inventory (or run a command) when connecting.
            config=Config(overrides={"run": {"in_stream": False}}, ssh_config=paramiko.SSHConfig()),
        )
        client = connection.client
        if self.fleet.known_hosts is not None:
            client.load_host_keys(str(self.fleet.known_hosts))
        else:
            client.load_system_host_keys()
        if self.fleet.strict_host_keys:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        connection.open()
        # A host that drops off the network must not hold a caller for paramiko's default
        # hour: opening a channel gives up after the connect timeout, and keepalives let a
        # dead connection be noticed.
        transport = client.get_transport()
        transport.channel_timeout = self.fleet.connect_timeout
        transport.set_keepalive(KEEPALIVE_S)
        if isinstance(transport.sock, socket.socket):
            # A command's small messages must not wait for the host's delayed ACK: with
            # Nagle's algorithm on, each command took 40 ms more on the local fleet.
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _jump_channel(self, host: Host) -> paramiko.Channel:
        """A `direct-tcpip` channel to `host` through its jump host, whose one connection every
        host behind it shares."""
        with self._jump_lock:
            jump = self._jumps.get(host.jump)
            if jump is None or not jump.is_connected:
                jump = self._jumps[host.jump] = self._open(host.jump)
        return jump.transport.open_channel(
            "direct-tcpip",
            dest_addr=(host.address, host.port),
            src_addr=("", 0),
            timeout=self.fleet.connect_timeout,
        )

    def _connection(self, host: Host) -> Connection:
        connection = self._connections.get(host.name)
        if connection is None:
            sock = self._jump_channel(host) if host.jump is not None else None
            connection = self._connections[host.name] = self._open(host, sock)
        return connection

    def _drop(self, host: Host) -> None:
        connection = self._connections.pop(host.name, None)
        if connection is not None:
            connection.close()

    def _run_one(
        self, host: Host, argv: list[str], timeout: float, env: dict[str, str] | None
    ) -> HostResult:
        started = time.monotonic()
        command = quote_command(argv, env)
        try:
            result = self._connection(host).run(command, hide=True, warn=True, timeout=timeout)
        except CommandTimedOut as error:
            self._drop(host)
            return HostResult(
                host.name,
                False,
                None,
                error.result.stdout,
                error.result.stderr,
                time.monotonic() - started,
                f"timed out after {timeout:g} s",
            )
        except Exception as error:  # noqa: BLE001 - any connect/transport failure is per host
            self._drop(host)
            reason = f"{type(error).__name__}: {error}".strip()
            return HostResult(host.name, False, None, "", "", time.monotonic() - started, reason)
        return HostResult(
            host.name,
            result.exited == 0,
            result.exited,
            result.stdout,
            result.stderr,
            time.monotonic() - started,
        )

    def _selected(self, hosts: Iterable[str] | None) -> list[Host]:
        wanted = set(hosts) if hosts is not None else None
        return [host for host in self.fleet.hosts if wanted is None or host.name in wanted]

    def run(
        self,
        command: Command,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        hosts: Iterable[str] | None = None,
    ) -> dict[str, HostResult]:
        """Run `command` (an argv, or a function of the host giving one) on every host at once.

        `hosts` limits the run to those host names; the default is the whole fleet.
        """
        futures = {
            host.name: self._pool.submit(
                self._run_one, host, command(host) if callable(command) else command, timeout, env
            )
            for host in self._selected(hosts)
        }
        return {name: future.result() for name, future in futures.items()}

    def open_stream(self, host_name: str, argv: list[str], env: dict[str, str] | None = None):
        """Start `argv` on one host and keep it running as a Stream (raises on connect errors)."""
        connection = self._connection(self.fleet.host(host_name))
        connection.open()
        channel = connection.client.get_transport().open_session()
        channel.set_combine_stderr(True)
        channel.exec_command(quote_command(argv, env))
        return Stream(host_name, channel)

    def put(
        self, local_path: str | Path, remote_path: str, hosts: Iterable[str] | None = None
    ) -> dict[str, HostResult]:
        """Upload one file to the same path on every host, in parallel."""

        def upload(host: Host) -> HostResult:
            started = time.monotonic()
            try:
                self._connection(host).put(str(local_path), remote=remote_path)
            except Exception as error:  # noqa: BLE001 - per-host failure is reported, not raised
                self._drop(host)
                return HostResult(
                    host.name, False, None, "", "", time.monotonic() - started, str(error)
                )
            return HostResult(host.name, True, 0, "", "", time.monotonic() - started)

        futures = {host.name: self._pool.submit(upload, host) for host in self._selected(hosts)}
        return {name: future.result() for name, future in futures.items()}
