"""Put a Tree on an interface, read it back, and restore what was there before: pyroute2 only."""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import tcmsg
from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

from netem.profile import LINE_RATE_BPS, Profile
from netem.tree import (
    ETH_P_IP,
    ROOT_HANDLE,
    UNSHAPED_MINOR,
    Filter,
    Match,
    ShapedClass,
    Tree,
    requests,
)

_U32_MAX = 2**32 - 1
_ENOENT, _EINVAL = 2, 22
_INGRESS_PARENT = 0xFFFFFFF1
_CLASSFUL = {"htb", "hfsc", "drr", "qfq", "ets", "cbq"}

NETEM_MISSING = (
    "this kernel has no sch_netem, so delay, jitter, loss, duplication and reordering cannot be "
    "applied here (rate-only profiles such as `1gbit` still work). Load it with "
    "`modprobe sch_netem` (on Ubuntu it is in linux-modules-extra-$(uname -r), on Fedora in "
    "kernel-modules-extra), or run the local fleet inside the user-mode Linux kernel "
    "(experiments.lab.guest)"
)


class ShaperError(RuntimeError):
    """The kernel refused, or the interface holds something wanlab cannot restore."""


class NetemUnavailable(ShaperError):
    """The profile needs sch_netem and this kernel does not have it."""


class _raw_tcmsg(nlmsg):
    """A tc message whose options travel as raw bytes: replays a qdisc exactly as dumped."""

    fields = tcmsg.fields
    nla_map = (("TCA_UNSPEC", "none"), ("TCA_KIND", "asciiz"), ("TCA_OPTIONS", "cdata"))


_own_namespace: list[IPRoute] = []
"""The process's one netlink socket in its own namespace: opening one costs more than most
requests, and a persistent agent makes thousands of them."""


@contextmanager
def _route(netns: str | None):
    if not netns:
        if not _own_namespace:
            _own_namespace.append(IPRoute())
        yield _own_namespace[0]
        return
    ipr = IPRoute(netns=netns, flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    if ipr is (_own_namespace[0] if _own_namespace else None):
        try:  # one ioctl, where a netlink lookup dumps every link
            return socket.if_nametoindex(ifname)
        except OSError:
            raise ShaperError(f"no interface {ifname!r}") from None
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise ShaperError(f"no interface {ifname!r}")
    return found[0]


def netem_available() -> bool:
    """True when sch_netem is loaded, built in, or loadable (tries `modprobe sch_netem`)."""
    if Path("/sys/module/sch_netem").exists():
        return True
    builtin = Path("/lib/modules") / platform.release() / "modules.builtin"
    if builtin.exists() and "/sch_netem.ko" in builtin.read_text():
        return True
    modprobe = shutil.which("modprobe")
    if modprobe:
        subprocess.run([modprobe, "-q", "sch_netem"], capture_output=True, check=False)
    return Path("/sys/module/sch_netem").exists()


def _root(ipr: IPRoute, index: int) -> Any | None:
    return next((q for q in ipr.get_qdiscs(index) if q["parent"] == TC_H_ROOT), None)


def _attr(msg: Any, name: str) -> Any:
    return next((value for key, value in msg["attrs"] if key == name), None)


def _u32_byte_map(sel: Any) -> dict[int, tuple[int, int]]:
    """{packet offset: (value byte, mask byte)} of a u32 filter's selector.

    pyroute2 0.9.7 decodes u32 keys 4 bytes off, so they are read from the raw attribute: its
    4-byte netlink header (length, type), then the kernel's `struct tc_u32_sel` (flags,
    offshift, nkeys at byte 2, then offmask, off, offoff, hoff, hmask: 16 bytes), then
    `nkeys` keys of 16 bytes each (`struct tc_u32_key`: mask and value big-endian, the packet
    offset a host-order int, offmask). Hence nkeys at 4 + 2 and key k at 4 + 16 + 16 k.
    """
    raw = bytes(sel.data[sel.offset : sel.offset + sel.length])
    nkeys = raw[6]
    out: dict[int, tuple[int, int]] = {}
    for k in range(nkeys):
        key = raw[20 + 16 * k : 36 + 16 * k]
        mask, value = int.from_bytes(key[0:4], "big"), int.from_bytes(key[4:8], "big")
        offset = int.from_bytes(key[8:12], "little", signed=True)
        for i in range(4):
            byte_mask = (mask >> (24 - 8 * i)) & 0xFF
            if byte_mask:
                out[offset + i] = ((value >> (24 - 8 * i)) & 0xFF, byte_mask)
    return out


def _netem_shape(leaf: Any, rate_bps: int | None) -> Profile:
    opts = leaf.get_attr("TCA_OPTIONS")
    reorder = _attr(opts, "TCA_NETEM_REORDER")
    return Profile(
        delay_ms=round(opts["delay"] / tick_in_usec) / 1000,
        jitter_ms=round(opts["jitter"] / tick_in_usec) / 1000,
        loss_pct=opts["loss"] * 100 / _U32_MAX,
        duplicate_pct=opts["duplicate"] * 100 / _U32_MAX,
        reorder_pct=0 if reorder is None else reorder["prob_reorder"] * 100 / _U32_MAX,
        rate_bps=rate_bps,
        limit=opts["limit"],
    )


def _read(ipr: IPRoute, index: int) -> Tree | None:
    qdiscs = ipr.get_qdiscs(index)
    root = next((q for q in qdiscs if q["parent"] == TC_H_ROOT), None)
    if root is None or root.get_attr("TCA_KIND") != "htb" or root["handle"] != ROOT_HANDLE:
        return None
    default = root.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_INIT")["defcls"]
    rates: dict[int, int] = {}
    for cls in ipr.get_classes(index):
        if cls["handle"] >> 16 == ROOT_HANDLE >> 16:
            opts = cls.get_attr("TCA_OPTIONS")
            rate = opts.get_attr("TCA_HTB_RATE64") or opts.get_attr("TCA_HTB_PARMS")["rate"]
            rates[cls["handle"] & 0xFFFF] = rate * 8
    leaves = {
        q["parent"] & 0xFFFF: q
        for q in qdiscs
        if q["parent"] >> 16 == 1 and q["parent"] != TC_H_ROOT and q.get_attr("TCA_KIND") == "netem"
    }
    classes = []
    for minor, rate in sorted(rates.items()):
        if minor == UNSHAPED_MINOR:
            continue
        rate_bps = None if rate == LINE_RATE_BPS else rate
        shape = (
            _netem_shape(leaves[minor], rate_bps) if minor in leaves else Profile(rate_bps=rate_bps)
        )
        classes.append(ShapedClass(minor=minor, shape=shape))
    filters = []
    for flt in ipr.get_filters(index, parent=ROOT_HANDLE):
        opts = flt.get_attr("TCA_OPTIONS")
        sel = None if opts is None else _attr(opts, "TCA_U32_SEL")
        if sel is None or socket.ntohs(flt["info"] & 0xFFFF) != ETH_P_IP:
            continue
        match = Match.from_byte_map(_u32_byte_map(sel)) or Match()
        minor = (_attr(opts, "TCA_U32_CLASSID") or 0) & 0xFFFF
        filters.append(Filter(prio=flt["info"] >> 16, match=match, minor=minor))
    return Tree(
        default_minor=default,
        unshaped_class=rates.get(UNSHAPED_MINOR) == LINE_RATE_BPS,
        classes=tuple(classes),
        filters=tuple(sorted(filters, key=_filter_order)),
    )


def _filter_order(flt: Filter) -> tuple:
    return (flt.prio, flt.match.dst or "", flt.match.tcp_sport or 0, flt.match.tcp_dport or 0)


def normalized(tree: Tree) -> Tree:
    """The tree with filters in the order the kernel lists them, for comparing with read_tree."""
    return tree.model_copy(update={"filters": tuple(sorted(tree.filters, key=_filter_order))})


def read_tree(ifname: str, netns: str | None = None) -> Tree | None:
    """The wanlab tree the kernel holds on `ifname`, or None when the root is not wanlab's HTB."""
    with _route(netns) as ipr:
        return _read(ipr, _index(ipr, ifname))


def read_stats(ifname: str, netns: str | None = None) -> dict[str, dict[str, int]]:
    """Per-qdisc counters on `ifname`: {"root" or "1:20"...: {packets, bytes, drops, backlog}}."""
    out = {}
    with _route(netns) as ipr:
        for q in ipr.get_qdiscs(_index(ipr, ifname)):
            if q["parent"] == _INGRESS_PARENT:
                continue
            stats = q.get_attr("TCA_STATS") or {}
            where = "root" if q["parent"] == TC_H_ROOT else f"1:{q['parent'] & 0xFFFF:x}"
            out[where] = {
                "kind": q.get_attr("TCA_KIND"),
                "packets": stats.get("packets", 0),
                "bytes": stats.get("bytes", 0),
                "drops": stats.get("drops", 0),
                "backlog": stats.get("backlog", 0),
            }
    return out


def snapshot(ifname: str, netns: str | None = None) -> dict[str, Any]:
    """What the interface's egress holds now, as JSON-able data restore() can put back.

    A kernel default root (handle 0:) is restored by deleting whatever replaced it; a single
    user-set root qdisc is replayed from its raw options. A root with classes, child qdiscs or
    filters cannot be replayed faithfully, so it is refused before anything is touched.
    """
    with _route(netns) as ipr:
        index = _index(ipr, ifname)
        root = _root(ipr, index)
        if root is None or root["handle"] == 0:
            kind = None if root is None else root.get_attr("TCA_KIND")
            return {"interface": ifname, "kernel_default": True, "kind": kind}
        kind, handle = root.get_attr("TCA_KIND"), root["handle"]
        children = [
            q
            for q in ipr.get_qdiscs(index)
            if q["parent"] not in (TC_H_ROOT, _INGRESS_PARENT) and q["handle"] != 0
        ]
        user_classes = kind in _CLASSFUL and ipr.get_classes(index)
        if children or user_classes or ipr.get_filters(index, parent=handle):
            raise ShaperError(
                f"{ifname} carries a tc tree under {handle >> 16:x}: ({kind} with classes, "
                "child qdiscs or filters) that wanlab could not put back; remove it first "
                f"(tc qdisc del dev {ifname} root)"
            )
        options = next((nla for nla in root["attrs"] if nla[0] == "TCA_OPTIONS"), None)
        raw = b""
        if options is not None:
            value = options[1]
            raw = bytes(value.data[value.offset + 4 : value.offset + value.length])
        return {
            "interface": ifname,
            "kernel_default": False,
            "kind": kind,
            "handle": handle,
            "options": raw.hex(),
        }


def _delete_root(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("del", index=index, parent=TC_H_ROOT)
    except NetlinkError as err:
        if err.code not in (_ENOENT, _EINVAL):
            raise


def restore(snap: dict[str, Any], netns: str | None = None) -> None:
    """Put back what snapshot() saw; safe to run any number of times."""
    with _route(netns) as ipr:
        index = _index(ipr, snap["interface"])
        root = _root(ipr, index)
        if snap["kernel_default"]:
            if root is not None and root["handle"] != 0:
                _delete_root(ipr, index)
            return
        if root is not None and root["handle"] == snap["handle"]:
            if root.get_attr("TCA_KIND") == snap["kind"]:
                return
        if root is not None and root["handle"] != 0:
            _delete_root(ipr, index)
        msg = _raw_tcmsg()
        msg["index"], msg["handle"], msg["parent"] = index, snap["handle"], TC_H_ROOT
        msg["attrs"] = [["TCA_KIND", snap["kind"]], ["TCA_OPTIONS", bytes.fromhex(snap["options"])]]
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        ipr.status.setdefault("nlm_generator", False)  # pyroute2 0.9.7 reads it unset here
        ipr.nlm_request(msg, msg_type=RTM_NEWQDISC, msg_flags=flags)


def apply(ifname: str, tree: Tree, netns: str | None = None) -> str:
    """Make `ifname`'s egress hold `tree`; returns "unchanged", "updated" or "built".

    Re-running with the same tree changes nothing; another tree with the same root is updated
    in place with replace, so traffic keeps flowing; otherwise the root is rebuilt.
    """
    if tree.needs_netem and not netem_available():
        raise NetemUnavailable(NETEM_MISSING)
    with _route(netns) as ipr:
        index = _index(ipr, ifname)
        current = _read(ipr, index)
        if current == normalized(tree):
            return "unchanged"
        in_place = current is not None and current.default_minor == tree.default_minor
        if not in_place:
            root = _root(ipr, index)
            if root is not None and root["handle"] != 0:
                _delete_root(ipr, index)
        else:
            ipr.tc("del-filter", index=index, parent=ROOT_HANDLE)
        steps = requests(tree)[1:] if in_place else requests(tree)  # HTB has no change op
        try:
            for command, kind, kwargs in steps:
                ipr.tc(command, kind, index, **kwargs)
        except NetlinkError as err:
            if err.code == _ENOENT and tree.needs_netem:
                raise NetemUnavailable(NETEM_MISSING) from None
            raise ShaperError(f"the kernel refused the tree on {ifname}: {err}") from None
        if in_place:
            _drop_stale(ipr, index, current, tree)
        return "updated" if in_place else "built"


def _drop_stale(ipr: IPRoute, index: int, old: Tree, new: Tree) -> None:
    wanted = {cls.minor: cls.shape for cls in new.classes}
    if new.unshaped_class:
        wanted[UNSHAPED_MINOR] = None
    old_minors = {cls.minor for cls in old.classes} | (
        {UNSHAPED_MINOR} if old.unshaped_class else set()
    )
    for minor in sorted(old_minors - set(wanted)):
        ipr.tc("del-class", index=index, handle=ROOT_HANDLE | minor, parent=ROOT_HANDLE)
    for cls in old.classes:
        shape = wanted.get(cls.minor)
        if cls.shape.needs_netem and shape is not None and not shape.needs_netem:
            ipr.tc("del", index=index, handle=cls.minor << 16, parent=ROOT_HANDLE | cls.minor)


def interface_for_default_route(netns: str | None = None) -> str:
    """The interface of the IPv4 default route, or the only non-loopback interface that is up."""
    with _route(netns) as ipr:
        for route in ipr.get_default_routes(family=2):
            oif = route.get_attr("RTA_OIF")
            if oif:
                return ipr.get_links(oif)[0].get_attr("IFLA_IFNAME")
        names = [
            link.get_attr("IFLA_IFNAME")
            for link in ipr.get_links()
            if link.get_attr("IFLA_IFNAME") != "lo" and link.get_attr("IFLA_OPERSTATE") == "UP"
        ]
    if len(names) == 1:
        return names[0]
    raise ShaperError(f"cannot tell which interface to shape ({', '.join(names) or 'none up'})")
