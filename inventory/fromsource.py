"""`wanlab inventory show --from SOURCE`: read a fleet from an Ansible inventory, an SSH client
configuration or EC2, refusing options that belong to another source."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inventory.ansible import ALL, load_ansible
from inventory.errors import ConfigError
from inventory.models import Fleet
from inventory.names import check_name
from inventory.sshconfig import load_ssh_config

SOURCES = ("ansible", "ssh-config", "ec2")


@dataclass
class SourceOptions:
    """What the command line gave; None (or empty) where an option was left out."""

    name: str | None = None
    group: str | None = None
    hosts: str | None = None
    tags: list[str] = field(default_factory=list)
    instance_type: str | None = None
    region: str | None = None
    public: bool = False
    order_tag: str | None = None
    user: str | None = None
    key_file: Path | None = None


# The source each option belongs to, and its spelling on the command line.
_OWNER = {
    "group": ("ansible", "--group"),
    "hosts": ("ssh-config", "--hosts"),
    "tags": ("ec2", "--tag"),
    "instance_type": ("ec2", "--type"),
    "region": ("ec2", "--region"),
    "public": ("ec2", "--public"),
    "order_tag": ("ec2", "--order-tag"),
    "user": ("ec2", "--user"),
    "key_file": ("ec2", "--key-file"),
}


def read_source(source: str, file: Path | None, options: SourceOptions) -> Fleet:
    """The fleet of `source` (one of SOURCES); nothing is contacted but EC2's API."""
    if source not in SOURCES:
        raise ConfigError(None, "--from", f"{source!r} is not one of {', '.join(SOURCES)}")
    for attribute, (owner, option) in _OWNER.items():
        if getattr(options, attribute) and owner != source:
            raise ConfigError(None, option, f"only with --from {owner}")
    if options.name is not None:
        try:
            check_name(options.name)
        except ValueError as error:
            raise ConfigError(None, "--name", str(error)) from None
    if source == "ansible":
        if file is None:
            raise ConfigError(None, "FILE", "--from ansible needs the inventory file")
        return load_ansible(file, options.group or ALL, options.name)
    if file is not None and source == "ec2":
        raise ConfigError(None, "FILE", "--from ec2 reads no file")
    if source == "ssh-config":
        return load_ssh_config(file, options.hosts or "*", options.name or "ssh-config")
    from inventory.ec2 import Ec2Query, load_ec2, parse_tags  # boto3: 0.4 s, only for ec2

    query = Ec2Query(
        tags=parse_tags(options.tags),
        instance_type=options.instance_type,
        region=options.region,
        public=options.public,
        order_tag=options.order_tag,
    )
    return load_ec2(query, options.user or "root", options.key_file, options.name or "ec2")
