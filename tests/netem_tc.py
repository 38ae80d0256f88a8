"""Read tc state with the `tc` command: the independent reader the netem tests compare against.

iproute2 6.1 prints no JSON for HTB classes and repeats the "match" key in u32 filter JSON,
so classes and filters are read from the text output.
"""

from __future__ import annotations

import json
import re
import subprocess

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def _tc(ns: str, *args: str) -> str:
    argv = ["tc", "-n", ns, *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def rate_bps(text: str) -> int:
    """tc's printed rate ("1Gbit", "100Mbit", "500Kbit") in bit/s."""
    match = re.fullmatch(r"([0-9.]+)([KMGT]?)bit", text)
    assert match, text
    return round(float(match[1]) * _UNITS[match[2].lower()])


def qdiscs(ns: str, dev: str) -> list[dict]:
    """`tc -j qdisc show` (netem and htb options are complete there)."""
    return json.loads(_tc(ns, "-j", "qdisc", "show", "dev", dev) or "[]")


def classes(ns: str, dev: str) -> dict[str, tuple[int, int]]:
    """{classid: (rate, ceil) in bit/s} of the HTB classes."""
    out = {}
    for line in _tc(ns, "class", "show", "dev", dev).splitlines():
        match = re.match(r"class htb (\S+) .*\brate (\S+) ceil (\S+)", line)
        if match:
            out[match[1]] = (rate_bps(match[2]), rate_bps(match[3]))
    return out


def filters(ns: str, dev: str) -> list[tuple[int, str, dict[int, tuple[int, int]]]]:
    """u32 filters as (pref, flowid, {byte offset: (value, mask)}), sorted."""
    out = []
    current = None
    for line in _tc(ns, "filter", "show", "dev", dev).splitlines():
        head = re.match(r"filter .*\bpref (\d+) u32 .*flowid (\S+)", line)
        if head:
            current = (int(head[1]), head[2], {})
            out.append(current)
            continue
        key = re.match(r"\s+match ([0-9a-f]{8})/([0-9a-f]{8}) at (\d+)", line)
        if key and current is not None:
            value, mask, offset = int(key[1], 16), int(key[2], 16), int(key[3])
            for i in range(4):
                byte_mask = (mask >> (24 - 8 * i)) & 0xFF
                if byte_mask:
                    current[2][offset + i] = ((value >> (24 - 8 * i)) & 0xFF, byte_mask)
    return sorted(out, key=lambda f: (f[0], f[1], sorted(f[2].items())))


def class_bytes(ns: str, dev: str) -> dict[str, int]:
    """{classid: bytes sent} from `tc -s class show`."""
    out, current = {}, None
    for line in _tc(ns, "-s", "class", "show", "dev", dev).splitlines():
        head = re.match(r"class htb (\S+) ", line)
        if head:
            current = head[1]
        sent = re.match(r"\s+Sent (\d+) bytes", line)
        if sent and current is not None:
            out[current] = int(sent[1])
    return out
