"""Pydantic models of one host and of a fleet of hosts."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from inventory.errors import FieldProblem
from inventory.names import Name

# Matched whole (fullmatch): a `$` would also accept a trailing newline.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_INTERFACE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}")
_PATH = re.compile(r"[A-Za-z0-9_./~+-]{1,255}")


def normalized_address(text: str) -> str:
    """An address as one spelling: an IP address in its canonical form, a host name in lower
    case (DNS names are case-insensitive, so `LOCALHOST` is `localhost`)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower()


def is_valid_address(text: str) -> bool:
    """True for an IPv4/IPv6 address or a DNS host name (not an all-numeric pseudo-IP)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if not text or len(text) > 253 or all(label.isdigit() for label in labels):
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


def _address(address: str) -> str:
    if not is_valid_address(address):
        raise ValueError(f"{address!r} is neither an IP address nor a host name")
    return normalized_address(address)


def _user(user: str) -> str:
    if not _USER.fullmatch(user):
        raise ValueError(f"{user!r} is not a valid user name")
    return user


Address = Annotated[str, AfterValidator(_address)]
"""An IP address or DNS host name, in its one normalized spelling."""

UserName = Annotated[str, AfterValidator(_user)]
"""A login name: it reaches the SSH layer and remote commands."""

Port = Annotated[int, Field(ge=1, le=65535, strict=True)]


class JumpHost(BaseModel):
    """The host SSH passes through to reach a fleet host (one hop, as ProxyJump)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Address
    user: UserName = "root"
    port: Port = 22
    key_file: Path | None = None


class Host(BaseModel):
    """One machine of the fleet and everything needed to reach it over SSH."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    address: Address
    user: UserName = "root"
    port: Port = 22
    key_file: Path | None = None
    jump: JumpHost | None = None
    interface: str | None = None
    python: str = "python3"
    workdir: str = "/tmp/wanlab"
    labels: dict[str, str] = Field(default_factory=dict)
    slots: int = Field(1, ge=1, le=64, strict=True)
    """Ranks the host runs at once: one per GPU (an 8-GPU machine has 8)."""

    @field_validator("interface")
    @classmethod
    def _interface_is_valid(cls, interface: str | None) -> str | None:
        if interface is None:
            return None
        if not _INTERFACE.fullmatch(interface) or interface in (".", ".."):
            raise ValueError(f"{interface!r} is not a valid interface name (1-15 characters)")
        return interface

    @field_validator("python")
    @classmethod
    def _python_is_a_command(cls, python: str) -> str:
        if not _PATH.fullmatch(python):
            raise ValueError(f"{python!r} is not a command or path (letters, digits, _ . / ~ + -)")
        return python

    @field_validator("workdir")
    @classmethod
    def _workdir_is_a_folder_of_its_own(cls, workdir: str) -> str:
        parts = workdir.split("/")
        if not _PATH.fullmatch(workdir) or not workdir.startswith("/") or ".." in parts:
            raise ValueError(f"{workdir!r} must be an absolute path without '..'")
        if workdir.rstrip("/") == "":
            raise ValueError("must not be / (the code is unpacked there)")
        return workdir

    @field_validator("labels")
    @classmethod
    def _labels_are_simple(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            for text in (key, value):
                if not _LABEL.fullmatch(text):
                    raise ValueError(
                        f"{text!r}: label keys and values are 1-63 letters, digits, _ . : / -"
                    )
        return labels


class DelayNode(BaseModel):
    """A kernel that forwards between the hosts and shapes each host's egress on their behalf.

    Used where the hosts' own kernel has no netem (the local fleet on such a machine):
    `interfaces` maps each host name to the node's interface that carries that host's egress.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mailbox: Path
    interfaces: dict[str, str]

    @field_validator("interfaces")
    @classmethod
    def _interfaces_are_names(cls, interfaces: dict[str, str]) -> dict[str, str]:
        for name, interface in interfaces.items():
            if not _INTERFACE.fullmatch(interface):
                raise ValueError(f"{name}: {interface!r} is not a valid interface name")
        return interfaces


class Fleet(BaseModel):
    """A named set of hosts, how to verify their host keys, and where it was read from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = "fleet"
    hosts: list[Host] = Field(min_length=1)
    known_hosts: Path | None = None
    strict_host_keys: bool = Field(True, strict=True)
    connect_timeout: float = Field(default=10.0, gt=0, le=600, strict=True, allow_inf_nan=False)
    delay_node: DelayNode | None = None
    source: Path | None = None

    @model_validator(mode="after")
    def _names_and_addresses_unique(self) -> Fleet:
        for attribute in ("name", "address"):
            seen: dict[str, int] = {}
            for index, host in enumerate(self.hosts):
                value = getattr(host, attribute)
                key = (value, host.port) if attribute == "address" else value
                if key in seen:
                    first = seen[key]
                    raise FieldProblem(
                        ("hosts", index, attribute), f"{value!r} is already used by hosts[{first}]"
                    )
                seen[key] = index
        if self.delay_node is not None:
            unknown = sorted(set(self.delay_node.interfaces) - {h.name for h in self.hosts})
            missing = [h.name for h in self.hosts if h.name not in self.delay_node.interfaces]
            if unknown or missing:
                which = (
                    f"unknown host {unknown[0]!r}" if unknown else f"no entry for {missing[0]!r}"
                )
                raise FieldProblem(("delay_node", "interfaces"), which)
        return self

    def host(self, name: str) -> Host:
        """The host called `name`; KeyError if there is none."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        """Host names in inventory order."""
        return [host.name for host in self.hosts]
