#!/usr/bin/env bash
# Install what wanlab needs on a fresh Debian machine, as root: system packages, the CPU build
# of torch, wanlab itself (editable, with the test tools), and a user-mode Linux kernel that
# boots on this CPU for the lab's delay node (`wanlab fleet kernel`). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

# g++ and the Python headers: DeepSpeed compiles its CPU ops when a job first loads them
packages=(openssh-server openssh-client iproute2 ethtool kmod user-mode-linux patchelf iperf3 procps util-linux chromium g++ python3-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
# torch first and pinned, so that resolving wanlab's own range never pulls a CUDA build.
if ! "$PYTHON" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
    "$PYTHON" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev,workloads]"
echo "wanlab installed: $(command -v wanlab)"
# The delay node's kernel: the packaged one panics on some CPUs (AMX), so fetch the newer one
# into wanlab's own folder and prove by a boot that it runs here.
wanlab fleet kernel
