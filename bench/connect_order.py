"""Why the ranks connect after the network is shaped: a push-and-pull exchange, timed on a TCP
connection made before shaping and on one made after.

Two hosts of a local lab of the bench's own (through the delay node where this kernel has no
netem). The client sends N bytes (a gradient), the server sends N back, then both idle 0.2 s
(the pipeline's turn), as a parameter server's replica and server do; REPEATS times per
connection. A connection made on the unshaped network carries that path's congestion-control
state into the shaped one (BBR keeps its minimum RTT for 10 s), so its first exchanges run
slower than the path allows; one made after shaping does not. Goal: on the connection made
after shaping (the runner's order), the first three exchanges take at most 10 % longer than
the steady exchange (the median of the last half); the other order is printed beside it.

    python bench/connect_order.py [--profile 10ms/25mbit] [--bytes 2176000] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_EXCESS = 0.10
FIRST = 3
IDLE_S = 0.2
PORT = 5411


def serve(port: int, n_bytes: int, repeats: int) -> None:
    """Server side (run inside a host): answer every N bytes received with N bytes."""
    with socket.create_server(("0.0.0.0", port)) as server:
        print("listening", flush=True)
        conn, _ = server.accept()
        with conn:
            reply = b"s" * n_bytes
            for _ in range(repeats):
                _receive(conn, n_bytes)
                conn.sendall(reply)


def exchange(address: str, port: int, n_bytes: int, repeats: int, start_file: str) -> None:
    """Client side: connect now, wait until `start_file` exists, then time every exchange."""
    with socket.create_connection((address, port)) as conn:
        print("connected", flush=True)
        while not Path(start_file).exists():
            time.sleep(0.005)
        payload, times = b"c" * n_bytes, []
        for _ in range(repeats):
            started = time.perf_counter()
            conn.sendall(payload)
            _receive(conn, n_bytes)
            times.append(time.perf_counter() - started)
            time.sleep(IDLE_S)
    print(json.dumps(times), flush=True)


def _receive(conn: socket.socket, n_bytes: int) -> None:
    left = n_bytes
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed early")
        left -= len(chunk)


def one_order(fleet, netem, target, order: str, args, workdir: Path) -> list[float]:
    """Exchange times on one connection, made `order` ("before" or "after") shaping."""
    client, server = fleet.host(0), fleet.host(1)
    start_file = workdir / f"start-{order}"
    me = [sys.executable, str(Path(__file__).resolve())]
    sizes = [str(args.bytes), str(args.repeats)]
    if order == "after":
        netem.apply(target, lease_s=600)
    server_proc = subprocess.Popen(
        ["ip", "netns", "exec", server.netns, *me, "--serve", str(PORT), *sizes],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        server_proc.stdout.readline()
        client_proc = subprocess.Popen(
            ["ip", "netns", "exec", client.netns, *me, "--exchange", server.address, str(PORT),
             *sizes, str(start_file)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            if client_proc.stdout.readline().strip() != "connected":
                raise RuntimeError(f"the client in {client.netns} did not connect")
            if order == "before":
                netem.apply(target, lease_s=600)
            start_file.touch()
            times = json.loads(client_proc.communicate(timeout=600)[0].strip().splitlines()[-1])
        finally:
            if client_proc.poll() is None:
                client_proc.kill()
                client_proc.wait()
        server_proc.wait(timeout=30)
    finally:
        if server_proc.poll() is None:
            server_proc.kill()
            server_proc.wait()
        netem.reset()
    return times


def summarize(times: list[float]) -> dict:
    """Steady exchange (median of the last half) and how much longer the first ones took."""
    steady = statistics.median(times[len(times) // 2 :])
    first = statistics.fmean(times[:FIRST])
    return {"times_s": times, "steady_s": steady, "first_s": first, "excess": first / steady - 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="10ms/25mbit")
    parser.add_argument("--bytes", type=int, default=2_176_000, help="the demo's gradient")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--exchange", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, n_bytes, repeats = map(int, args.serve)
        serve(port, n_bytes, repeats)
        return 0
    if args.exchange:
        address, port, n_bytes, repeats, start_file = args.exchange
        exchange(address, int(port), int(n_bytes), int(repeats), start_file)
        return 0

    from experiments import lab
    from experiments.lab.fleet import LocalFleet
    from experiments.runner import interrupts_held
    from inventory.loader import load_inventory
    from netem.fleet import FleetNetem, load_target

    target = load_target(args.profile)
    rows = {}
    with tempfile.TemporaryDirectory() as home:
        fleet = LocalFleet(prefix="wlc", subnet="198.18.15.0/24", home=Path(home))
        try:
            with FleetNetem(load_inventory(lab.up(2, "auto", fleet))) as netem:
                for order in ("before", "after"):
                    rows[order] = summarize(
                        one_order(fleet, netem, target, order, args, Path(home))
                    )
        finally:
            with interrupts_held():
                lab.down(fleet)
    print(f"{args.profile}, {args.bytes} B each way, {args.repeats} exchanges, {IDLE_S} s apart")
    for order, row in rows.items():
        shown = " ".join(f"{t:.3f}" for t in row["times_s"])
        print(
            f"connected {order:>6} shaping: first {FIRST} {row['first_s']:.3f} s vs steady "
            f"{row['steady_s']:.3f} s ({row['excess']:+.0%}); every exchange: {shown}"
        )
    met = rows["after"]["excess"] <= GOAL_EXCESS
    if args.json:
        goal = (
            f"first {FIRST} exchanges on a connection made after shaping "
            f"<= {1 + GOAL_EXCESS:.2f} x steady"
        )
        print(json.dumps({"bench": "connect_order", "goal": goal, "met": met,
                          "profile": args.profile, "bytes": args.bytes, **rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
