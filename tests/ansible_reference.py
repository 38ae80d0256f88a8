"""ansible-core's own reading of Ansible inventories, run as a separate process by
tests/test_inventory_reference.py: importing ansible-core patches interpreter functions
(`sys.intern`) that torch's compiler later rejects, so it never loads into the test process.

Reads a JSON list of {"dir", "path", "group"} on stdin; prints, for each, the hosts of `group`
in ansible-core's order (`InventoryManager.get_hosts`, what `ansible GROUP --list-hosts`
prints), each with what its ssh connection would use: the ssh connection plugin's own option
lookup over `VariableManager.get_vars` (what `ansible-inventory --list` prints). A relative key
file is taken from `dir`, as ansible-core takes it from its working folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ansible import constants
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import connection_loader
from ansible.vars.manager import VariableManager

OPTIONS = ("host", "remote_user", "port", "private_key_file", "ssh_args", "ssh_common_args",
           "ssh_extra_args")  # fmt: skip


def hosts_of(path: str, group: str) -> list[dict]:
    """Each host of `group`: its name and its ssh connection's options."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[path])
    variables = VariableManager(loader=loader, inventory=inventory)
    hosts = []
    for host in inventory.get_hosts(group):
        merged = variables.get_vars(host=host)
        options = {
            name: constants.config.get_config_value(
                name, plugin_type="connection", plugin_name="ssh", variables=merged
            )
            for name in OPTIONS
        }
        key = options["private_key_file"]
        options["private_key_file"] = str(Path.cwd() / os.path.expanduser(key)) if key else None
        hosts.append({"name": host.name, **options})
    return hosts


def main() -> None:
    connection_loader.get("ssh", class_only=True)  # registers the ssh connection's options
    answers = []
    for case in json.load(sys.stdin):
        os.chdir(case["dir"])
        answers.append(hosts_of(case["path"], case["group"]))
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
