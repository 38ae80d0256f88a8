"""The shaper and agent on the host kernel: HTB/u32 trees, SSH exemption, reset, dead-man revert.

Uses its own namespaces (prefix wlt, 198.19.0.0/16). The host kernel has no sch_netem, so the
trees here are rate-only; test_netem_uml.py covers netem itself. `tc` is the independent reader.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import netem_tc
import pytest
from labnet import LAB_IFNAME, in_netns, namespaces_down, namespaces_up

from inventory.ports import wait_listening
from netem import shaper
from netem.pairs import Route
from netem.profile import parse_profile
from netem.tree import tree_for_profile, tree_for_routes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and tc")

ROOT = Path(__file__).resolve().parents[1]
SSH_SPORT = {9: (6, 0xFF), 20: (0, 0xFF), 21: (22, 0xFF)}
SSH_DPORT = {9: (6, 0xFF), 22: (0, 0xFF), 23: (22, 0xFF)}


@pytest.fixture(scope="module")
def lab():
    lab = namespaces_up(2, f"wlt{secrets.token_hex(2)}", f"198.19.{secrets.randbelow(150) + 50}")
    yield lab
    namespaces_down(lab)


@pytest.fixture
def h0(lab):
    """The first namespace, put back to its kernel default after each test."""
    host = lab.hosts[0]
    snap = {"interface": LAB_IFNAME, "kernel_default": True, "kind": "noqueue"}
    yield host
    shaper.restore(snap, host.name)


def agent(ns: str, state_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, dict]:
    argv = [sys.executable, "-m", "netem.agent", *args, "--state-dir", str(state_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        in_netns(ns, argv), input=stdin, capture_output=True, text=True, env=env, timeout=60
    )
    return proc.returncode, json.loads(proc.stdout)


def test_rate_profile_as_tc_sees_it(h0):
    tree = tree_for_profile(parse_profile("100mbit"))
    assert shaper.apply(LAB_IFNAME, tree, h0.name) == "built"
    [root] = netem_tc.qdiscs(h0.name, LAB_IFNAME)
    assert (root["kind"], root["handle"], root["options"]["default"]) == ("htb", "1:", "0x20")
    assert netem_tc.classes(h0.name, LAB_IFNAME) == {
        "1:10": (100 * 10**9, 100 * 10**9),
        "1:20": (100 * 10**6, 100 * 10**6),
    }
    assert netem_tc.filters(h0.name, LAB_IFNAME) == sorted(
        [(1, "1:10", SSH_SPORT), (1, "1:10", SSH_DPORT)], key=lambda f: sorted(f[2].items())
    )
    assert shaper.read_tree(LAB_IFNAME, h0.name) == shaper.normalized(tree)


def test_apply_twice_and_switch(h0):
    profile_tree = tree_for_profile(parse_profile("200mbit"))
    row_tree = tree_for_routes(
        [
            Route(dst="x", address="198.19.250.7", shape=parse_profile("50mbit")),
            Route(dst="y", address="198.19.250.8", shape=parse_profile("80mbit")),
        ]
    )
    smaller_row = tree_for_routes(
        [Route(dst="x", address="198.19.250.7", shape=parse_profile("60mbit"))]
    )
    assert shaper.apply(LAB_IFNAME, profile_tree, h0.name) == "built"
    assert shaper.apply(LAB_IFNAME, profile_tree, h0.name) == "unchanged"
    assert shaper.apply(LAB_IFNAME, row_tree, h0.name) == "built"
    assert shaper.read_tree(LAB_IFNAME, h0.name) == shaper.normalized(row_tree)
    dst_x = {16: (198, 0xFF), 17: (19, 0xFF), 18: (250, 0xFF), 19: (7, 0xFF)}
    assert (2, "1:20", dst_x) in netem_tc.filters(h0.name, LAB_IFNAME)
    assert shaper.apply(LAB_IFNAME, smaller_row, h0.name) == "updated"
    assert netem_tc.classes(h0.name, LAB_IFNAME) == {
        "1:10": (100 * 10**9, 100 * 10**9),
        "1:20": (60 * 10**6, 60 * 10**6),
    }
    assert len(netem_tc.filters(h0.name, LAB_IFNAME)) == 3
    assert shaper.apply(LAB_IFNAME, profile_tree, h0.name) == "built"
    assert shaper.read_tree(LAB_IFNAME, h0.name) == shaper.normalized(profile_tree)


@pytest.mark.parametrize(
    "before",
    [
        None,
        ["root", "handle", "8001:", "tbf", "rate", "300mbit", "burst", "300000", "latency", "40ms"],
    ],
    ids=["kernel-default", "user-tbf"],
)
def test_reset_restores_what_was_there(h0, before):
    if before:
        subprocess.run(
            ["tc", "-n", h0.name, "qdisc", "replace", "dev", LAB_IFNAME, *before], check=True
        )
    seen_before = netem_tc.qdiscs(h0.name, LAB_IFNAME)
    snap = shaper.snapshot(LAB_IFNAME, h0.name)
    shaper.apply(LAB_IFNAME, tree_for_profile(parse_profile("100mbit")), h0.name)
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME) != seen_before
    shaper.restore(snap, h0.name)
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME) == seen_before
    shaper.restore(snap, h0.name)
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME) == seen_before


def test_foreign_tree_is_refused_untouched(h0):
    subprocess.run(
        ["tc", "-n", h0.name, "qdisc", "add", "dev", LAB_IFNAME, "root", "handle", "5:", "htb"],
        check=True,
    )
    subprocess.run(
        [
            "tc",
            "-n",
            h0.name,
            "class",
            "add",
            "dev",
            LAB_IFNAME,
            "parent",
            "5:",
            "classid",
            "5:1",
            "htb",
            "rate",
            "1mbit",
        ],
        check=True,
    )
    seen = netem_tc.classes(h0.name, LAB_IFNAME)
    with pytest.raises(shaper.ShaperError, match="could not put back"):
        shaper.snapshot(LAB_IFNAME, h0.name)
    assert netem_tc.classes(h0.name, LAB_IFNAME) == seen


def _send(ns: str, address: str, port: int, nbytes: int) -> None:
    code = (
        "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])));"
        "s.sendall(b's' + b'x' * int(sys.argv[3])); s.shutdown(socket.SHUT_WR); s.recv(64)"
    )
    argv = [sys.executable, "-c", code, address, str(port), str(nbytes)]
    subprocess.run(in_netns(ns, argv), check=True, timeout=60)


def _serve(ns: str, address: str, port: int) -> int:
    argv = [sys.executable, "-m", "netem.probe", "serve", "--detach", "--bind", address]
    out = subprocess.run(
        in_netns(ns, [*argv, "--port", str(port), "--for", "60"]),
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wait_listening(address, port)
    return json.loads(out.stdout)["pid"]


def test_ssh_goes_to_the_unshaped_class(lab, h0):
    h1 = lab.hosts[1]
    nbytes = 2_000_000
    servers = [_serve(h1.name, h1.address, port) for port in (22, 5001)]
    try:
        shaper.apply(LAB_IFNAME, tree_for_profile(parse_profile("20mbit")), h0.name)
        before = netem_tc.class_bytes(h0.name, LAB_IFNAME)
        _send(h0.name, h1.address, 22, nbytes)
        mid = netem_tc.class_bytes(h0.name, LAB_IFNAME)
        _send(h0.name, h1.address, 5001, nbytes)
        after = netem_tc.class_bytes(h0.name, LAB_IFNAME)
    finally:
        for pid in servers:
            os.kill(pid, 15)
    assert mid["1:10"] - before["1:10"] >= nbytes
    assert mid["1:20"] - before["1:20"] < 100_000
    assert after["1:20"] - mid["1:20"] >= nbytes
    assert after["1:10"] - mid["1:10"] < 100_000


def test_measured_rate_is_near_the_shaped_rate(lab, h0):
    """A coarse end-to-end check (wide bounds): 100 Mbit/s shaping gives 80-102 Mbit/s goodput."""
    h1 = lab.hosts[1]
    shaper.apply(LAB_IFNAME, tree_for_profile(parse_profile("100mbit")), h0.name)
    server = _serve(h1.name, h1.address, 5002)
    argv = [sys.executable, "-m", "netem.probe", "measure", "--to", h1.address, "--port", "5002"]
    out = subprocess.run(
        in_netns(h0.name, [*argv, "--seconds", "2.5"]),
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.kill(server, 15)
    measured = json.loads(out.stdout)["throughput_bps"]
    assert 80e6 <= measured <= 102e6


@pytest.mark.skipif(shaper.netem_available(), reason="this kernel has sch_netem")
def test_delay_profile_fails_clearly_and_touches_nothing(h0, tmp_path):
    seen = netem_tc.qdiscs(h0.name, LAB_IFNAME)
    with pytest.raises(shaper.NetemUnavailable, match="modprobe sch_netem"):
        shaper.apply(LAB_IFNAME, tree_for_profile(parse_profile("10ms/1gbit")), h0.name)
    tree = tree_for_profile(parse_profile("10ms")).model_dump_json()
    code, answer = agent(h0.name, tmp_path, "apply", "--interface", LAB_IFNAME, stdin=tree)
    assert (code, answer["error_kind"]) == (1, "netem_unavailable")
    assert "user-mode Linux" in answer["error"]
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME) == seen
    assert not (tmp_path / f"{LAB_IFNAME}.json").exists()


def test_agent_rejects_a_bad_tree_and_touches_nothing(h0, tmp_path):
    seen = netem_tc.qdiscs(h0.name, LAB_IFNAME)
    code, answer = agent(
        h0.name, tmp_path, "apply", "--interface", LAB_IFNAME, stdin='{"default_minor": "x"}'
    )
    assert (code, answer["ok"], answer["error_kind"]) == (2, False, "input")
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME) == seen


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_dead_man_revert_fires_when_the_lease_is_not_renewed(h0, tmp_path):
    tree = tree_for_profile(parse_profile("100mbit")).model_dump_json()
    code, answer = agent(
        h0.name, tmp_path, "apply", "--interface", LAB_IFNAME, "--lease", "2", stdin=tree
    )
    assert (code, answer["matches"]) == (0, True)
    _, status = agent(h0.name, tmp_path, "status", "--interface", LAB_IFNAME)
    assert status["watchdog_alive"]
    pid = status["watchdog_pid"]
    assert _wait_for(lambda: netem_tc.qdiscs(h0.name, LAB_IFNAME)[0]["kind"] == "noqueue", 20)
    assert _wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10)
    _, status = agent(h0.name, tmp_path, "status", "--interface", LAB_IFNAME)
    assert not status["applied"]


def test_renewed_lease_holds_and_reset_stops_the_watchdog(h0, tmp_path):
    tree = tree_for_profile(parse_profile("100mbit")).model_dump_json()
    agent(h0.name, tmp_path, "apply", "--interface", LAB_IFNAME, "--lease", "3", stdin=tree)
    code, renewed = agent(h0.name, tmp_path, "renew", "--interface", LAB_IFNAME, "--lease", "120")
    assert code == 0
    _, status = agent(h0.name, tmp_path, "status", "--interface", LAB_IFNAME)
    assert status["lease_until"] == renewed["lease_until"] > time.time() + 100
    time.sleep(4)  # past the first lease: the watchdog must not have fired
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME)[0]["kind"] == "htb"
    code, shown = agent(h0.name, tmp_path, "show", "--interface", LAB_IFNAME)
    assert shown["shaping"] == {"kind": "profile", "profile": "100mbit", "ssh_exempt": True}
    assert shown["matches_applied"]
    assert agent(h0.name, tmp_path, "reset", "--interface", LAB_IFNAME)[1]["result"] == "restored"
    assert _wait_for(lambda: not Path(f"/proc/{status['watchdog_pid']}").exists(), 10)
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME)[0]["kind"] == "noqueue"
    assert agent(h0.name, tmp_path, "reset", "--interface", LAB_IFNAME)[1]["result"] == "clean"


def test_agent_dry_run_prints_tc_and_touches_nothing(h0, tmp_path):
    seen = netem_tc.qdiscs(h0.name, LAB_IFNAME)
    tree = tree_for_profile(parse_profile("10ms/1gbit")).model_dump_json()
    code, answer = agent(
        h0.name, tmp_path, "apply", "--interface", LAB_IFNAME, "--dry-run", stdin=tree
    )
    assert code == 0
    assert (
        "tc qdisc replace dev eth0 parent 1:20 handle 20: netem delay 10ms limit 2500"
        in (answer["commands"])
    )
    assert netem_tc.qdiscs(h0.name, LAB_IFNAME) == seen
