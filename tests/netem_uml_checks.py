"""Run inside the user-mode Linux guest by test_netem_uml.py: real netem, one boot, many checks.

Usage (in the guest): python tests/netem_uml_checks.py OUT.json
Builds a 3-namespace lab, shapes it through netem.shaper, reads the kernel back (pyroute2 and
`tc -j` as an independent reader), measures RTT and throughput with netem.probe, resets,
and writes everything it saw to OUT.json for the test to judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback

import netem_tc
from labnet import LAB_IFNAME, LabHost, in_netns, namespaces_down, namespaces_up

from inventory.ports import wait_listening
from netem import shaper
from netem.pairs import pair_matrix_from_data
from netem.profile import parse_profile
from netem.tree import tree_for_profile, tree_for_routes

PROBE_PORT = 5399
SSH_PORT = 22


def probe(src: LabHost, dst: LabHost, port: int = PROBE_PORT, seconds: float = 0) -> dict:
    argv = [sys.executable, "-m", "netem.probe", "measure", "--to", dst.address]
    argv += ["--port", str(port), "--count", "30", "--seconds", str(seconds)]
    out = subprocess.run(in_netns(src.name, argv), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"probe {src.name} -> {dst.name}:{port} failed: {out.stderr[-800:]}")
    return json.loads(out.stdout)


def start_servers(hosts: tuple[LabHost, ...]) -> None:
    for host in hosts:
        for port in (PROBE_PORT, SSH_PORT):
            argv = [sys.executable, "-m", "netem.probe", "serve", "--detach"]
            argv += ["--port", str(port), "--for", "600", "--warmup", "1"]
            subprocess.run(in_netns(host.name, argv), check=True, capture_output=True)
    for host in hosts:
        for port in (PROBE_PORT, SSH_PORT):
            wait_listening(host.address, port)


def state(ns: str, tree) -> dict:
    """What the kernel holds, by pyroute2 and by tc, next to what was asked for."""
    actual = shaper.read_tree(LAB_IFNAME, ns)
    return {
        "matches": actual == shaper.normalized(tree),
        "netem": [q for q in netem_tc.qdiscs(ns, LAB_IFNAME) if q["kind"] == "netem"],
        "classes": netem_tc.classes(ns, LAB_IFNAME),
        "filters": [[p, f, sorted(b.items())] for p, f, b in netem_tc.filters(ns, LAB_IFNAME)],
    }


def checks(hosts: tuple[LabHost, ...], out: dict) -> None:
    h0, h1, h2 = hosts
    snaps = {h.name: shaper.snapshot(LAB_IFNAME, h.name) for h in hosts}
    out["qdisc_before"] = {h.name: netem_tc.qdiscs(h.name, LAB_IFNAME) for h in hosts}
    start_servers(hosts)
    probe(h0, h1)  # the first connect inside the guest is slow; keep it out of the figures
    out["base"] = probe(h0, h1, seconds=2)

    profile = parse_profile("10ms/100mbit")
    tree = tree_for_profile(profile)
    out["profile"] = {"limit": profile.queue_limit}
    out["apply"] = [shaper.apply(LAB_IFNAME, tree, h.name) for h in (h0, h1)]
    out["apply_again"] = shaper.apply(LAB_IFNAME, tree, h0.name)
    out["shaped"] = state(h0.name, tree)
    out["shaped_probe"] = probe(h0, h1, seconds=3)
    out["ssh_probe"] = probe(h0, h1, port=SSH_PORT)
    out["drops"] = shaper.read_stats(LAB_IFNAME, h0.name)

    switched = tree_for_profile(parse_profile("5ms/200mbit/jitter=1ms/loss=0.5%"))
    out["switch"] = shaper.apply(LAB_IFNAME, switched, h0.name)
    out["switched"] = state(h0.name, switched)
    for host in (h0, h1):
        shaper.restore(snaps[host.name], host.name)

    lab_hosts = [
        LabHost(name=h.name, address=h.address, labels={"region": region})
        for h, region in zip(hosts, ("west", "west", "east"), strict=True)
    ]
    matrix = pair_matrix_from_data(
        {
            "by": "region",
            "link": [
                {"src": "west", "dst": "east", "delay": "30ms", "rate": "50mbit"},
                {"src": "west", "dst": "west", "delay": "5ms"},
            ],
        },
        "uml-matrix",
    )
    rows = matrix.resolve(lab_hosts)
    trees = {name: tree_for_routes(row) for name, row in rows.items()}
    out["matrix_apply"] = {name: shaper.apply(LAB_IFNAME, t, name) for name, t in trees.items()}
    out["matrix_state"] = {name: state(name, t) for name, t in trees.items()}
    out["matrix_probe"] = {
        "h0_h1": probe(h0, h1),
        "h0_h2": probe(h0, h2),
        "h2_h1": probe(h2, h1),
        "h0_h2_ssh": probe(h0, h2, port=SSH_PORT),
    }
    for host in hosts:
        shaper.restore(snaps[host.name], host.name)
    shaper.restore(snaps[h0.name], h0.name)
    out["qdisc_after"] = {h.name: netem_tc.qdiscs(h.name, LAB_IFNAME) for h in hosts}
    out["after_reset_probe"] = probe(h0, h1)


def main() -> int:
    out: dict = {"ok": False}
    lab = namespaces_up(3, "wlu", "198.19.200")
    try:
        checks(lab.hosts, out)
        out["ok"] = True
    except Exception:  # the test prints this; the guest must still halt
        out["error"] = traceback.format_exc()
    finally:
        namespaces_down(lab)
        with open(sys.argv[1], "w") as fh:
            json.dump(out, fh, indent=1)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
