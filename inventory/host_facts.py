"""A stand-alone script run on each host (stdlib only) that reports what the host can do.

It is sent as `python -c SOURCE PEER INTERFACE` so nothing has to be installed on the host first.
Kernel support for a qdisc kind is tested for real: the script adds one to the loopback device of a
throwaway network namespace, which loads the module if it is loadable and touches nothing else.
Its GPUs come from `nvidia-smi` and torch (torch is imported only on a host whose driver lists
GPUs). Its TCP settings are not read here: the host's agent reads them (netem.tcp), for
`inventory check` and for a run alike.
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


TORCH_GPU_PROBE = (
    "import json, torch; cuda = torch.cuda.is_available(); print(json.dumps({"
    "'torch_cuda': torch.version.cuda, 'torch_gpus': torch.cuda.device_count() if cuda else 0, "
    "'nccl': '.'.join(map(str, torch.cuda.nccl.version())) if cuda else None}))"
)


def parse_gpu_query(text):
    """The GPUs of `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,
    noheader,nounits` output: one dict per line (memory in MiB)."""
    gpus = []
    for line in text.strip().splitlines():
        name, memory, driver = (field.strip() for field in line.rsplit(",", 2))
        gpus.append({"model": name, "memory_mib": int(float(memory)), "driver": driver})
    return gpus


def parse_cuda_version(text):
    """The CUDA version the driver supports, from `nvidia-smi`'s banner ("CUDA Version: 12.4")."""
    words = text.replace("|", " ").split()
    for index, word in enumerate(words[:-2]):
        if word == "CUDA" and words[index + 1] == "Version:":
            return words[index + 2]
    return None


def gpu_facts(torch_installed):
    """The host's GPUs from `nvidia-smi` (model, memory, driver, CUDA) and torch (its CUDA and
    NCCL, and how many GPUs it sees); a count of 0 and why where there is no driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"count": 0, "why": "no nvidia-smi on the host"}
    query = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
    listed = subprocess.run([smi, *query], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        return {"count": 0, "why": f"nvidia-smi failed: {listed.stderr.strip()[:200]}"}
    gpus = parse_gpu_query(listed.stdout)
    banner = subprocess.run([smi], capture_output=True, text=True, timeout=60).stdout
    facts = {"count": len(gpus), "gpus": gpus, "cuda": parse_cuda_version(banner)}
    if torch_installed:
        probe = subprocess.run(
            [sys.executable, "-c", TORCH_GPU_PROBE], capture_output=True, text=True, timeout=300
        )
        if probe.returncode == 0:
            facts.update(json.loads(probe.stdout.strip().splitlines()[-1]))
    return facts


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
    facts["gpu"] = gpu_facts(facts["torch"] is not None)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
