"""A host's TCP settings: the presets, reading them, setting them and putting them back.

What moves a large transfer over a long path besides the path itself: the congestion control,
the socket buffers' limits (`net.ipv4.tcp_rmem`/`tcp_wmem`, with `tcp_adv_win_scale`), whether
a connection idle longer than its RTO starts again from the initial window
(`tcp_slow_start_after_idle`), and that initial window (the routes' `initcwnd`). All of them
are per network namespace; they are read and written here in the caller's own namespace, the
sysctls through /proc/sys and `initcwnd` through netlink on the routes out of the interface.
Beside them it reads the interface's MTU, which sets TCP's segment (`interface_mtu`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

SYSCTLS = Path("/proc/sys/net/ipv4")
HOST = "host"
"""The setting that leaves the hosts' TCP as it is."""
KERNEL_INITCWND = 10
"""The initial window of a route that sets none."""
_SYSCTL_OF = {
    "congestion_control": "tcp_congestion_control",
    "rmem": "tcp_rmem",
    "wmem": "tcp_wmem",
    "adv_win_scale": "tcp_adv_win_scale",
    "slow_start_after_idle": "tcp_slow_start_after_idle",
}
_MAIN_TABLE = 254
_UNICAST = 1
_ONLINK = 4  # the one route flag a change passes on
_ROUTE_KEYS = ("dst_len", "tos", "proto", "scope", "type", "flags")
_ROUTE_ATTRS = ("RTA_GATEWAY", "RTA_PREFSRC", "RTA_PRIORITY")
Buffers = tuple[StrictInt, StrictInt, StrictInt]


class TcpError(Exception):
    """A setting this kernel cannot have or refused; one line."""


class TcpSettings(BaseModel):
    """One host's TCP settings; a field left out is left as the host has it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    congestion_control: str | None = Field(None, pattern=r"^[a-z0-9_]{1,15}$")
    rmem: Buffers | None = None
    """net.ipv4.tcp_rmem: the receive buffer's minimum, default and maximum, in bytes."""
    wmem: Buffers | None = None
    """net.ipv4.tcp_wmem: the send buffer's minimum, default and maximum, in bytes."""
    adv_win_scale: int | None = Field(None, ge=-31, le=31, strict=True)
    slow_start_after_idle: StrictBool | None = None
    initcwnd: int | None = Field(None, ge=1, le=1000, strict=True)
    """The initial congestion window (segments) of the routes out of the fleet interface;
    read back as the smallest of them, KERNEL_INITCWND where a route sets none."""

    @field_validator("rmem", "wmem")
    @classmethod
    def _ordered(cls, values: Buffers | None) -> Buffers | None:
        if values is not None and not 1 <= values[0] <= values[1] <= values[2] < 2**31:
            raise ValueError("must be [min, default, max] with min <= default <= max < 2^31")
        return values


PRESETS = {
    # Ubuntu 22.04's kernel defaults.
    "ubuntu-2022": TcpSettings(
        congestion_control="cubic",
        rmem=(4096, 131072, 6291456),
        wmem=(4096, 16384, 4194304),
        adv_win_scale=1,
        slow_start_after_idle=True,
        initcwnd=10,
    ),
    # The same with buffers for long fat paths and no slow start after idle.
    "tuned": TcpSettings(
        congestion_control="cubic",
        rmem=(4096, 131072, 256 * 2**20),
        wmem=(4096, 16384, 256 * 2**20),
        adv_win_scale=1,
        slow_start_after_idle=False,
        initcwnd=10,
    ),
}


# -- reading ---------------------------------------------------------------------------------
def _sysctl(name: str) -> str:
    return (SYSCTLS / name).read_text().strip()


def _parse(field: str, text: str) -> Any:
    if field == "congestion_control":
        return text
    if field in ("rmem", "wmem"):
        return tuple(int(value) for value in text.split())
    if field == "slow_start_after_idle":
        return text != "0"
    return int(text)


def congestion_controls() -> dict[str, Any]:
    """The congestion controls this kernel has (`available`), may load (`loadable`), and lets
    a namespace other than the machine's own choose (`allowed`); and whether this is the
    machine's own namespace (`machines_namespace`), where root may choose any of them."""
    modules = Path("/lib/modules", os.uname().release, "kernel/net/ipv4")
    loadable = sorted(
        path.name.split(".")[0].removeprefix("tcp_") for path in modules.glob("tcp_*.ko*")
    )
    return {
        "available": _sysctl("tcp_available_congestion_control").split(),
        "allowed": _sysctl("tcp_allowed_congestion_control").split(),
        "loadable": loadable,
        "machines_namespace": in_machines_namespace(),
    }


def in_machines_namespace() -> bool:
    """Whether this is the machine's own network namespace: the kernel lets only that one
    write net.ipv4.tcp_allowed_congestion_control (mode 0644 there, 0444 in every other)."""
    return bool((SYSCTLS / "tcp_allowed_congestion_control").stat().st_mode & 0o200)


def _routes(ipr: IPRoute, ifname: str) -> list[dict[str, Any]]:
    """The main table's IPv4 routes out of `ifname`, each as a `route("change")` request with
    its metrics (a change replaces a route's metrics whole)."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TcpError(f"no interface {ifname}")
    requests = []
    for route in ipr.route("dump", family=2, table=_MAIN_TABLE, oif=found[0]):
        if route["type"] != _UNICAST:
            continue
        request = {key: route[key] for key in _ROUTE_KEYS}
        request["flags"] &= _ONLINK
        request["dst"] = route.get("RTA_DST") or "0.0.0.0"
        request |= {a[4:].lower(): route.get(a) for a in _ROUTE_ATTRS if route.get(a) is not None}
        metrics = route.get("RTA_METRICS")
        attrs = metrics["attrs"] if metrics else []
        request["metrics"] = {name[5:].lower(): value for name, value in attrs}
        requests.append({**request, "table": _MAIN_TABLE, "oif": found[0]})
    return requests


def read(ifname: str) -> TcpSettings:
    """This namespace's TCP settings, `initcwnd` from the routes out of `ifname`."""
    values = {field: _parse(field, _sysctl(name)) for field, name in _SYSCTL_OF.items()}
    with IPRoute() as ipr:
        windows = [r["metrics"].get("initcwnd", KERNEL_INITCWND) for r in _routes(ipr, ifname)]
    return TcpSettings(**values, initcwnd=min(windows) if windows else None)


def interface_mtu(ifname: str) -> int:
    """The MTU of `ifname` in this namespace (netlink's IFLA_MTU, as `ip link` shows it)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TcpError(f"no interface {ifname}")
        return int(ipr.get_links(found[0])[0].get_attr("IFLA_MTU"))


# -- writing ---------------------------------------------------------------------------------
def _write(name: str, text: str) -> None:
    descriptor = os.open(SYSCTLS / name, os.O_WRONLY)
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


def _refusal(field: str, text: str, error: OSError) -> TcpError:
    if field != "congestion_control":
        return TcpError(f"the kernel refused net.ipv4.{_SYSCTL_OF[field]} = {text}: {error}")
    known = congestion_controls()
    if error.errno == errno.EPERM:
        return TcpError(
            f"congestion control {text} is on this kernel but not allowed in this network "
            f"namespace (net.ipv4.tcp_allowed_congestion_control = {' '.join(known['allowed'])}"
            ", which only the machine's own namespace can change)"
        )
    return TcpError(
        f"congestion control {text} is not available on this kernel "
        f"(available: {' '.join(known['available'])}; loadable: "
        f"{' '.join(known['loadable']) or 'none'})"
    )


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(part) for part in value)
    return str(int(value)) if isinstance(value, bool) else str(value)


def apply(ifname: str, settings: TcpSettings, originals: dict[str, Any]) -> None:
    """Set what `settings` gives, keeping in `originals` (as it goes, so a failure midway can be
    put back) what each changed setting was, unless it holds that already."""
    changed = originals.setdefault("sysctls", {})
    for field, name in _SYSCTL_OF.items():
        value = getattr(settings, field)
        if value is None:
            continue
        text, before = _text(value), _sysctl(name)
        if _parse(field, before) == value:
            continue
        try:
            _write(name, text)
        except OSError as error:
            raise _refusal(field, text, error) from None
        changed.setdefault(name, before)
    if settings.initcwnd is None:
        return
    routes = originals.setdefault("routes", [])
    with IPRoute() as ipr:
        for route in _routes(ipr, ifname):
            if route["metrics"].get("initcwnd") == settings.initcwnd:
                continue
            metrics = {**route["metrics"], "initcwnd": settings.initcwnd}
            try:
                ipr.route("change", **{**route, "metrics": metrics})
            except NetlinkError as error:
                raise TcpError(f"initcwnd on the route to {route['dst']}: {error}") from None
            if not any(_same_route(route, saved) for saved in routes):
                routes.append(route)


def _same_route(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(key) == b.get(key) for key in ("dst", "dst_len", "tos", "priority"))


def restore(originals: dict[str, Any]) -> None:
    """Put back what `apply` changed (a route that is gone stays gone)."""
    try:
        for name, text in originals.get("sysctls", {}).items():
            _write(name, text)
        with IPRoute() as ipr:
            for route in originals.get("routes", []):
                try:
                    ipr.route("change", **route)
                except NetlinkError as error:
                    if error.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                        raise
    except (OSError, NetlinkError) as error:
        raise TcpError(f"restoring the TCP settings: {error}") from None
