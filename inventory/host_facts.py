"""A stand-alone script run on each host (stdlib only) that reports what the host can do.

It is sent as `python -c SOURCE PEER INTERFACE` so nothing has to be installed on the host first.
Kernel support for a qdisc kind is tested for real: the script adds one to the loopback device of a
throwaway network namespace, which loads the module if it is loadable and touches nothing else.
"""

import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys

QDISC_TRIALS = {
    "netem": ["delay", "1ms"],
    "htb": ["default", "1"],
    "tbf": ["rate", "1mbit", "burst", "10kb", "latency", "10ms"],
}


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def interface_towards(peer):
    words = subprocess.run(
        ["ip", "-o", "route", "get", peer], capture_output=True, text=True
    ).stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else None


def module_present(kind):
    release = platform.release()
    if os.path.isdir(f"/sys/module/sch_{kind}"):
        return True
    builtin = f"/lib/modules/{release}/modules.builtin"
    if os.path.isfile(builtin) and f"sch_{kind}.ko" in open(builtin).read():
        return True
    return any(
        os.path.exists(f"/lib/modules/{release}/kernel/net/sched/sch_{kind}.ko{ext}")
        for ext in ("", ".xz", ".zst", ".gz")
    )


def qdisc_supported(kind):
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("tc"):
        trial = ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", kind]
        return subprocess.run(trial + QDISC_TRIALS[kind], capture_output=True).returncode == 0
    return module_present(kind)


def main():
    peer, configured = sys.argv[1], sys.argv[2]
    interface = configured or interface_towards(peer)
    facts = {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "pyroute2": package_version("pyroute2"),
        "interface": interface,
        "interface_exists": bool(interface) and os.path.isdir(f"/sys/class/net/{interface}"),
        "cpus": os.cpu_count(),
    }
    facts.update({kind: qdisc_supported(kind) for kind in QDISC_TRIALS})
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
