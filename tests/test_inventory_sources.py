"""Inventory sources beside the TOML file (Ansible YAML and INI, SSH client configuration): each
gives the same Fleet as its TOML twin, and any fleet freezes into TOML that loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import run_cli

from inventory.ansible import expand_range, load_ansible
from inventory.errors import ConfigError
from inventory.freeze import write_fleet
from inventory.loader import load_inventory
from inventory.sshconfig import aliases, load_ssh_config

EXAMPLES = Path(__file__).parent.parent / "inventory" / "examples"


def dump(fleet) -> dict:
    return fleet.model_dump(exclude={"source"})


@pytest.mark.parametrize("name", ["gpus.yml", "gpus.ini"])
def test_ansible_inventory_is_its_toml_twin(name):
    twin = load_inventory(EXAMPLES / "gpus.toml", check_keys=False)
    assert dump(load_ansible(EXAMPLES / name)) == dump(twin)


@pytest.mark.parametrize("name", ["gpus.yml", "gpus.ini"])
def test_ansible_group_takes_its_children_in_file_order(name):
    gpus = load_ansible(EXAMPLES / name, "gpus")
    assert gpus.name == "gpus"
    assert gpus.names == [f"gpu0{i}.lab.example" for i in (1, 2, 3)] + ["gpu04"]
    east = load_ansible(EXAMPLES / name, "east")
    assert east.names == ["gpu04"] and east.hosts[0].labels == {"region": "us-east-1"}


def test_ansible_host_in_two_groups_is_one_host(tmp_path):
    path = tmp_path / "hosts.ini"
    path.write_text("[a]\nx.example\ny.example\n[b]\ny.example ansible_port=2200\nx.example\n")
    fleet = load_ansible(path)
    assert fleet.names == ["x.example", "y.example"] and fleet.hosts[1].port == 2200


def test_ansible_deeper_group_wins_then_name_then_host(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n  vars: {wanlab_zone: all, wanlab_rack: all}\n  children:\n"
        "    b: {vars: {wanlab_zone: b}, hosts: {h.example: }}\n"
        "    a: {vars: {wanlab_zone: a, wanlab_rack: a}, hosts: {h.example: {wanlab_rack: own}},\n"
        "        children: {deep: {vars: {wanlab_zone: deep}, hosts: {h.example: }}}}\n"
    )
    assert load_ansible(path).hosts[0].labels == {"zone": "deep", "rack": "own"}


def test_ansible_ranges():
    assert expand_range("node[01:03]", "f", "x") == ["node01", "node02", "node03"]
    assert expand_range("n[8:12:2].e", "f", "x") == ["n8.e", "n10.e", "n12.e"]
    assert expand_range("r[1:2]-[0:1]", "f", "x") == ["r1-0", "r1-1", "r2-0", "r2-1"]
    with pytest.raises(ConfigError, match="empty range"):
        expand_range("n[3:1]", "f", "x")


def test_ssh_config_is_its_toml_twin():
    twin = load_inventory(EXAMPLES / "bastion.toml", check_keys=False)
    fleet = load_ssh_config(EXAMPLES / "bastion.ssh_config", "gpu-*", "bastion")
    assert dump(fleet) == dump(twin)
    assert fleet.hosts[0].jump.address == "bastion.lab.example"


def test_ssh_config_aliases_in_file_order_without_patterns():
    text = "Host b a\n  HostName x\nHost=c *.d !e\nhost a f?\nMatch all\n"
    assert aliases(text) == ["b", "a", "c"]
    fleet = load_ssh_config(EXAMPLES / "bastion.ssh_config")
    assert fleet.names == ["bastion", "gpu-1", "gpu-2"] and fleet.hosts[0].jump is None


def test_ssh_config_jump_user_and_port_given_inline(tmp_path):
    path = tmp_path / "config"
    path.write_text("Host a\n  HostName 10.0.0.1\n  ProxyJump ops@gw.example:2022\n")
    jump = load_ssh_config(path).hosts[0].jump
    assert (jump.address, jump.user, jump.port) == ("gw.example", "ops", 2022)


@pytest.mark.parametrize(
    "spec", ["gpus.yml", "gpus.ini", "ansible:gpus.ini", "ansible:gpus.yml", "gpus.toml"]
)
def test_dash_i_reads_ansible_inventories(monkeypatch, capsys, spec):
    monkeypatch.chdir(EXAMPLES)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "-i", spec, "--json")
    assert code == 0, stderr
    shown = json.loads(stdout)
    shown.pop("source")
    twin = load_inventory("gpus.toml", check_keys=False)
    assert shown == json.loads(twin.model_dump_json(exclude={"source"}))


@pytest.mark.parametrize(
    ("argv", "twin"),
    [
        (["--from", "ansible", "gpus.yml", "--name", "gpus"], "gpus.toml"),
        (["--from", "ssh-config", "bastion.ssh_config", "--hosts", "gpu-*", "--name", "bastion"],
         "bastion.toml"),
        (["-i", "gpus.ini"], "gpus.toml"),
    ],
)  # fmt: skip
def test_show_writes_a_toml_twin(monkeypatch, capsys, tmp_path, argv, twin):
    monkeypatch.chdir(EXAMPLES)
    out = tmp_path / "fleet.toml"
    code, stdout, stderr = run_cli(
        monkeypatch, capsys, "inventory", "show", *argv, "--write", str(out)
    )
    assert code == 0 and f"written: {out}" in stdout, stderr
    written = load_inventory(out, check_keys=False)
    assert dump(written) == dump(load_inventory(twin, check_keys=False))


def test_frozen_fleet_loads_back_the_same(tmp_path):
    for fleet in (load_inventory(EXAMPLES / "p3-2xlarge-12.toml", check_keys=False),
                  load_inventory(EXAMPLES / "bastion.toml", check_keys=False)):  # fmt: skip
        write_fleet(fleet, tmp_path / "frozen.toml", "--write")
        assert dump(load_inventory(tmp_path / "frozen.toml", check_keys=False)) == dump(fleet)
