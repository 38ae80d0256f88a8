"""Inventories: the example loads; malformed ones give one clear error naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import run_cli

from inventory.loader import load_inventory

EXAMPLE = Path(__file__).parent.parent / "inventory" / "examples" / "p3-2xlarge-12.toml"

GOOD_HOST = '[[hosts]]\nname = "a"\naddress = "198.18.9.1"\n'

# (case id, inventory text, field the error must name, words the message must contain)
MALFORMED = [
    ("syntax", 'hosts = [ {name = "a"', None, "not valid TOML"),
    ("no-hosts", '[fleet]\nname = "x"\n', "hosts", "at least one"),
    (
        "bad-ipv4",
        '[[hosts]]\nname = "a"\naddress = "10.0.0.300"\n',
        "hosts[0].address",
        "neither an IP address",
    ),
    ("port-range", GOOD_HOST + "port = 70000\n", "hosts[0].port", "less than or equal"),
    (
        "dup-name",
        GOOD_HOST + '[[hosts]]\nname = "a"\naddress = "198.18.9.2"\n',
        "hosts[1].name",
        "already used",
    ),
    (
        "dup-address",
        GOOD_HOST + '[[hosts]]\nname = "b"\naddress = "198.18.9.1"\n',
        "hosts[1].address",
        "already used",
    ),
    ("missing-address", '[[hosts]]\nname = "a"\n', "hosts[0].address", "required"),
    ("typo-field", GOOD_HOST + 'adress = "x"\n', "hosts[0].adress", "not permitted"),
    ("unknown-section", '[fleeet]\nname = "x"\n' + GOOD_HOST, "fleeet", "unknown section"),
    ("label-not-text", GOOD_HOST + "labels = { region = 3 }\n", "hosts[0].labels.region", "string"),
    ("bad-user", GOOD_HOST + 'user = "root; rm -rf /"\n', "hosts[0].user", "not a valid"),
    (
        "negative-timeout",
        "[fleet]\nconnect_timeout = -1\n" + GOOD_HOST,
        "fleet.connect_timeout",
        "greater than 0",
    ),
    (
        "long-interface",
        GOOD_HOST + 'interface = "averyverylonginterface"\n',
        "hosts[0].interface",
        "1-15",
    ),
    (
        "missing-key",
        GOOD_HOST + 'key_file = "no-such-key"\n',
        "hosts[0].key_file",
        "does not exist",
    ),
    (
        "missing-known-hosts",
        '[fleet]\nknown_hosts = "nope"\n' + GOOD_HOST,
        "fleet.known_hosts",
        "does not exist",
    ),
    ("hosts-not-table", "hosts = [1, 2]\n", "hosts[0]", "must be a table"),
    # names are matched whole: a trailing newline is not a name
    ("name-newline", '[[hosts]]\nname = "h0\\n"\naddress = "198.18.9.1"\n', "hosts[0].name", ""),
    ("user-newline", GOOD_HOST + 'user = "root\\n"\n', "hosts[0].user", "not a valid"),
    ("interface-newline", GOOD_HOST + 'interface = "lo\\n"\n', "hosts[0].interface", "not a valid"),
    ("interface-dotdot", GOOD_HOST + 'interface = ".."\n', "hosts[0].interface", "not a valid"),
    ("host-newline", '[[hosts]]\nname = "a"\naddress = "h.example\\n"\n', "hosts[0].address", ""),
]


def test_example_inventory_loads():
    fleet = load_inventory(EXAMPLE, check_keys=False)
    assert len(fleet.hosts) == 12
    assert fleet.host("p3-11").labels["region"] == "us-east-1"
    assert fleet.host("p3-00").key_file == Path("~/.ssh/wanlab-p3.pem").expanduser()


def test_defaults_are_overridden_per_host(tmp_path):
    path = tmp_path / "inv.toml"
    path.write_text('[defaults]\nuser = "ubuntu"\nport = 2222\n' + GOOD_HOST + "port = 22\n")
    host = load_inventory(path).hosts[0]
    assert (host.user, host.port) == ("ubuntu", 22)


def test_missing_file_is_one_clear_error(wanlab, tmp_path):
    missing = tmp_path / "nowhere.toml"
    result = wanlab("inventory", "show", "-i", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"wanlab: error: {missing}: no such file"


@pytest.mark.parametrize(
    ("case", "text", "field", "words"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_inventory_rejected(monkeypatch, capsys, tmp_path, case, text, field, words):
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "inventory", "check", "-i", str(path))
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    expected_prefix = f"wanlab: error: {path}: " + (f"{field}: " if field else "")
    assert lines[0].startswith(expected_prefix), lines[0]
    assert words in lines[0]
