"""Measure what a network really does: RTT (median of many TCP round trips), bulk throughput,
and the share of a receive buffer that the receiving host's kernel offers as window.

`python -m netem.probe serve` runs on every host; `python -m netem.probe measure --to ADDR`
runs on the sending host and prints one JSON object. Standard library only (with
`inventory.ports`, itself standard library), so it starts fast on slow hosts (inside user-mode
Linux too).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from inventory.ports import wait_listening

DEFAULT_PORT = 5399
MIN_WINDOW_RTTS = 10
"""The shortest bulk window, in round trips, whose throughput says something about the link."""
_ECHO, _SINK, _FILL = b"e", b"s", b"f"
_CHUNK = 256 * 1024
_DRAIN_S = 30.0  # how long the sink reads on after its report, at most
_REPORT = struct.Struct("!dQ")  # seconds measured, bytes received after the warm-up
_DURATION = struct.Struct("!d")  # how long the sink counts, sent by the sender
_SHARE = struct.Struct("!dQQ")  # the receive share, the bytes queued, the receive buffer
_FILL_BUFFER_BYTES = 128 * 1024
"""The receive buffer a fill measures (the kernel's default size): small, so that it fills in a
few round trips even on a slow link, and fixed, so that autotuning does not move it."""
_FILL_STILL_S = 1.0
"""A receive queue that grew no more for this long is full (longer than a retransmission's
wait on a lossy link)."""
_FILL_MAX_S = 30.0
WINDOW_FROM_TRUESIZE = (6, 6)
"""From this kernel on the window is the receive buffer times the share of it that payload
takes in the packets received (their length over their true size); before it, the share
`net.ipv4.tcp_adv_win_scale` leaves."""


def _serve_echo(conn: socket.socket) -> None:
    while data := conn.recv(64):
        conn.sendall(data)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection early")
        data += chunk
    return data


def _serve_sink(conn: socket.socket, warmup_s: float) -> None:
    """Count what arrives for the sender's `seconds` from its first byte, then report at once
    (the sender stops on the report, so nothing it still has queued delays the probe)."""
    (seconds,) = _DURATION.unpack(_recv_exactly(conn, _DURATION.size))
    if not (first := conn.recv(_CHUNK)):
        return
    start = time.monotonic()
    total = len(first)
    warm_at, warm_bytes = (start, 0) if warmup_s >= seconds else (None, None)
    while (now := time.monotonic()) < start + seconds:
        if not (data := conn.recv(_CHUNK)):
            break
        total += len(data)
        if warm_at is None and now - start >= warmup_s:
            warm_at, warm_bytes = now, total
    end = time.monotonic()
    if warm_at is None:
        warm_at, warm_bytes = start, 0
    conn.sendall(_REPORT.pack(end - warm_at, total - warm_bytes))
    # Keep reading until the sender, having read the report, resets the connection: closing
    # with its data unread would reset the connection from here, and that reset can overtake
    # the report (the sender then fails instead of reporting).
    conn.settimeout(_DRAIN_S)
    while conn.recv(_CHUNK):
        pass


def _kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def adv_win_share(adv_win_scale: int) -> float:
    """The share of a receive buffer a kernel before 6.6 offers as window under
    `net.ipv4.tcp_adv_win_scale`: all but 2^−scale of it, or 2^scale of it for scale ≤ 0."""
    return 1 - 2.0**-adv_win_scale if adv_win_scale > 0 else 2.0**adv_win_scale


def _own_receive_share(queued: int, buffer: int) -> float:
    if _kernel_version() >= WINDOW_FROM_TRUESIZE:
        return queued / buffer
    return adv_win_share(int(Path("/proc/sys/net/ipv4/tcp_adv_win_scale").read_text()))


def _serve_fill(conn: socket.socket) -> None:
    """Read nothing until the sender's data has filled this socket's receive buffer, then
    report the share of it that is window: on kernels from 6.6 the payload the full buffer
    holds over its size (the kernel offers exactly that much), before them what
    `tcp_adv_win_scale` leaves."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _FILL_BUFFER_BYTES // 2)  # doubled
    deadline, queued, still_since = time.monotonic() + _FILL_MAX_S, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < _FILL_STILL_S:
        time.sleep(0.02)
        now_queued = struct.unpack("i", fcntl.ioctl(conn, termios.FIONREAD, b"\0" * 4))[0]
        if now_queued != queued:
            queued, still_since = now_queued, time.monotonic()
    buffer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    conn.sendall(_SHARE.pack(_own_receive_share(queued, buffer), queued, buffer))
    conn.settimeout(_DRAIN_S)
    while conn.recv(_CHUNK):
        pass


def _handle(conn: socket.socket, warmup_s: float) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        with contextlib.suppress(OSError):  # a sender may reset the connection when done
            if mode == _ECHO:
                _serve_echo(conn)
            elif mode == _SINK:
                _serve_sink(conn, warmup_s)
            elif mode == _FILL:
                _serve_fill(conn)


def open_server(bind: str, port: int) -> socket.socket:
    """The probe's listening socket (listening once this returns)."""
    server = socket.create_server((bind, port))
    server.settimeout(0.5)
    return server


def serve_on(server: socket.socket, for_s: float, warmup_s: float) -> None:
    """Answer echo (RTT) and sink (throughput) connections on `server` for `for_s` seconds."""
    with server:
        deadline = time.monotonic() + for_s
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_handle, args=(conn, warmup_s), daemon=True).start()


def serve(bind: str, port: int, for_s: float, warmup_s: float) -> None:
    """Answer echo (RTT) and sink (throughput) connections for `for_s` seconds."""
    serve_on(open_server(bind, port), for_s, warmup_s)


def measure_rtt(address: str, port: int, count: int = 50, gap_s: float = 0.005) -> dict[str, float]:
    """Median/min/max of `count` 1-byte TCP round trips (after one unmeasured warm-up), and the
    payload the kernel puts in a segment on that path (`mss_bytes`: its MTU less the IP and
    TCP headers and options; never above half the peer's first window, so loopback's 65,536
    reads as 32,768).

    A ping leaves as soon as the previous one is answered, or `gap_s` after it if that comes
    first: on a fast link they run back to back, on a slow one they overlap on the connection
    (a 1-byte ping does not queue behind the others), so `count` of them take about one round
    trip plus count × gap_s instead of count round trips (seconds at WAN latencies). TCP keeps
    their order, so the n-th byte echoed answers the n-th ping. One thread sends and reads
    (select), so no thread switch delays a timestamp.
    """
    with socket.create_connection((address, port), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(_ECHO + b"x")
        if conn.recv(1) != b"x":
            raise ConnectionError("echo server closed the connection")
        sent: list[float] = []
        echoed: list[float] = []
        deadline = time.monotonic() + 30
        next_ping = time.perf_counter()
        while len(echoed) < count:
            now = time.perf_counter()
            idle = len(echoed) == len(sent)
            if len(sent) < count and (idle or now >= next_ping):
                sent.append(time.perf_counter())
                conn.sendall(b"x")
                next_ping = sent[-1] + gap_s
                continue
            wait = max(0.0, next_ping - now) if len(sent) < count else 1.0
            readable, _, _ = select.select([conn], [], [], wait)
            if readable:
                data = conn.recv(64)
                if not data:
                    raise ConnectionError("echo server closed the connection")
                echoed.extend([time.perf_counter()] * len(data))
            elif time.monotonic() > deadline:
                raise TimeoutError(f"no echo from {address}:{port} within 30 s")
        mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    samples = [(back - out) * 1000 for out, back in zip(sent, echoed, strict=True)]
    return {
        "rtt_ms_median": statistics.median(samples),
        "rtt_ms_min": min(samples),
        "rtt_ms_max": max(samples),
        "samples": count,
        "mss_bytes": mss,
    }


def _send_until_report(
    address: str, port: int, header: bytes, give_up_s: float, report_size: int
) -> bytes:
    """Send `header`, then data until the receiver's report of `report_size` bytes arrives;
    read it and reset the connection: what the socket still holds is dropped instead of
    drained through the shaped link."""
    payload = memoryview(b"\0" * _CHUNK)
    with socket.create_connection((address, port), timeout=30) as conn:
        conn.sendall(header)
        conn.setblocking(False)
        give_up = time.monotonic() + give_up_s
        while True:
            readable, writable, _ = select.select([conn], [conn], [], 1.0)
            if readable:
                break
            if writable:
                with contextlib.suppress(BlockingIOError):
                    conn.send(payload)
            if time.monotonic() > give_up:
                raise TimeoutError(f"no report from {address}:{port}")
        conn.settimeout(30)
        report = _recv_exactly(conn, report_size)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return report


def measure_throughput(address: str, port: int, seconds: float = 3.0) -> dict[str, float]:
    """Bulk TCP goodput in bit/s as the receiver counted it (after its warm-up).

    The sender keeps sending until the receiver's report arrives, then resets the connection:
    what its socket still holds is dropped instead of drained through the shaped link.
    """
    header = _SINK + _DURATION.pack(seconds)
    report = _send_until_report(address, port, header, seconds + 30, _REPORT.size)
    measured_s, received = _REPORT.unpack(report)
    return {"throughput_bps": received * 8 / measured_s if measured_s > 0 else 0.0}


def measure_receive_share(address: str, port: int) -> dict[str, float]:
    """The share of the receiver's buffer its kernel offers as window (`_serve_fill`): the
    sender sends until the receiver, which reads nothing, reports."""
    report = _send_until_report(address, port, _FILL, _FILL_MAX_S + 30, _SHARE.size)
    share, queued, buffer = _SHARE.unpack(report)
    return {"receive_share": round(share, 4), "receive_queued_bytes": queued,
            "receive_buffer_bytes": buffer}  # fmt: skip


def spawn_detached(module_argv: list[str]) -> int:
    """Start `python -m MODULE …` detached from this session (it outlives an SSH command), with
    wanlab's own code importable; returns its PID."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", *module_argv],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd="/",
    )
    return proc.pid


def start_server_detached(bind: str, port: int, for_s: float, warmup_s: float) -> int:
    """Start `serve` as a detached process; returns its PID."""
    return spawn_detached(["netem.probe", "serve", "--bind", bind, "--port", str(port),
                           "--for", str(for_s), "--warmup", str(warmup_s)])  # fmt: skip


def measure(
    address: str, port: int, count: int, seconds: float, receive_share: bool = True
) -> dict:
    """RTT, then (if `seconds` > 0) bulk throughput and (if `receive_share`) the receiver's
    receive share, to a listening probe server.

    TCP starts slowly, so a bulk window of a few round trips measures its start, not the link's
    rate: the window lasts `seconds` but at least MIN_WINDOW_RTTS of the RTT just measured
    (`throughput_window_rtts` says how many it lasted).
    """
    result = {"ok": True, "to": address}
    result.update(measure_rtt(address, port, count))
    if seconds > 0:
        rtt_s = result["rtt_ms_median"] / 1000
        window_s = max(seconds, MIN_WINDOW_RTTS * rtt_s)
        result.update(measure_throughput(address, port, window_s))
        result["throughput_window_rtts"] = round(window_s / max(rtt_s, 1e-6), 3)
        if receive_share:
            result.update(measure_receive_share(address, port))
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """`serve [--detach]` or `measure --to ADDR` and their options."""
    parser = argparse.ArgumentParser(prog="python -m netem.probe")
    parser.add_argument("command", choices=["serve", "measure"])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--to", help="address to measure against")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--for", dest="for_s", type=float, default=120.0, help="serve seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="sink warm-up seconds")
    parser.add_argument("--detach", action="store_true", help="serve in the background")
    parser.add_argument("--count", type=int, default=50, help="round trips")
    parser.add_argument("--seconds", type=float, default=3.0, help="bulk transfer seconds")
    args = parser.parse_args(argv)
    if args.command == "measure" and not args.to:
        parser.error("measure needs --to ADDRESS")
    return args


def main(argv: list[str] | None = None) -> int:
    """`serve [--detach]` or `measure --to ADDR`; measure prints one JSON object."""
    args = parse_args(argv)
    if args.command == "serve":
        if args.detach:
            pid = start_server_detached(args.bind, args.port, args.for_s, args.warmup)
            print(json.dumps({"ok": True, "pid": pid, "port": args.port}))
        else:
            serve(args.bind, args.port, args.for_s, args.warmup)
        return 0
    wait_listening(args.to, args.port)
    print(json.dumps(measure(args.to, args.port, args.count, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
