"""The hosts' TCP settings: presets, the agent setting them in a namespace and putting them back
(on reset and when the lease runs out), the matrix's tcp axis.

The namespaces are the test's own (prefix wtcp<pid>); `sysctl` and `ip route` run inside them
are the independent readers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import GOOD_MATRIX
from labnet import LAB_IFNAME, in_netns, namespaces_down, namespaces_up

from experiments.lab.netns import allow_every_congestion_control
from experiments.matrix import load_matrix
from netem.tcp import HOST, PRESETS, TcpSettings

ROOT = Path(__file__).resolve().parents[1]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
SYSCTLS = {
    "congestion_control": "net.ipv4.tcp_congestion_control",
    "rmem": "net.ipv4.tcp_rmem",
    "wmem": "net.ipv4.tcp_wmem",
    "adv_win_scale": "net.ipv4.tcp_adv_win_scale",
    "slow_start_after_idle": "net.ipv4.tcp_slow_start_after_idle",
}


@pytest.fixture(scope="module")
def lab():
    allow_every_congestion_control()
    lab = namespaces_up(1, f"wtcp{os.getpid()}", "198.19.251")
    try:
        yield lab
    finally:
        namespaces_down(lab)


def as_read(ns: str) -> dict:
    """The namespace's TCP sysctls and routes, as `sysctl` and `ip route` show them."""
    argv = ["sysctl", "-n", *SYSCTLS.values()]
    values = subprocess.run(in_netns(ns, argv), capture_output=True, text=True, check=True)
    routes = subprocess.run(["ip", "-n", ns, "route", "show"], capture_output=True, text=True)
    return {**dict(zip(SYSCTLS, values.stdout.splitlines(), strict=True)), "routes": routes.stdout}


def agent(ns: str, state_dir: Path, *requests: dict, expire_after_s: float = 0) -> list[dict]:
    """The agent's answers to `requests`, in one process inside `ns`; then, after
    `expire_after_s`, its dead-man revert (`revert_expired`) once."""
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\nfrom netem.agent import Agent\n"
        f"agent = Agent(Path({str(state_dir)!r}))\n"
        "print(json.dumps([agent.handle(r) for r in json.loads(sys.argv[1])]))\n"
        f"time.sleep({expire_after_s})\n"
        "agent.revert_expired()\n"
    )
    argv = [sys.executable, "-c", script, json.dumps(list(requests))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        in_netns(ns, argv), capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return json.loads(done.stdout)


def tcp_request(verb: str, **fields) -> dict:
    return {"verb": verb, "interface": LAB_IFNAME, **fields}


def expected(settings: TcpSettings) -> dict:
    """What `sysctl -n` prints for each of `settings`' sysctls."""
    text = {
        "congestion_control": settings.congestion_control,
        "rmem": "\t".join(map(str, settings.rmem)),
        "wmem": "\t".join(map(str, settings.wmem)),
        "adv_win_scale": str(settings.adv_win_scale),
        "slow_start_after_idle": str(int(settings.slow_start_after_idle)),
    }
    return text


@root_only
@pytest.mark.parametrize("preset", ["ubuntu-2022", "tuned"])
def test_preset_applied_then_reset_restores(lab, tmp_path, preset):
    ns = lab.hosts[0].name
    before = as_read(ns)
    settings = PRESETS[preset]
    try:
        [applied] = agent(ns, tmp_path, tcp_request("tcp-apply", tcp=settings.model_dump()))
        assert applied["ok"] and applied["matches"], applied
        assert TcpSettings(**applied["tcp"]) == settings
        now = as_read(ns)
        assert {k: now[k] for k in SYSCTLS} == expected(settings)
        assert f"initcwnd {settings.initcwnd}" in now["routes"]
        [shown] = agent(ns, tmp_path, tcp_request("tcp-show"))
        assert shown["tcp"] == applied["tcp"] and shown["lease_until"] is not None
        assert "cubic" in shown["congestion_controls"]["available"]
    finally:
        [reset] = agent(ns, tmp_path, tcp_request("tcp-reset"))
    assert reset["result"] == "restored"
    assert as_read(ns) == before
    assert agent(ns, tmp_path, tcp_request("tcp-reset"))[0]["result"] == "clean"


@root_only
def test_the_agent_reads_the_interfaces_mtu_beside_the_tcp_settings(lab, tmp_path):
    """The MTU sets TCP's segment, so the hosts' facts carry it: set with `ip link`, read back
    by the agent and by `ip link show` (the independent reader)."""
    ns = lab.hosts[0].name

    def shown_mtu() -> int:
        argv = ["ip", "-n", ns, "-j", "link", "show", "dev", LAB_IFNAME]
        shown = subprocess.run(argv, capture_output=True, text=True, check=True)
        return json.loads(shown.stdout)[0]["mtu"]

    before = shown_mtu()
    set_mtu = ["ip", "-n", ns, "link", "set", "dev", LAB_IFNAME, "mtu"]
    try:
        subprocess.run([*set_mtu, "9001"], check=True)
        [shown] = agent(ns, tmp_path, tcp_request("tcp-show"))
        assert shown["mtu"] == shown_mtu() == 9001
    finally:
        subprocess.run([*set_mtu, str(before)], check=True)
    [shown] = agent(ns, tmp_path, tcp_request("tcp-show"))
    assert shown["mtu"] == shown_mtu() == before


@root_only
@pytest.mark.parametrize(("mtu", "mss"), [(1500, 1448), (9001, 8949)])
def test_the_probe_reads_the_segment_its_paths_mtu_gives(lab, mtu, mss):
    """MSS = MTU − 20 (IPv4) − 20 (TCP) − 12 (timestamps): 1,500 − 52 = 1,448 and
    9,001 − 52 = 8,949, as the probe reads it on the namespace's loopback set to that MTU."""
    ns = lab.hosts[0].name
    set_mtu = ["ip", "-n", ns, "link", "set", "dev", "lo", "mtu"]
    script = (
        "import threading\nfrom netem.probe import measure_rtt, open_server, serve_on\n"
        "server = open_server('127.0.0.1', 0)\nport = server.getsockname()[1]\n"
        "threading.Thread(target=serve_on, args=(server, 20, 0), daemon=True).start()\n"
        "print(measure_rtt('127.0.0.1', port, count=3)['mss_bytes'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        subprocess.run([*set_mtu, str(mtu)], check=True)
        argv = in_netns(ns, [sys.executable, "-c", script])
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    finally:
        subprocess.run([*set_mtu, "65536"], check=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == mss


@root_only
def test_lease_expiry_restores(lab, tmp_path):
    ns = lab.hosts[0].name
    before = as_read(ns)
    request = tcp_request("tcp-apply", tcp=PRESETS["tuned"].model_dump(), lease_s=0.5)
    try:
        [applied] = agent(ns, tmp_path, request, expire_after_s=0.6)
        assert applied["ok"] and applied["lease_until"] is not None
        assert as_read(ns) == before, "the dead-man revert did not restore the settings"
        assert not (tmp_path / "host.tcp").exists()
    finally:
        agent(ns, tmp_path, tcp_request("tcp-reset"))


@root_only
def test_another_owner_is_refused(lab, tmp_path):
    ns = lab.hosts[0].name
    settings = TcpSettings(slow_start_after_idle=False).model_dump()
    try:
        first, second, renewed = agent(
            ns,
            tmp_path,
            tcp_request("tcp-apply", tcp=settings, owner="first", lease_s=60),
            tcp_request("tcp-apply", tcp=settings, owner="second", lease_s=60),
            tcp_request("tcp-renew", owner="first", lease_s=60),
        )
        assert first["ok"] and renewed["ok"], (first, renewed)
        assert not second["ok"] and second["error_kind"] == "locked", second
    finally:
        agent(ns, tmp_path, tcp_request("tcp-reset", force=True))


@root_only
def test_unknown_congestion_control_is_one_line_and_changes_nothing(lab, tmp_path):
    ns = lab.hosts[0].name
    before = as_read(ns)
    settings = {"congestion_control": "nosuchcc", "slow_start_after_idle": False}
    [answer] = agent(ns, tmp_path, tcp_request("tcp-apply", tcp=settings))
    assert not answer["ok"] and answer["error_kind"] == "tcp"
    assert "nosuchcc is not available on this kernel (available:" in answer["error"]
    assert "\n" not in answer["error"]
    assert as_read(ns) == before
    assert not (tmp_path / "host.tcp").exists()


def test_presets_are_complete():
    for settings in PRESETS.values():
        assert None not in settings.model_dump().values()
    assert PRESETS["ubuntu-2022"].rmem[2] == 6291456 and PRESETS["tuned"].rmem[2] == 2**28


def test_matrix_tcp_axis_keeps_old_cell_ids(tmp_path):
    plain, with_tcp = tmp_path / "plain.toml", tmp_path / "tcp.toml"
    plain.write_text(GOOD_MATRIX)
    with_tcp.write_text(GOOD_MATRIX + 'tcp = ["host", "tuned", "big"]\n[tcp.big]\ninitcwnd = 20\n')
    old = [cell.cell_id for cell in load_matrix(plain).cells()]
    spec = load_matrix(with_tcp)
    ids = [cell.cell_id for cell in spec.cells()]
    assert old[0] == "default|dp1|mb1|gpipe|ps|r0"
    assert set(old) < set(ids) and len(ids) == 3 * len(old)
    assert "200mbit|tcp=tuned|dp2|mb1|gpipe|ps|r0" in ids
    assert spec.tcp == {HOST: None, "tuned": PRESETS["tuned"], "big": TcpSettings(initcwnd=20)}
