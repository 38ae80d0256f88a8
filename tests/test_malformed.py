"""A catalogue of malformed and hostile input: every one gets one line naming the file (or the
command line, or the environment) and the field, exit code 2, and no connection to any host.

The real `wanlab` entry point runs in process with SSH connections forbidden (a connection
attempt fails the test). The parsers of units, profiles and pair matrices are also fed
generated input (hypothesis): whatever they are given, they answer with a value or a
ConfigError, never another exception.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from clirun import GOOD_MATRIX, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import lab
from experiments.cli import main
from experiments.cli.common import print_json
from experiments.cli.inventory import node_kernel_line
from experiments.matrix import load_matrix
from inventory.errors import ConfigError
from inventory.loader import load_inventory
from netem.pairs import pair_matrix_from_data
from netem.profile import parse_profile
from netem.units import parse_percent, parse_rate_bps, parse_time_ms
from trainer.config import TrainerConfig

HOST = '[[hosts]]\nname = "a"\naddress = "198.18.9.1"\n'
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"

# (case, inventory text, field named, words in the message)
INVENTORIES = [
    ("port-bool", HOST + "port = true\n", "hosts[0].port", "integer"),
    ("port-text", HOST + 'port = "22"\n', "hosts[0].port", "integer"),
    ("port-zero", HOST + "port = 0\n", "hosts[0].port", "greater than or equal"),
    ("port-float", HOST + "port = 22.5\n", "hosts[0].port", "integer"),
    ("timeout-inf", "[fleet]\nconnect_timeout = inf\n" + HOST, "fleet.connect_timeout", ""),
    ("timeout-nan", "[fleet]\nconnect_timeout = nan\n" + HOST, "fleet.connect_timeout", ""),
    ("timeout-huge", "[fleet]\nconnect_timeout = 1e9\n" + HOST, "fleet.connect_timeout", ""),
    ("timeout-text", '[fleet]\nconnect_timeout = "5"\n' + HOST, "fleet.connect_timeout", ""),
    ("strict-text", '[fleet]\nstrict_host_keys = "no"\n' + HOST, "fleet.strict_host_keys", ""),
    ("fleet-markup", '[fleet]\nname = "[/x]"\n' + HOST, "fleet.name", "letters"),
    ("label-markup", HOST + 'labels = { region = "[/x]" }\n', "hosts[0].labels", "label"),
    ("label-newline", HOST + 'labels = { region = "w\\n" }\n', "hosts[0].labels", "label"),
    ("workdir-empty", HOST + 'workdir = ""\n', "hosts[0].workdir", "absolute"),
    ("workdir-root", HOST + 'workdir = "/"\n', "hosts[0].workdir", "must not be /"),
    ("workdir-relative", HOST + 'workdir = "wanlab"\n', "hosts[0].workdir", "absolute"),
    ("workdir-dotdot", HOST + 'workdir = "/tmp/../etc"\n', "hosts[0].workdir", "'..'"),
    ("workdir-space", HOST + 'workdir = "/tmp/a b"\n', "hosts[0].workdir", "absolute"),
    ("python-space", HOST + 'python = "python3 -c x"\n', "hosts[0].python", "command"),
    ("python-subshell", HOST + 'python = "$(reboot)"\n', "hosts[0].python", "command"),
    ("python-empty", HOST + 'python = ""\n', "hosts[0].python", "command"),
    ("name-dash", '[[hosts]]\nname = "-oProxy"\naddress = "198.18.9.1"\n', "hosts[0].name", ""),
    ("name-semicolon", '[[hosts]]\nname = "a;b"\naddress = "198.18.9.1"\n', "hosts[0].name", ""),
    (
        "address-dash",
        '[[hosts]]\nname = "a"\naddress = "-oProxyCommand=x"\n',
        "hosts[0].address",
        "",
    ),
    ("address-subshell", '[[hosts]]\nname = "a"\naddress = "$(id)"\n', "hosts[0].address", ""),
    ("address-backtick", '[[hosts]]\nname = "a"\naddress = "`id`"\n', "hosts[0].address", ""),
    ("address-numeric", '[[hosts]]\nname = "a"\naddress = "1.2.3"\n', "hosts[0].address", ""),
    ("address-int", '[[hosts]]\nname = "a"\naddress = 7\n', "hosts[0].address", "string"),
    ("user-dash", HOST + 'user = "-oProxy"\n', "hosts[0].user", "not a valid"),
    ("user-backtick", HOST + 'user = "`id`"\n', "hosts[0].user", "not a valid"),
    ("interface-space", HOST + 'interface = "e th0"\n', "hosts[0].interface", "not a valid"),
    ("interface-dot", HOST + 'interface = "."\n', "hosts[0].interface", "not a valid"),
    (
        "same-host-other-case",
        HOST.replace("198.18.9.1", "LOCALHOST") + '[[hosts]]\nname = "b"\naddress = "localhost"\n',
        "hosts[1].address",
        "already used",
    ),
    (
        "same-ip-other-spelling",
        HOST.replace("198.18.9.1", "::1") + '[[hosts]]\nname = "b"\naddress = "0::0:1"\n',
        "hosts[1].address",
        "already used",
    ),
    ("key-not-private", HOST + 'key_file = "notakey"\n', "hosts[0].key_file", "not a private key"),
    ("key-is-folder", HOST + 'key_file = "."\n', "hosts[0].key_file", "is not a file"),
    ("hosts-empty", "hosts = []\n", "hosts", "at least one"),
    ("defaults-not-table", 'defaults = "x"\n' + HOST, "defaults", "must be a table"),
    (
        "node-bad-interface",
        '[fleet.delay_node]\nmailbox = "m"\ninterfaces = { a = "if b" }\n' + HOST,
        "fleet.delay_node.interfaces",
        "",
    ),
    (
        "node-unknown-host",
        '[fleet.delay_node]\nmailbox = "m"\ninterfaces = { a = "ifb0", z = "ifb1" }\n' + HOST,
        "fleet.delay_node.interfaces",
        "unknown host",
    ),
]

YML_HOST = "all:\n  hosts:\n    a.example:\n"
SSH_HOST = "Host a\n  HostName 10.0.0.1\n"

# Inventory sources beside TOML: (case, file name, text, options after the file, field named,
# words in the message). An Ansible file without options is given as `netem apply -i FILE`.
SOURCES = [
    ("ansible-unknown-group", "h.yml", YML_HOST, ["--group", "gpus"], "group", "no group"),
    ("ansible-no-address", "h.yml", "all:\n  hosts:\n    gpu1:\n", [], "gpu1.ansible_host", ""),
    ("ansible-playbook", "h.yml", "- hosts: all\n  tasks: []\n", [], None, "not an Ansible"),
    ("ansible-bad-yaml", "h.yml", "all: [\n", [], "line 2", "not valid YAML"),
    ("ansible-unknown-key", "h.yml", "all:\n  host:\n", [], "all.host", "not an inventory key"),
    ("ansible-hosts-list", "h.yml", "all:\n  hosts: [a]\n", [], "all.hosts", "mapping"),
    ("ansible-port-text", "h.yml", YML_HOST + "      ansible_port: '22'\n", [],
     "a.example.ansible_port", "integer"),
    ("ansible-port-range", "h.yml", YML_HOST + "      ansible_port: 70000\n", [],
     "a.example.ansible_port", "less than or equal"),
    ("ansible-user-shell", "h.yml", YML_HOST + "      ansible_user: root;id\n", [],
     "a.example.ansible_user", "not a valid"),
    ("ansible-label-number", "h.yml", YML_HOST + "      wanlab_rank: 3\n", [],
     "a.example.wanlab_rank", "string"),
    ("ansible-empty-range", "h.yml", "all:\n  hosts:\n    n[3:1].example:\n", [],
     "all.hosts.n[3:1].example", "empty range"),
    ("ini-host-line", "h.ini", "[g]\nh.example port\n", [], "line 2", "NAME=VALUE"),
    ("ini-header", "h.ini", "[g\nh.example\n", [], "line 1", "a section is"),
    ("ini-vars-line", "h.ini", "[g:vars]\nflag\n", [], "line 2", "NAME=VALUE"),
    ("ini-port-word", "h.ini", "[g]\nh.example ansible_port=ssh\n", [],
     "h.example.ansible_port", "not a port"),
    ("ini-cycle", "h.ini", "[a]\nh.example\n[a:children]\nb\n[b:children]\na\n", [], "a",
     "contain each other"),
    ("ini-same-address", "h.ini", "[g]\na ansible_host=10.0.0.1\nb ansible_host=10.0.0.1\n", [],
     "b.ansible_host", "already used by a"),
    ("ssh-no-hostname", "config", "Host gpu1\n  User ubuntu\n", [], "gpu1.HostName", "missing"),
    ("ssh-port-word", "config", SSH_HOST + "  Port ssh\n", [], "a.Port", "not a port"),
    ("ssh-port-range", "config", SSH_HOST + "  Port 70000\n", [], "a.Port", "less than"),
    ("ssh-user-dash", "config", SSH_HOST + "  User -oProxy\n", [], "a.User", "not a valid"),
    ("ssh-two-hops", "config", SSH_HOST + "  ProxyJump b.example,c.example\n", [],
     "a.ProxyJump", "only one jump host"),
    ("ssh-jump-alias", "config", SSH_HOST + "  ProxyJump gw\n", [], "a.ProxyJump.HostName", ""),
    ("ssh-proxy-command", "config", SSH_HOST + "  ProxyCommand nc %h %p\n", [],
     "a.ProxyCommand", "not supported"),
    ("ssh-no-match", "config", SSH_HOST, ["--hosts", "gpu-*"], "hosts", "no Host alias"),
    ("ssh-unparsable", "config", "Host\n", [], None, "not a valid SSH configuration"),
]  # fmt: skip

# (case, matrix text, field named, words in the message)
MATRICES = [
    ("repeats-bool", GOOD_MATRIX.replace('"t"', '"t"\nrepeats = true'), "matrix.repeats", ""),
    ("repeats-text", GOOD_MATRIX.replace('"t"', '"t"\nrepeats = "2"'), "matrix.repeats", ""),
    ("dp-text", GOOD_MATRIX.replace("[1, 2]", '["1", "2"]'), "axes.dp_degrees[0]", "integer"),
    ("dp-bool", GOOD_MATRIX.replace("[1, 2]", "[true]"), "axes.dp_degrees[0]", "integer"),
    ("micro-float", GOOD_MATRIX + "micro_batches = [1.0]\n", "axes.micro_batches[0]", "integer"),
    ("cell-inf", GOOD_MATRIX + "[timeouts]\ncell_s = inf\n", "timeouts.cell_s", ""),
    ("cell-nan", GOOD_MATRIX + "[timeouts]\ncell_s = nan\n", "timeouts.cell_s", ""),
    ("cell-text", GOOD_MATRIX + '[timeouts]\ncell_s = "60"\n', "timeouts.cell_s", ""),
    ("lease-short", GOOD_MATRIX + "[timeouts]\nlease_s = 1\n", "timeouts.lease_s", ""),
    ("lease-long", GOOD_MATRIX + "[timeouts]\nlease_s = 3600\n", "timeouts.lease_s", ""),
    ("apply-negative", GOOD_MATRIX + "[timeouts]\napply_s = -1\n", "timeouts.apply_s", ""),
    ("probe-count-zero", GOOD_MATRIX + "[probe]\ncount = 0\n", "probe.count", ""),
    ("probe-count-text", GOOD_MATRIX + '[probe]\ncount = "5"\n', "probe.count", ""),
    ("probe-seconds-inf", GOOD_MATRIX + "[probe]\nseconds = inf\n", "probe.seconds", ""),
    ("probe-typo", GOOD_MATRIX + "[probe]\nsecs = 1\n", "probe.secs", "not permitted"),
    (
        "too-many-cells",
        GOOD_MATRIX.replace('"t"', '"t"\nrepeats = 100\nmax_cells = 50'),
        "axes",
        "more than matrix.max_cells",
    ),
    (
        "rate-310-digits",
        GOOD_MATRIX.replace('"200mbit"', f'"{"9" * 310}bit"'),
        "axes.profiles[1]",
        "",
    ),
    ("rate-huge", GOOD_MATRIX.replace('"200mbit"', '"99999tbit"'), "axes.profiles[1]", "rate"),
    ("delay-huge", GOOD_MATRIX.replace('"200mbit"', '"99999s"'), "axes.profiles[1]", "99999s"),
    ("profile-newline", GOOD_MATRIX.replace('"200mbit"', '"200mbit\\n"'), "axes.profiles[1]", ""),
    ("profiles-empty", GOOD_MATRIX.replace('["default", "200mbit"]', "[]"), "axes.profiles", ""),
    ("batch-text", GOOD_MATRIX.replace("batch = 4", 'batch = "4x"'), "trainer.batch", ""),
    ("placement-typo", GOOD_MATRIX + "[placement]\nbye = 1\n", "placement.bye", "permitted"),
    ("placement-by", GOOD_MATRIX + '[placement]\nby = "random"\n', "placement.by", ""),
    ("placement-no-map", GOOD_MATRIX + '[placement]\nby = "ranks"\n', "placement", "ranks"),
    (
        "placement-label-text",
        GOOD_MATRIX + '[placement]\nby = "label"\nlabel = "a b"\n',
        "placement.label",
        "",
    ),
    ("tcp-unknown", GOOD_MATRIX + 'tcp = ["host", "nope"]\n', "axes.tcp[1]", "unknown TCP"),
    ("tcp-twice", GOOD_MATRIX + 'tcp = ["tuned", "tuned"]\n', "axes.tcp", "twice"),
    ("tcp-not-table", GOOD_MATRIX + "[tcp]\nbig = 1\n", "tcp.big", "table"),
    ("tcp-builtin", GOOD_MATRIX + "[tcp.tuned]\ninitcwnd = 4\n", "tcp.tuned", "built-in"),
    ("tcp-name", GOOD_MATRIX + '[tcp."a b"]\ninitcwnd = 4\n', "tcp.a b", "name"),
    ("tcp-typo", GOOD_MATRIX + "[tcp.big]\nrmem_max = 4\n", "tcp.big.rmem_max", "permitted"),
    ("tcp-rmem-short", GOOD_MATRIX + "[tcp.big]\nrmem = [1, 2]\n", "tcp.big.rmem[2]", ""),
    ("tcp-rmem-text", GOOD_MATRIX + '[tcp.big]\nrmem = [1, 2, "3"]\n', "tcp.big.rmem[2]", ""),
    ("tcp-rmem-order", GOOD_MATRIX + "[tcp.big]\nrmem = [9, 2, 3]\n", "tcp.big.rmem", "min"),
    (
        "tcp-ssai-int",
        GOOD_MATRIX + "[tcp.big]\nslow_start_after_idle = 0\n",
        "tcp.big.slow_start_after_idle",
        "boolean",
    ),
    (
        "tcp-cc-shell",
        GOOD_MATRIX + '[tcp.big]\ncongestion_control = "x;id"\n',
        "tcp.big.congestion_control",
        "pattern",
    ),
    ("tcp-initcwnd-zero", GOOD_MATRIX + "[tcp.big]\ninitcwnd = 0\n", "tcp.big.initcwnd", ""),
    (
        "dtype-unknown",
        GOOD_MATRIX.replace("iterations = 3", 'iterations = 3\ndtype = "fp8"'),
        "trainer.dtype",
        "",
    ),  # fmt: skip
]


def assert_one_line(stderr: str, where: str, field: str | None, words: str = "") -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    prefix = f"wanlab: error: {where}: " + (f"{field}: " if field else "")
    assert lines[0].startswith(prefix), lines[0]
    assert words in lines[0], lines[0]


@pytest.mark.parametrize(("case", "text", "field", "words"), INVENTORIES,
                         ids=[c[0] for c in INVENTORIES])  # fmt: skip
def test_inventory(monkeypatch, capsys, tmp_path, case, text, field, words):
    (tmp_path / "notakey").write_text("just some text\n")
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "netem", "apply", "1gbit", "-i", str(path))
    assert code == 2 and stdout == "", stderr
    assert_one_line(stderr, str(path), field, words)


@pytest.mark.parametrize(("case", "name", "text", "options", "field", "words"), SOURCES,
                         ids=[c[0] for c in SOURCES])  # fmt: skip
def test_inventory_source(monkeypatch, capsys, tmp_path, case, name, text, options, field, words):
    path = tmp_path / name
    path.write_text(text)
    if name == "config":
        argv = ["inventory", "show", "--from", "ssh-config", str(path), *options]
    elif options:
        argv = ["inventory", "show", "--from", "ansible", str(path), *options]
    else:
        argv = ["netem", "apply", "1gbit", "-i", str(path)]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *argv)
    assert code == 2 and stdout == "", stderr
    assert_one_line(stderr, str(path), field, words)


# Options of `inventory show --from`: (case, options, option named, words in the message)
SOURCE_OPTIONS = [
    ("tag-for-ansible", ["--from", "ansible", "h.yml", "--tag", "a=b"], "--tag", "only with"),
    ("group-for-ec2", ["--from", "ec2", "--group", "g"], "--group", "only with --from ansible"),
    ("tag-no-equals", ["--from", "ec2", "--tag", "Project"], "--tag", "Key=Value"),
    ("ec2-user-shell", ["--from", "ec2", "--user", "root;id"], "--user", "not a valid"),
    ("ec2-file", ["--from", "ec2", "h.yml"], "FILE", "reads no file"),
    ("ansible-no-file", ["--from", "ansible"], "FILE", "needs the inventory file"),
    ("unknown-source", ["--from", "cloud"], "--from", "not one of"),
    ("both", ["--from", "ec2", "-i", "h.yml"], "-i/--from", "exactly one"),
    ("neither", [], "-i/--from", "exactly one"),
    ("name-for-toml", ["-i", "h.yml", "--name", "x"], "--name", "only with --from"),
    ("write-nowhere", ["-i", "h.yml", "--write", "/proc/fleet.toml"], "/proc/fleet.toml", "cannot"),
]


@pytest.mark.parametrize(("case", "options", "option", "words"), SOURCE_OPTIONS,
                         ids=[c[0] for c in SOURCE_OPTIONS])  # fmt: skip
def test_inventory_source_option(monkeypatch, capsys, tmp_path, case, options, option, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h.yml").write_text(YML_HOST)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "inventory", "show", *options)
    assert code == 2 and stdout == "", stderr
    assert_one_line(stderr, option, None, words)


@pytest.mark.parametrize(("case", "text", "field", "words"), MATRICES,
                         ids=[c[0] for c in MATRICES])  # fmt: skip
def test_matrix(monkeypatch, capsys, tmp_path, case, text, field, words):
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    out = tmp_path / "results"
    code, _, stderr = run_cli(monkeypatch, capsys, "run", str(path), "-o", str(out), "-i", "x")
    assert code == 2, stderr
    assert_one_line(stderr, str(path), field, words)
    assert not out.exists()


def good_inventory(tmp_path: Path) -> Path:
    (tmp_path / "id").write_text(KEY)
    path = tmp_path / "inventory.toml"
    path.write_text(HOST + 'key_file = "id"\n[[hosts]]\nname = "b"\naddress = "198.18.9.2"\n')
    return path


# (case, command line with INV for a good inventory and TMP for the test's folder, field)
OPTIONS = [
    ("lease-negative", ["netem", "apply", "1gbit", "-i", "INV", "--lease", "-5"], "--lease"),
    ("lease-inf", ["netem", "apply", "1gbit", "-i", "INV", "--lease", "inf"], "--lease"),
    ("lease-nan", ["netem", "apply", "1gbit", "-i", "INV", "--lease", "nan"], "--lease"),
    ("lease-text", ["netem", "apply", "1gbit", "-i", "INV", "--lease", "soon"], "'--lease'"),
    ("probe-seconds", ["probe", "-i", "INV", "--seconds", "-1"], "--seconds"),
    ("probe-count", ["probe", "-i", "INV", "--count", "0"], "--count"),
    ("check-timeout", ["inventory", "check", "-i", "INV", "--timeout", "-1"], "--timeout"),
    ("check-timeout-zero", ["inventory", "check", "-i", "INV", "--timeout", "0"], "--timeout"),
    ("predict-flops-zero", ["predict", "MATRIX", "--flops", "0"], "--flops"),
    ("predict-flops-negative", ["predict", "MATRIX", "--flops", "-1"], "--flops"),
    ("predict-flops-nan", ["predict", "MATRIX", "--flops", "nan"], "--flops"),
    ("predict-native-rate", ["predict", "MATRIX", "--native-rate", "fast"], "--native-rate"),
    (
        "scale-ceiling",
        ["scale", "MATRIX", "--ceiling", "fast", "--lab-latency", "1ms"],
        "--ceiling",
    ),
    ("scale-share", ["scale", "MATRIX", "--lab-receive-share", "2"], "--lab-receive-share"),
    ("scale-share-nan", ["scale", "MATRIX", "--lab-receive-share", "nan"], "--lab-receive-share"),
    ("scale-iterations", ["scale", "MATRIX", "--iterations", "1"], "--iterations"),
    ("scale-calibrate", ["scale", "MATRIX", "--calibrate", "magic"], "--calibrate"),
    ("scale-inventory", ["scale", "MATRIX", "--to", "TMP/none.toml"], None),
    ("fleet-hosts-zero", ["fleet", "up", "--hosts", "0"], "--hosts"),
    ("fleet-hosts-many", ["fleet", "up", "--hosts", "100000"], "--hosts"),
    ("fleet-shaping", ["fleet", "up", "--shaping", "magic"], "--shaping"),
    ("demo-shaping", ["demo", "--shaping", "magic"], "--shaping"),
    ("unknown-option", ["netem", "show", "-i", "INV", "--colour"], None),
    ("unknown-profile", ["netem", "apply", "d99x", "-i", "INV"], "profile"),
    ("profile-loss", ["netem", "apply", "10ms/loss=200%", "-i", "INV"], "profile"),
    ("run-out-is-a-file", ["run", "MATRIX", "-i", "INV", "-o", "INV", "--dry-run"], "-o"),
    ("report-no-folder", ["report", "TMP/nothing"], None),
    ("report-out-in-proc", ["report", "RESULTS", "-o", "/proc/wanlab"], "-o"),
]


def results_folder(tmp_path: Path, cells: str, run_json: str | None = None) -> Path:
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    (folder / "cells.jsonl").write_text(cells)
    if run_json is not None:
        (folder / "run.json").write_text(run_json)
    return folder


@pytest.mark.parametrize(("case", "argv", "field"), OPTIONS, ids=[c[0] for c in OPTIONS])
def test_command_line(monkeypatch, capsys, tmp_path, case, argv, field, local_fleet):
    """`local_fleet` is the session's fleet, which bad input must leave as it is."""
    before = local_fleet.status()
    monkeypatch.setenv("WANLAB_HOME", str(tmp_path / "home"))
    matrix = tmp_path / "m.toml"
    matrix.write_text(GOOD_MATRIX)
    results = results_folder(tmp_path, json.dumps({"cell_id": "x"}) + "\n")
    names = {"INV": str(good_inventory(tmp_path)), "MATRIX": str(matrix), "TMP": str(tmp_path),
             "RESULTS": str(results)}  # fmt: skip
    argv = [names.get(arg, arg).replace("TMP", str(tmp_path)) for arg in argv]
    code, _, stderr = run_cli(monkeypatch, capsys, *argv)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("wanlab: error: "), lines[0]
    if field:
        assert field in lines[0], lines[0]
    assert local_fleet.status()["hosts"] == before["hosts"], "bad input touched the fleet"


# (case, cells.jsonl, run.json, field named)
RESULTS = [
    ("record-only-id", json.dumps({"cell_id": "x"}) + "\n", None, "line 1: params"),
    ("record-not-object", "[1, 2]\n", None, "line 1"),
    (
        "record-bad-status",
        json.dumps({"cell_id": "x", "status": "great", "params": {}, "trainer": {}}) + "\n",
        None,
        "line 1",
    ),  # fmt: skip
    ("run-json-corrupt", "", "{not json", None),
    ("run-json-not-list", "", '{"a": 1}', None),
]


@pytest.mark.parametrize(("case", "cells", "run_json", "field"), RESULTS,
                         ids=[c[0] for c in RESULTS])  # fmt: skip
def test_results_folder(monkeypatch, capsys, tmp_path, case, cells, run_json, field):
    folder = results_folder(tmp_path, cells, run_json)
    (folder / "matrix.toml").write_text(GOOD_MATRIX)
    code, _, stderr = run_cli(monkeypatch, capsys, "report", str(folder))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert str(folder) in lines[0], lines[0]
    if field:
        assert field in lines[0], lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WANLAB_FLEET_SUBNET", "garbage"),
        ("WANLAB_FLEET_SUBNET", "10.0.0.0/24"),
        ("WANLAB_FLEET_SUBNET", "198.18.0.0/33"),
        ("WANLAB_FLEET_PREFIX", "Bad!"),
        ("WANLAB_FLEET_PREFIX", "waytoolongprefix"),
    ],
)
def test_environment(monkeypatch, capsys, tmp_path, variable, value):
    monkeypatch.setenv("WANLAB_HOME", str(tmp_path))
    monkeypatch.setenv(variable, value)
    code, _, stderr = run_cli(monkeypatch, capsys, "fleet", "status")
    assert code == 2, stderr
    assert_one_line(stderr, "environment", variable)


def test_inventory_that_is_not_a_regular_file(monkeypatch, capsys, tmp_path):
    for path in ("/proc/self/mem", str(tmp_path / ("x" * 300)), str(tmp_path)):
        code, _, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "-i", path)
        assert code == 2, stderr
        assert_one_line(stderr, path, None)


# -- generated input: a value or a ConfigError/ValueError, never anything else ------------------
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_units_answer_any_text(text):
    for parse in (parse_time_ms, parse_rate_bps, parse_percent):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert 0 <= value < float("inf")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans()))
def test_units_answer_any_number(number):
    for parse in (parse_time_ms, parse_percent):
        try:
            value = parse(number)
        except ValueError:
            continue
        assert 0 <= value < float("inf") and not isinstance(number, bool)


PROFILE_WORDS = st.sampled_from(
    ["10ms", "1gbit", "loss=1%", "jitter=2ms", "d10b1", "default", "/", "=", "%", "ms", "9" * 40,
     "-1ms", "inf", "nan", "\n", "[/x]", "rate=", "limit=5", "1e9bit"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(PROFILE_WORDS, max_size=5).map("".join), st.text(max_size=30)))
def test_profile_parser_answers_any_text(text):
    try:
        parse_profile(text, source="profile")
    except ConfigError as error:
        assert error.file == "profile" and "\n" not in str(error).strip()


LINK_VALUES = st.one_of(
    st.text(max_size=8), st.integers(), st.floats(), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
LINKS = st.dictionaries(
    st.sampled_from(["src", "dst", "delay", "rate", "loss", "both_ways", "jitter", "x"]),
    LINK_VALUES,
    max_size=6,
)


DOCUMENTS = st.dictionaries(
    st.sampled_from(["by", "link", "x"]), st.one_of(st.lists(LINKS, max_size=3), LINK_VALUES)
)


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS)
def test_pair_matrix_parser_answers_any_document(document):
    try:
        pair_matrix_from_data(document, "pairs.toml")
    except ConfigError as error:
        assert error.file == "pairs.toml"


@pytest.mark.parametrize("field", ["name", "address", "user", "python", "workdir", "interface"])
def test_injection_through_a_remote_command_field_is_refused(monkeypatch, capsys, tmp_path, field):
    """Every inventory field that reaches a remote command, given a shell payload that would
    create a marker file: refused at load, and the marker never appears."""
    marker = tmp_path / "injected"
    values = {"name": "a", "address": "198.18.9.1", "user": "root", "python": "python3",
              "workdir": "/tmp/wanlab", "interface": "eth0"}  # fmt: skip
    values[field] = f"x;touch {marker}"
    body = "".join(f'{key} = "{value}"\n' for key, value in values.items())
    path = tmp_path / "inventory.toml"
    path.write_text("[[hosts]]\n" + body)
    code, _, stderr = run_cli(monkeypatch, capsys, "netem", "reset", "-i", str(path))
    assert code == 2, stderr
    assert_one_line(stderr, str(path), f"hosts[0].{field}")
    assert not marker.exists()


def test_hosts_out_of_reach_give_one_line_each_and_exit_1(monkeypatch, capsys, tmp_path):
    """Nothing listens on port 1 of this machine's loopback: both hosts are out of reach."""
    (tmp_path / "id").write_text(KEY)
    path = tmp_path / "inventory.toml"
    path.write_text(
        '[fleet]\nconnect_timeout = 2\n[defaults]\nkey_file = "id"\nport = 1\n'
        '[[hosts]]\nname = "a"\naddress = "127.0.0.1"\n'
        '[[hosts]]\nname = "b"\naddress = "localhost"\n'
    )
    monkeypatch.setattr(sys, "argv", ["wanlab", "netem", "show", "-i", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1, stderr
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines[0].startswith("wanlab: error: "), stderr
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["a", "b"], stderr


# == the newer surfaces: matrix tables and axes, scale, predict, report --compare, WANLAB_* and
# AWS_* variables, --json. Each refusal runs the real entry point in the test's folder (also the
# current folder) with SSH connections and the EC2 client forbidden, and asserts one line that
# names the file and the field, exit code 2, nothing on stdout and no file written anywhere
# under the folder. ==============================================================================
def files_under(folder: Path) -> dict[str, int]:
    """Every path under `folder` (links and FIFOs too, never followed) with its mtime."""
    return {str(path): path.lstat().st_mtime_ns for path in folder.rglob("*")}


def refused(monkeypatch, capsys, folder: Path, *argv: str) -> str:
    """The one line `wanlab ARGV` answers bad input with, run in `folder`, which it must leave
    as it was; the EC2 client may not be made (no AWS call)."""

    def no_aws(*_args, **_kwargs):
        raise AssertionError("the EC2 client was made")

    monkeypatch.chdir(folder)
    monkeypatch.setattr(boto3, "client", no_aws)
    before = files_under(folder)
    code, stdout, stderr = run_cli(monkeypatch, capsys, *argv)
    assert code == 2 and stdout == "", (code, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert files_under(folder) == before, "bad input wrote a file"
    return lines[0]


def names(where: str | None, field: str | None, words: str = ""):
    """An assertion that a line blames `where` (a file, `environment`, or None for the command
    line) and `field`, and holds `words`."""

    def check(line: str) -> None:
        parts = [part for part in (where, field) if part]
        assert line.startswith("wanlab: error: " + "".join(f"{p}: " for p in parts)), line
        assert words in line, line

    return check


def with_trainer(line: str) -> str:
    return GOOD_MATRIX.replace("iterations = 3", f"iterations = 3\n{line}")


# (case, matrix text, field named, words in the message)
NEWER_MATRICES = [
    ("recompute-text", with_trainer('recompute = "yes"'), "trainer.recompute", "boolean"),
    ("tensor-text", with_trainer('tensor = "2"'), "trainer.tensor", "integer"),
    ("timeout-inf", with_trainer("timeout_s = inf"), "trainer.timeout_s", "finite"),
    ("timeout-nan", with_trainer("timeout_s = nan"), "trainer.timeout_s", "finite"),
    ("timeout-a-year", with_trainer("timeout_s = 3.2e7"), "trainer.timeout_s", "less than"),
    ("lr-inf", with_trainer("lr = inf"), "trainer.lr", "finite"),
    ("lr-text", with_trainer('lr = "1e-3"'), "trainer.lr", "number"),
    ("loss-scale-inf", with_trainer("loss_scale = inf"), "trainer.loss_scale", "finite"),
    ("chunk-bool", with_trainer("ps_chunk_kb = true"), "trainer.ps_chunk_kb", "number"),
    ("bucket-text", with_trainer('ps_bucket_mb = "1"'), "trainer.ps_bucket_mb", "number"),
    ("batch-float", GOOD_MATRIX.replace("batch = 4", "batch = 4.0"), "trainer.batch", "integer"),
    ("seed-bool", with_trainer("seed = true"), "trainer.seed", "integer"),
    ("seed-negative", with_trainer("seed = -1"), "trainer.seed", "greater than"),
    ("layers-text", with_trainer('layers = ["2", "2"]'), "trainer.layers[0]", "integer"),
    ("iterations-huge", GOOD_MATRIX.replace("= 3", "= 10000000"), "trainer.iterations", ""),
    ("warmup-float", with_trainer("warmup = 1.0"), "trainer.warmup", "integer"),
    ("threads-text", with_trainer('threads = "2"'), "trainer.threads", "integer"),
    ("seq-len-bool", with_trainer("seq_len = true"), "trainer.seq_len", "integer"),
    ("model-number", GOOD_MATRIX.replace('"tiny"', "3"), "trainer.model", "string"),
    ("emulate-scale-text", with_trainer(
        '[trainer.emulate]\nscale = "0.5"\nforward_ms = [1.0]\nbackward_ms = [1.0]'),
     "trainer.emulate.scale", "number"),
    ("emulate-no-stages", with_trainer(
        "[trainer.emulate]\nscale = 0.5\nforward_ms = []\nbackward_ms = [1.0]"),
     "trainer.emulate.forward_ms", "at least 1"),
    ("emulate-ms-inf", with_trainer(
        "[trainer.emulate]\nscale = 0.5\nforward_ms = [inf]\nbackward_ms = [1.0]"),
     "trainer.emulate.forward_ms[0]", "finite"),
    ("micro-batches-over-limit", GOOD_MATRIX.replace("batch = 4", "batch = 8192"),
     "trainer.batch", "more than 4096"),
    ("world-over-limit", GOOD_MATRIX.replace("[1, 2]", "[4096]"), "axes.dp_degrees[0]",
     "more than 4096"),
    ("max-cells-1e15", GOOD_MATRIX.replace('"t"', '"t"\nmax_cells = 1000000000000000'),
     "matrix.max_cells", "less than or equal to 100000"),
    ("dp-1e7", GOOD_MATRIX.replace("[1, 2]", "[10000000]"), "axes.dp_degrees[0]", "less than"),
    ("micro-1e7", GOOD_MATRIX + "micro_batches = [10000000]\n", "axes.micro_batches[0]", ""),
    ("layout-huge", GOOD_MATRIX.replace("pipeline = 2\n", "") + 'layouts = ["tp2048-pp2"]\n',
     "axes.layouts[0]", "less than"),
    ("layout-number", GOOD_MATRIX.replace("pipeline = 2\n", "") + "layouts = [2]\n",
     "axes.layouts[0]", "string"),
    ("recompute-axis-text", GOOD_MATRIX + 'recompute = ["yes"]\n', "axes.recompute[0]", "boolean"),
    ("engine-unknown", GOOD_MATRIX + 'engines = ["magic"]\n', "axes.engines[0]", ""),
    ("dp-mode-unknown", GOOD_MATRIX + 'dp_modes = ["magic"]\n', "axes.dp_modes[0]", ""),
    ("profile-number", GOOD_MATRIX.replace('"200mbit"', "200"), "axes.profiles[1]", "string"),
    ("scale-not-a-table", "scale = 3\n" + GOOD_MATRIX, "scale", "must be a table"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "field", "words"), NEWER_MATRICES,
                         ids=[c[0] for c in NEWER_MATRICES])  # fmt: skip
def test_trainer_table_and_axes(monkeypatch, capsys, tmp_path, case, text, field, words):
    path = tmp_path / "m.toml"
    path.write_text(text)
    line = refused(monkeypatch, capsys, tmp_path, "run", str(path), "-o", "out", "-i", "x")
    names(str(path), field, words)(line)


SCALE_MODEL = (
    GOOD_MATRIX.replace("iterations = 3", "iterations = 3\nps_chunk_kb = 16.0")
    + """
[trainer.emulate]
scale = 0.5
forward_ms = [1.0]
backward_ms = [2.0]
[scale]
target = "/somewhere/target.toml"
calibration = "reference"
factor = 0.5
baseline_profile = "default"
[[scale.cells]]
profile = "default"
dp_degree = 1
micro_batch = 1
dp_mode = "ps"
target_profile = "default"
predicted_s = 1.5
"""
)
"""A scale model as `wanlab scale` writes one (a factor, emulated compute, the target's
predicted times per lab cell); `test_scale_model_reads` checks it reads as a valid matrix."""
OWN_FACTOR = '[scale.profiles."200mbit"]\nfactor = 0.25\ntcp = {}\n'

# (case, edit of SCALE_MODEL, field named, words in the message)
SCALE_TABLES = [
    ("baseline-unknown", ('baseline_profile = "default"', 'baseline_profile = "d50b1"'),
     "scale.baseline_profile", "not a target_profile"),
    ("cell-profile-off-axes", ('\nprofile = "default"', '\nprofile = "1gbit"'),
     "scale.cells[0].profile", "not a value of axes.profiles"),
    ("cell-dp-off-axes", ("dp_degree = 1", "dp_degree = 8"), "scale.cells[0].dp_degree", ""),
    ("cell-micro-off-axes", ("micro_batch = 1", "micro_batch = 2"),
     "scale.cells[0].micro_batch", ""),
    ("cell-tcp-off-axes", ('dp_mode = "ps"', 'dp_mode = "ps"\ntcp = "tuned"'),
     "scale.cells[0].tcp", ""),
    ("cell-mode-off-axes", ('dp_mode = "ps"', 'dp_mode = "allreduce"'),
     "scale.cells[0].dp_mode", ""),
    ("cell-dp-text", ("dp_degree = 1", 'dp_degree = "1"'), "scale.cells[0].dp_degree", ""),
    ("predicted-nan", ("predicted_s = 1.5", "predicted_s = nan"),
     "scale.cells[0].predicted_s", "finite"),
    ("predicted-text", ("predicted_s = 1.5", 'predicted_s = "1.5"'),
     "scale.cells[0].predicted_s", "number"),
    ("measured-zero", ("predicted_s = 1.5", "predicted_s = 1.5\nmeasured_s = 0"),
     "scale.cells[0].measured_s", "greater than"),
    ("no-cells", ("[[scale.cells]]", "[[scale.other]]"), "scale.cells", "required"),
    ("cells-empty", ("[[scale.cells]]", "cells = []\n[[scale.other]]"), "scale.cells", ""),
    ("factor-text", ("factor = 0.5", 'factor = "0.5"'), "scale.factor", "number"),
    ("factor-inf", ("factor = 0.5", "factor = inf"), "scale.factor", "finite"),
    ("unknown-key", ("factor = 0.5", "factor = 0.5\nextra = 1"), "scale.extra", "permitted"),
    ("profile-model", ("[[scale.cells]]", OWN_FACTOR
                       + '[scale.profiles."200mbit".trainer]\nmodel = "gpt3-xl"\n[[scale.cells]]'),
     "scale.profiles.200mbit.trainer.model", "permitted"),
    ("profile-chunk-text", ("[[scale.cells]]", OWN_FACTOR
                            + '[scale.profiles."200mbit".trainer]\nps_chunk_kb = "16"\n'
                            + "[[scale.cells]]"),
     "scale.profiles.200mbit.trainer.ps_chunk_kb", "number"),
    ("profile-chunk-too-small", ("[[scale.cells]]", OWN_FACTOR
                                 + '[scale.profiles."200mbit".trainer]\nps_chunk_kb = 0.5\n'
                                 + "[[scale.cells]]"),
     "trainer.ps_chunk_kb", "greater than"),
    ("profile-off-axes", ("[[scale.cells]]", OWN_FACTOR.replace("200mbit", "1gbit")
                          + "[[scale.cells]]"),
     "scale.profiles.1gbit", "not a profile of axes.profiles"),
    ("profile-factor-bool", ("[[scale.cells]]", OWN_FACTOR.replace("0.25", "true")
                             + "[[scale.cells]]"),
     "scale.profiles.200mbit.factor", "number"),
]  # fmt: skip


def test_scale_model_reads(tmp_path):
    path = tmp_path / "scaled.toml"
    path.write_text(SCALE_MODEL.replace("[[scale.cells]]", OWN_FACTOR + "[[scale.cells]]"))
    spec = load_matrix(path)
    assert spec.scale.baseline_profile == "default"
    assert spec.trainer_table("200mbit")["emulate"]["scale"] == 0.25


@pytest.mark.parametrize(("case", "edit", "field", "words"), SCALE_TABLES,
                         ids=[c[0] for c in SCALE_TABLES])  # fmt: skip
def test_scale_table(monkeypatch, capsys, tmp_path, case, edit, field, words):
    path = tmp_path / "scaled.toml"
    assert edit[0] in SCALE_MODEL
    path.write_text(SCALE_MODEL.replace(*edit, 1))
    line = refused(monkeypatch, capsys, tmp_path, "run", str(path), "-o", "out", "-i", "x")
    names(str(path), field, words)(line)


def test_spread_pipelines_need_two_groups(monkeypatch, capsys, tmp_path):
    inventory = good_inventory(tmp_path)
    text = inventory.read_text().replace('address = "198.18.9.2"', 'address = "198.18.9.2"\n'
                                         'labels = { region = "west" }')  # fmt: skip
    text = text.replace('key_file = "id"', 'key_file = "id"\nlabels = { region = "west" }')
    inventory.write_text(text + '[[hosts]]\nname = "c"\naddress = "198.18.9.3"\n'
                         'labels = { region = "west" }\n[[hosts]]\nname = "d"\n'
                         'address = "198.18.9.4"\nlabels = { region = "west" }\n')  # fmt: skip
    path = tmp_path / "m.toml"
    path.write_text(GOOD_MATRIX + '[placement]\nby = "label"\nlabel = "region"\n'
                    'pipelines = "spread"\n')  # fmt: skip
    argv = ["run", str(path), "-o", "out", "-i", str(inventory), "--dry-run"]
    line = refused(monkeypatch, capsys, tmp_path, *argv)
    names(str(path), "placement.pipelines", "'spread' needs hosts of two")(line)


# Options: (case, command line, option named, words). Every file named is missing (NONE), so the
# option is blamed only when it is checked before any file is read or anything asked of AWS.
NONE = "none.toml"
OPTION_ORDER = [
    ("scale-ceiling-0bit", ["scale", NONE, "--ceiling", "0bit"], "--ceiling", "(1e+06"),
    ("scale-ceiling-huge", ["scale", NONE, "--ceiling", "99999tbit"], "--ceiling", "rate"),
    ("scale-ceiling-word", ["scale", NONE, "--ceiling", "fast"], "--ceiling", "not a rate"),
    ("scale-latency-3600s", ["scale", NONE, "--lab-latency", "3600s"], "--lab-latency", "0.1]"),
    ("scale-latency-negative", ["scale", NONE, "--lab-latency", "-1ms"], "--lab-latency", ""),
    ("scale-latency-word", ["scale", NONE, "--lab-latency", "soon"], "--lab-latency", ""),
    ("scale-share-zero", ["scale", NONE, "--lab-receive-share", "0"], "--lab-receive-share", ""),
    ("scale-warmup-zero", ["scale", NONE, "--warmup", "0"], "--warmup", ""),
    ("predict-cell-alone", ["predict", NONE, "--calibrate-cell", "x"], "--calibrate-cell",
     "only with --calibrate RESULTS"),
    ("predict-cell-reference", ["predict", NONE, "--calibrate", "reference", "--calibrate-cell",
                                "x"], "--calibrate-cell", "only with --calibrate RESULTS"),
    ("predict-store-alone", ["predict", NONE, "--store"], "--store", "only with"),
    ("predict-store-reference", ["predict", NONE, "--calibrate", "reference", "--store"],
     "--store", "only with"),
    ("predict-native-latency-3600s", ["predict", NONE, "--native-latency", "3600s"],
     "--native-latency", ""),
    ("predict-native-rate-0bit", ["predict", NONE, "--native-rate", "0bit"], "--native-rate", ""),
    ("predict-flops-inf", ["predict", NONE, "--flops", "inf"], "--flops", ""),
    ("ec2-name", ["inventory", "show", "--from", "ec2", "--name", "bad name"], "--name", ""),
    ("ec2-region", ["inventory", "show", "--from", "ec2", "--region", "us east"], "--region", ""),
    ("ec2-type", ["inventory", "show", "--from", "ec2", "--type", "p3 2xlarge"], "--type", ""),
    ("ec2-order-tag", ["inventory", "show", "--from", "ec2", "--order-tag", "a\tb"],
     "--order-tag", ""),
    ("ec2-key-missing", ["inventory", "show", "--from", "ec2", "--key-file", NONE], "--key-file",
     "does not exist"),
    ("ansible-name", ["inventory", "show", "--from", "ansible", NONE, "--name", "a/b"], "--name",
     ""),
    ("ssh-config-name", ["inventory", "show", "--from", "ssh-config", NONE, "--name", ".."],
     "--name", ""),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "option", "words"), OPTION_ORDER,
                         ids=[c[0] for c in OPTION_ORDER])  # fmt: skip
def test_an_option_is_blamed_before_any_work(monkeypatch, capsys, tmp_path, case, argv, option,
                                             words):  # fmt: skip
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(variable, raising=False)
    names(None, option, words)(refused(monkeypatch, capsys, tmp_path, *argv))


def finished_cell(profile: str = "default", dp: int = 1, total: float = 0.5,
                  stage_s: float = 0.01) -> dict:  # fmt: skip
    """A finished cell of GOOD_MATRIX as the runner records it (rank 0's summary included)."""
    config = {"model": "tiny", "batch": 4, "pipeline": 2, "iterations": 3, "dp_degree": dp}
    stages = [{"rank": stage, "stage": stage, "forward_per_micro_s": stage_s,
               "backward_per_micro_s": 2 * stage_s, "mean_s": {"optimizer_s": stage_s / 10}}
              for stage in range(2)]  # fmt: skip
    return {
        "cell_id": f"{profile}|dp{dp}|mb1|gpipe|ps|r0",
        "status": "ok",
        "matrix": "t",
        "params": {
            "profile": profile,
            "dp_degree": dp,
            "micro_batch": 1,
            "engine": "gpipe",
            "dp_mode": "ps",
        },  # fmt: skip
        "trainer": TrainerConfig(**config).model_dump(mode="json", exclude={"out", "iface"}),
        "network": {"setting": {"kind": "profile", **parse_profile(profile).model_dump()}},
        "summary": {
            "phases": {"total_s": {"mean": total}},
            "stages": stages,
            "phases_measured": ["total_s", "forward_s", "backward_s"],
        },  # fmt: skip
    }


def write_results(folder: Path, records: list[dict], spec: str = GOOD_MATRIX) -> Path:
    """A results folder: cells.jsonl of `records` (with NaN, as Python's JSON writes it) and
    the matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "matrix.toml").write_text(spec)
    return folder


def spoiled(change) -> list[dict]:
    record = finished_cell()
    change(record)
    return [record, finished_cell("200mbit", total=0.7)]


def set_in(path: str, value):
    """A change that sets record[path...] (dotted, list indices as numbers) to `value`."""

    def change(record: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = record
        for key in parents:
            target = target[key]
        target[last] = value

    return change


# A results folder calibrated on: (case, its records, the field named, words in the message)
CALIBRATIONS = [
    ("total-nan", spoiled(set_in("summary.phases.total_s.mean", math.nan)),
     "line 1: summary.phases.total_s.mean", "finite"),
    ("total-zero", spoiled(set_in("summary.phases.total_s.mean", 0)), "line 1: summary", "or 0"),
    ("total-missing", spoiled(set_in("summary.phases", {"forward_s": {"mean": 1.0}})),
     "line 1: summary", "missing"),
    ("stage-nan", spoiled(set_in("summary.stages.0.forward_per_micro_s", math.nan)),
     "cells.jsonl: cell default|dp1|mb1|gpipe|ps|r0: summary.stages", "finite"),
    ("stage-inf", spoiled(set_in("summary.stages.1.backward_per_micro_s", math.inf)),
     "cells.jsonl: cell default|dp1|mb1|gpipe|ps|r0: summary.stages", "finite"),
    ("stage-negative", spoiled(set_in("summary.stages.0.mean_s.optimizer_s", -1.0)),
     "cells.jsonl: cell default|dp1|mb1|gpipe|ps|r0: summary.stages", "finite"),
    ("stage-text", spoiled(set_in("summary.stages.0.forward_per_micro_s", "fast")),
     "cells.jsonl: cell default|dp1|mb1|gpipe|ps|r0: summary.stages", "must give"),
    ("stage-index", spoiled(set_in("summary.stages.1.stage", 7)),
     "cells.jsonl: cell default|dp1|mb1|gpipe|ps|r0: summary.stages", "must give"),
    ("trainer-text", spoiled(set_in("trainer.batch", "4")), "line 1: trainer.batch", "integer"),
    ("trainer-emulate-text", spoiled(set_in("trainer.emulate", {"scale": "x"})),
     "line 1: trainer.emulate.scale", "number"),
    ("trainer-unknown-model", spoiled(set_in("trainer.model", "gpt9")),
     "cells.jsonl: cell default|dp1|mb1|gpipe|ps|r0: trainer.model", "unknown model"),
]  # fmt: skip


def test_a_good_results_folder_calibrates(monkeypatch, capsys, tmp_path):
    results = write_results(tmp_path / "results", spoiled(lambda record: None))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "predict", str(results / "matrix.toml"),
                                   "--calibrate", str(results), "--json")  # fmt: skip
    assert code == 0, stderr
    rows = json.loads(stdout)
    assert len(rows) == 4 and all(row["predicted_iteration_s"] > 0 for row in rows)


@pytest.mark.parametrize(("case", "records", "field", "words"), CALIBRATIONS,
                         ids=[c[0] for c in CALIBRATIONS])  # fmt: skip
def test_a_results_folder_calibrated_on(monkeypatch, capsys, tmp_path, case, records, field,
                                        words):  # fmt: skip
    results = write_results(tmp_path / "results", records)
    argv = ["predict", str(results / "matrix.toml"), "--calibrate", str(results), "--json"]
    line = refused(monkeypatch, capsys, tmp_path, *argv)
    where = str(results / "cells.jsonl") if field.startswith("line") else str(results)
    names(where, field, words)(line)


# `wanlab scale RESULTS`: (case, records, matrix.toml, file named (in the folder), field, words)
SCALE_TARGETS = [
    ("another-matrix", [finished_cell(dp=4)], GOOD_MATRIX, "cells.jsonl",
     "cell default|dp4|mb1|gpipe|ps|r0", "not a cell of"),
    ("another-matrix-name", [finished_cell()], GOOD_MATRIX.replace('"t"', '"u"'), "cells.jsonl",
     "cell default|dp1|mb1|gpipe|ps|r0", "matrix 'u'"),
    ("another-trainer", [finished_cell()], GOOD_MATRIX.replace("batch = 4", "batch = 8"),
     "matrix.toml", "trainer.batch", "ran with 4"),
    ("matrix-broken", [finished_cell()], GOOD_MATRIX.replace("[1, 2]", '["1"]'), "matrix.toml",
     "axes.dp_degrees[0]", "integer"),
    ("no-matrix", [finished_cell()], None, None, None, "not a results folder"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "records", "spec", "file", "field", "words"), SCALE_TARGETS,
                         ids=[c[0] for c in SCALE_TARGETS])  # fmt: skip
def test_a_results_folder_scaled(monkeypatch, capsys, tmp_path, case, records, spec, file,
                                 field, words):  # fmt: skip
    results = write_results(tmp_path / "results", records, spec or "")
    if spec is None:
        (results / "matrix.toml").unlink()
    line = refused(monkeypatch, capsys, tmp_path, "scale", str(results), "--to", "x.toml")
    names(str(results / file) if file else str(results), field, words)(line)


def compared(folder: Path, spec: bytes | str | None = GOOD_MATRIX, **files: bytes | str) -> Path:
    """A results folder of two finished cells, with `spec` as matrix.toml and other files."""
    write_results(folder, [finished_cell(), finished_cell("200mbit", total=0.7)])
    for name, content in {"matrix.toml": spec, **files}.items():
        path = folder / name.replace("_", ".")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return folder


# `report --compare A B` with A spoiled: (case, A's matrix.toml, other files, file, field, words)
COMPARISONS = [
    ("matrix-not-utf8", b"[matrix]\nname = \"\xff\"\n", {}, "matrix.toml", None, "UTF-8"),
    ("matrix-not-toml", "[matrix\n", {}, "matrix.toml", None, "not valid TOML"),
    ("matrix-table-number", "matrix = 3\n", {}, "matrix.toml", "matrix", "must be a table"),
    ("name-number", GOOD_MATRIX.replace('"t"', "5"), {}, "matrix.toml", "matrix.name", "string"),
    ("repeats-text", GOOD_MATRIX.replace('"t"', '"t"\nrepeats = "2"'), {}, "matrix.toml",
     "matrix.repeats", "integer"),
    ("axes-list", "axes = [1]\n" + GOOD_MATRIX.split("[axes]")[0], {}, "matrix.toml", "axes",
     "must be a table"),
    ("dp-text", GOOD_MATRIX.replace("[1, 2]", '["1"]'), {}, "matrix.toml",
     "axes.dp_degrees[0]", "integer"),
    ("profiles-missing", GOOD_MATRIX.replace('profiles = ["default", "200mbit"]', ""), {},
     "matrix.toml", "axes.profiles", "required"),
    ("cells-over-max", GOOD_MATRIX.replace("[1, 2]", f"{list(range(1, 101))}\n"
                                           f"micro_batches = {list(range(1, 101))}"), {},
     "matrix.toml", "axes", "20000 cells, more than matrix.max_cells = 10000"),
    ("scale-no-cells", SCALE_MODEL.split("[[scale.cells]]")[0], {}, "matrix.toml",
     "scale.cells", "required"),
    ("scale-factor-text", SCALE_MODEL.replace("factor = 0.5", 'factor = "x"'), {},
     "matrix.toml", "scale.factor", "number"),
    ("cells-not-utf8", GOOD_MATRIX, {"cells_jsonl": b"\xff\xfe\n"}, "cells.jsonl", None, "UTF-8"),
    ("cells-nan", GOOD_MATRIX, {"cells_jsonl": json.dumps(spoiled(set_in(
        "summary.phases.total_s.mean", math.nan))[0]) + "\n"}, "cells.jsonl",
     "line 1: summary.phases.total_s.mean", "finite"),
    ("predictions-text", GOOD_MATRIX, {"predictions_jsonl": json.dumps(
        {"cell_id": "x", "predicted_iteration_s": "fast"}) + "\n"}, "predictions.jsonl", "line 1",
     "finite"),
    ("predictions-nan", GOOD_MATRIX, {"predictions_jsonl": '{"cell_id": "x", '
                                      '"predicted_iteration_s": NaN}\n'},
     "predictions.jsonl", "line 1", "finite"),
    ("run-json-not-utf8", GOOD_MATRIX, {"run_json": b"[\xff]"}, "run.json", None, "UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "spec", "files", "file", "field", "words"), COMPARISONS,
                         ids=[c[0] for c in COMPARISONS])  # fmt: skip
def test_report_compare(monkeypatch, capsys, tmp_path, case, spec, files, file, field, words):
    a = compared(tmp_path / "a", spec, **files)
    b = compared(tmp_path / "b")
    line = refused(monkeypatch, capsys, tmp_path, "report", "--compare", str(a), str(b))
    names(str(a / file), field, words)(line)
    # the same folder as B is named as B: each side is read as strictly
    line = refused(monkeypatch, capsys, tmp_path, "report", "--compare", str(b), str(a))
    names(str(a / file), field, words)(line)


def test_a_single_report_reads_its_matrix_as_strictly(monkeypatch, capsys, tmp_path):
    results = compared(tmp_path / "a", GOOD_MATRIX.replace('"t"', '"t"\nrepeats = true'))
    line = refused(monkeypatch, capsys, tmp_path, "report", str(results))
    names(str(results / "matrix.toml"), "matrix.repeats", "integer")(line)


LONG = "x" * 300
"""A name longer than any file name may be (ENAMETOOLONG)."""
EC2 = ["inventory", "show", "--from", "ec2", "--region", "us-east-1"]

# (case, variable, its value (FILE: a file, DIR: a folder, LONG: a name too long), command)
VARIABLES = [
    ("home-empty", "WANLAB_HOME", "", ["fleet", "status"], "absolute"),
    ("home-relative", "WANLAB_HOME", "state", ["fleet", "status", "--json"], "absolute"),
    ("home-a-file", "WANLAB_HOME", "FILE", ["fleet", "status"], "is not a folder"),
    ("home-too-long", "WANLAB_HOME", "LONG", ["fleet", "up"], "too long"),
    ("home-for-run-local", "WANLAB_HOME", "FILE", ["inventory", "show", "-i", "local"], "folder"),
    ("kernel-dir-empty", "WANLAB_KERNEL_DIR", "", ["fleet", "status"], "absolute"),
    ("kernel-dir-relative", "WANLAB_KERNEL_DIR", "k", ["fleet", "kernel"], "absolute"),
    ("kernel-dir-a-file", "WANLAB_KERNEL_DIR", "FILE", ["fleet", "status", "--json"], "folder"),
    ("kernel-dir-too-long", "WANLAB_KERNEL_DIR", "LONG", ["fleet", "status"], "too long"),
    ("prefix-empty", "WANLAB_FLEET_PREFIX", "", ["fleet", "status"], "letters"),
    ("subnet-empty", "WANLAB_FLEET_SUBNET", "", ["fleet", "down"], "network"),
    ("max-attempts-word", "AWS_MAX_ATTEMPTS", "lots", EC2, "attempts"),
    ("max-attempts-zero", "AWS_MAX_ATTEMPTS", "0", EC2, "attempts"),
    ("max-attempts-negative", "AWS_MAX_ATTEMPTS", "-1", EC2, "attempts"),
    ("endpoint-garbage", "AWS_ENDPOINT_URL", "::garbage::", EC2, "URL"),
    ("endpoint-half-ipv6", "AWS_ENDPOINT_URL", "http://[::1", EC2, "URL"),
    ("endpoint-bad-port", "AWS_ENDPOINT_URL", "http://host:99999", EC2, "URL"),
    ("ec2-endpoint-ftp", "AWS_ENDPOINT_URL_EC2", "ftp://example.com", EC2, "URL"),
    ("retry-mode", "AWS_RETRY_MODE", "sometimes", EC2, "legacy"),
    ("default-region", "AWS_DEFAULT_REGION", "us east", ["inventory", "show", "--from", "ec2"],
     "region"),
    ("region", "AWS_REGION", "../x", ["inventory", "show", "--from", "ec2"], "region"),
    ("config-file-folder", "AWS_CONFIG_FILE", "DIR", EC2, "not a file"),
    ("credentials-folder", "AWS_SHARED_CREDENTIALS_FILE", "DIR", EC2, "not a file"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "variable", "value", "argv", "words"), VARIABLES,
                         ids=[c[0] for c in VARIABLES])  # fmt: skip
def test_environment_variable(monkeypatch, capsys, tmp_path, case, variable, value, argv, words):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    for other in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(other, raising=False)
    places = {"FILE": tmp_path / "FILE", "DIR": tmp_path / "DIR", "LONG": tmp_path / LONG}
    monkeypatch.setenv(variable, str(places.get(value, value)))
    line = refused(monkeypatch, capsys, tmp_path, *argv)
    names("environment", variable, words)(line)


KERNEL_RECORDS = [
    ("a-list", "[1, 2]", None, "valid dictionary"),
    ("not-json", "{", None, "not valid JSON"),
    ("no-binary", '{"kernel": {}, "reason": "r", "probes": []}', "kernel.binary", "required"),
    ("binary-number", '{"kernel": {"binary": 1, "modules": "m", "version": "v", "origin": "o", '
     '"package": "p", "sha256": "s"}, "reason": "r", "probes": []}', "kernel.binary", "string"),
    ("not-utf8", b'{"kernel": "\xff"}', None, "UTF-8"),
    ("too-large", " " * (5 * 2**20) + "{}", None, "larger than"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "field", "words"), KERNEL_RECORDS,
                         ids=[c[0] for c in KERNEL_RECORDS])  # fmt: skip
def test_kernel_record(monkeypatch, capsys, tmp_path, case, text, field, words):
    record = tmp_path / "kernel" / "kernel.json"
    record.parent.mkdir()
    record.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv("WANLAB_KERNEL_DIR", str(record.parent))
    line = refused(monkeypatch, capsys, tmp_path, "fleet", "status")
    names(str(record), field, words)(line)
    assert line.endswith("run `wanlab fleet kernel --refresh` to choose again"), line


# A name too long to be a file, where a path is taken: (case, command, file named (TMP: the
# test's folder), field, words)
TOO_LONG = [
    ("run-out", ["run", "M", "-o", LONG, "-i", "INV"], LONG, "-o", "too long"),
    ("run-out-inside", ["run", "M", "-o", f"{LONG}/x", "-i", "INV"], f"{LONG}/x", "-o", "long"),
    ("predict-calibrate", ["predict", "M", "--calibrate", LONG], LONG, "--calibrate", ""),
    ("report", ["report", LONG], LONG, "cells.jsonl", "not a results folder"),
    ("report-compare", ["report", "--compare", LONG, "M"], LONG, "cells.jsonl", ""),
    ("scale-target", ["scale", LONG], LONG, None, "File name too long"),
    ("matrix", ["predict", f"{LONG}.toml"], f"{LONG}.toml", None, "File name too long"),
    ("key-file", ["netem", "apply", "1gbit", "-i", "LONGKEY", "--dry-run"], "TMP/LONGKEY",
     "hosts[0].key_file", "too long"),
    ("ec2-key-file", ["inventory", "show", "--from", "ec2", "--key-file", LONG], None,
     "--key-file", "too long"),
    ("trainer-dataset", ["predict", "DATASET"], "DATASET", "trainer.dataset", "neither"),
    ("profile-file", ["predict", "PROFILE"], "PROFILE", "axes.profiles[1]", "no such"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "file", "field", "words"), TOO_LONG,
                         ids=[c[0] for c in TOO_LONG])  # fmt: skip
def test_a_name_too_long(monkeypatch, capsys, tmp_path, case, argv, file, field, words):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    files = {
        "M": GOOD_MATRIX,
        "LONGKEY": HOST + f'key_file = "{LONG}"\n',
        "DATASET": with_trainer(f'dataset = "{LONG}"'),
        "PROFILE": GOOD_MATRIX.replace('"200mbit"', f'"{LONG}.toml"'),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "INV").write_text(HOST)
    line = refused(monkeypatch, capsys, tmp_path, *argv)
    names(file and file.replace("TMP", str(tmp_path)), field, words)(line)


# -- limits: a small input never costs unbounded time or memory (each refusal must return; the
# timeout is a guard, not a measurement) -----------------------------------------------------
def many(n: int, form: str = "{}") -> str:
    return "[" + ", ".join(f'"{form.format(i)}"' if form != "{}" else str(i + 1)
                           for i in range(n)) + "]"  # fmt: skip


HUGE_AXES = (
    f"[axes]\nprofiles = {many(100, '{}ms')}\ndp_degrees = {many(100)}\n"
    f"micro_batches = {many(100)}\nengines = {many(100, 'e{}')}\ndp_modes = {many(100, 'm{}')}\n"
    f"tcp = {many(100, 't{}')}\n"
)  # fmt: skip
"""Axes of 10^12 cells in a file of a few kilobytes."""
SMALL_HEAD = GOOD_MATRIX.split("[axes]")[0]

# (case, matrix text, field named, words)
LIMITS = [
    ("cells-1e14-max-1e15", SMALL_HEAD.replace('"t"', '"t"\nmax_cells = 1000000000000000\n'
                                               "repeats = 100") + HUGE_AXES,
     "matrix.max_cells", "100000"),
    ("cells-1e14-max-1e5", SMALL_HEAD.replace('"t"', '"t"\nmax_cells = 100000\nrepeats = 100')
     + HUGE_AXES, "axes", "makes 100000000000000 cells"),
    ("dp-1e7", GOOD_MATRIX.replace("[1, 2]", "[10000000]"), "axes.dp_degrees[0]", ""),
    ("batch-1e9", GOOD_MATRIX.replace("batch = 4", "batch = 1000000000"), "trainer.batch",
     "micro-batches"),
    ("layout-world", GOOD_MATRIX.replace("pipeline = 2\n", "").replace("[1, 2]", "[4096]")
     + 'layouts = ["tp2-pp4"]\n', "axes.dp_degrees[0]", "32768 ranks"),
    ("file-5mib", GOOD_MATRIX + "#" * (5 * 2**20) + "\n", None, "larger than 4194304 bytes"),
]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("case", "text", "field", "words"), LIMITS, ids=[c[0] for c in LIMITS])
def test_a_limit_is_refused_before_the_work(monkeypatch, capsys, tmp_path, case, text, field,
                                            words):  # fmt: skip
    path = tmp_path / "m.toml"
    path.write_text(text)
    for argv in (["predict", str(path)], ["run", str(path), "-o", "out", "-i", "x"]):
        names(str(path), field, words)(refused(monkeypatch, capsys, tmp_path, *argv))


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


# A FIFO where a file should be: nothing ever writes into it, so reading it would wait forever.
# (case, the FIFO's path in the test's folder, command, file named (TMP: that folder), field,
# words)
FIFOS = [
    ("matrix", "m.toml", ["predict", "m.toml"], "m.toml", None, "is not a file"),
    ("profile-file", "p.toml", ["predict", "PROFILES"], "PROFILES", "axes.profiles[1]",
     "is not a file"),
    ("kernel-record", "kernel/kernel.json", ["fleet", "status"], "TMP/kernel/kernel.json", None,
     "is not a file"),
    ("compared-matrix", "a/matrix.toml", ["report", "--compare", "a", "b"], "a/matrix.toml", None,
     "is not a file"),
    ("compared-predictions", "b/predictions.jsonl", ["report", "--compare", "a", "b"],
     "b/predictions.jsonl", None, "is not a file"),
    ("run-json", "a/run.json", ["report", "a"], "a/run.json", None, "is not a file"),
    ("inventory-key", "id", ["netem", "apply", "1gbit", "-i", "INV", "--dry-run"], "TMP/INV",
     "hosts[0].key_file", "is not a file"),
    ("ec2-key", "id", ["inventory", "show", "--from", "ec2", "--key-file", "id"], None,
     "--key-file", "is not a file"),
    ("aws-config", "aws-config", EC2, "environment", "AWS_CONFIG_FILE", "is not a file"),
]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("case", "where", "argv", "file", "field", "words"), FIFOS,
                         ids=[c[0] for c in FIFOS])  # fmt: skip
def test_a_fifo_is_refused_not_waited_on(monkeypatch, capsys, tmp_path, case, where, argv, file,
                                         field, words):  # fmt: skip
    for name in ("a", "b"):
        compared(tmp_path / name)
    (tmp_path / "INV").write_text(HOST + 'key_file = "id"\n')
    (tmp_path / "PROFILES").write_text(GOOD_MATRIX.replace('"200mbit"', '"p.toml"'))
    path = tmp_path / where
    path.unlink(missing_ok=True)
    fifo(path)
    monkeypatch.setenv("WANLAB_KERNEL_DIR", str(tmp_path / "kernel"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    line = refused(monkeypatch, capsys, tmp_path, *argv)
    names(file and file.replace("TMP", str(tmp_path)), field, words)(line)


@pytest.mark.timeout(60)
def test_a_fifo_for_the_fleets_state_is_no_state(monkeypatch, capsys, tmp_path):
    """`fleet status` with a FIFO where the local fleet's state file is: it answers."""
    monkeypatch.setenv("WANLAB_HOME", str(tmp_path))
    monkeypatch.setenv("WANLAB_KERNEL_DIR", str(tmp_path / "kernel"))
    fifo(tmp_path / "fleet-wl" / "fleet.json")
    code, stdout, stderr = run_cli(monkeypatch, capsys, "fleet", "status", "--json")
    assert code == 0 and json.loads(stdout)["topology"] is None, stderr


@pytest.mark.timeout(60)
def test_a_huge_results_file_is_refused_unread(monkeypatch, capsys, tmp_path):
    """A cells.jsonl over 1 GiB (sparse: it takes no disk) is refused by its size."""
    results = compared(tmp_path / "a")
    with open(results / "cells.jsonl", "r+b") as cells:
        cells.truncate(2**30 + 1)
    line = refused(monkeypatch, capsys, tmp_path, "report", str(results))
    names(str(results / "cells.jsonl"), None, "larger than 1073741824 bytes")(line)


# -- --json: stdout is exactly one JSON document (nothing on an error); the rest goes to stderr --
def one_json_document(stdout: str):
    """The one document stdout holds: json.loads refuses trailing text, and NaN or Infinity
    (which JSON does not have) is refused too."""

    def not_json(constant: str):
        raise AssertionError(f"{constant} in --json output")

    return json.loads(stdout, parse_constant=not_json)


TWO_STAGES = """
[matrix]
name = "two-stage"
[trainer]
model = "gpt3-xl"
batch = 4
pipeline = 2
recompute = true
iterations = 3
[axes]
profiles = ["default", "1gbit"]
dp_degrees = [1]
"""
LAB_FIGURES = ["--ceiling", "200mbit", "--lab-latency", "0.1ms", "--lab-receive-share", "0.72"]

# (case, command (M: a matrix, R: a results folder, INV: an inventory, T: a scale target), what
# the document holds, what else it may write)
JSON_COMMANDS = [
    ("predict", ["predict", "M", "--json"], lambda rows: len(rows) == 4, []),
    ("predict-store", ["predict", "M", "--calibrate", "R", "--store", "--json"],
     lambda rows: all(row["measured_iteration_s"] > 0 for row in rows[:1]),
     ["R/predictions.jsonl"]),
    ("inventory-show", ["inventory", "show", "-i", "INV", "--json"],
     lambda fleet: fleet["hosts"][0]["name"] == "a", []),
    ("netem-dry-run", ["netem", "apply", "10ms", "-i", "INV", "--dry-run", "--json"],
     lambda answers: set(answers) == {"a"}, []),
    ("fleet-status", ["fleet", "status", "--json"], lambda status: status["hosts"] == [], []),
    ("scale", ["scale", "T", "--to", "INV", *LAB_FIGURES, "-o", "s.toml", "--json"],
     lambda summary: summary["written"] == "s.toml", ["s.toml"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "holds", "written"), JSON_COMMANDS,
                         ids=[c[0] for c in JSON_COMMANDS])  # fmt: skip
def test_json_output_is_one_document(monkeypatch, capsys, tmp_path, case, argv, holds, written):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANLAB_KERNEL_DIR", str(tmp_path / "kernel"))
    monkeypatch.setenv("WANLAB_FLEET_PREFIX", "wljson")  # a fleet no test brings up
    (tmp_path / "M").write_text(GOOD_MATRIX)
    (tmp_path / "T").write_text(TWO_STAGES)
    (tmp_path / "INV").write_text(HOST)
    write_results(tmp_path / "R", [finished_cell(), finished_cell("200mbit", total=0.7)])
    before = files_under(tmp_path)
    code, stdout, stderr = run_cli(monkeypatch, capsys, *argv)
    assert code == 0, stderr
    assert holds(one_json_document(stdout)), stdout
    made = set(files_under(tmp_path)) - set(before)
    assert made == {str(tmp_path / path) for path in written}, made
    if case == "predict-store":
        assert stderr.startswith("predictions in "), stderr


def finite_or_null(value):
    """`value` with every NaN and infinity as None (what JSON's null reads back as)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_null(item) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none()),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=5), inner,
                                                            max_size=4)),
                    max_leaves=20))  # fmt: skip
def test_json_output_holds_no_number_json_lacks(value):
    """Whatever a --json command is given to print: one strict JSON document, each NaN or
    infinity in it a null."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_json(value)
    assert one_json_document(printed.getvalue()) == finite_or_null(value)


# -- a sample through the installed entry point in a subprocess: exactly what a user runs -------
def test_the_command_refuses_in_a_subprocess(wanlab, tmp_path, monkeypatch):
    """Three refusals and one --json success through `wanlab` as a process of its own."""
    a = compared(tmp_path / "a", b'[matrix]\nname = "\xff"\n')
    b = compared(tmp_path / "b")
    matrix = tmp_path / "m.toml"
    matrix.write_text(GOOD_MATRIX)
    for argv, blamed in (
        (["scale", str(matrix), "--ceiling", "0bit"], "wanlab: error: --ceiling: "),
        (["report", "--compare", str(a), str(b)], f"wanlab: error: {a / 'matrix.toml'}: "),
        (["predict", str(matrix), "--calibrate-cell", "x"], "wanlab: error: --calibrate-cell: "),
    ):
        done = wanlab(*argv)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == "", done
        assert len(lines) == 1 and lines[0].startswith(blamed), done.stderr
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "lots")
    done = wanlab("inventory", "show", "--from", "ec2", "--region", "us-east-1", "--json")
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == "wanlab: error: environment: AWS_MAX_ATTEMPTS: 'lots' is not a number "\
                          "of attempts, 1 to 999\n"  # fmt: skip
    write_results(tmp_path / "r", [finished_cell(), finished_cell("200mbit", total=0.7)])
    done = wanlab("predict", str(matrix), "--calibrate", str(tmp_path / "r"), "--store", "--json")
    assert done.returncode == 0 and len(one_json_document(done.stdout)) == 4, done


def test_the_trainer_refuses_an_interface_not_there(tmp_path):
    """`python -m trainer` (a rank) with $WANLAB_IFACE naming no interface of the host."""
    env = dict(os.environ, WANLAB_IFACE="no such if", PYTHONPATH=str(Path(__file__).parent.parent))
    done = subprocess.run([sys.executable, "-m", "trainer", "--iterations", "2"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "trainer: error: environment: WANLAB_IFACE: 'no such if' is no interface of this host"
    ], done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content", ["FIFO", "[1, 2]", '{"kernel": 3, "reason": "r"}', "{"])
def test_a_delay_nodes_kernel_record_that_is_not_one(tmp_path, content):
    """`inventory check` says which kernel a delay node boots from its mailbox's kernel.json:
    one that is a FIFO, not an object, or not JSON is reported as such, never waited on."""
    mailbox = tmp_path / "mailbox"
    mailbox.mkdir()
    if content == "FIFO":
        fifo(mailbox / "kernel.json")
    else:
        (mailbox / "kernel.json").write_text(content)
    path = tmp_path / "inventory.toml"
    path.write_text(f'[fleet.delay_node]\nmailbox = "{mailbox}"\ninterfaces = {{ a = "ifb0" }}\n'
                    + HOST)  # fmt: skip
    described = lab.node_kernel(load_inventory(path))
    assert described["kernel"] is None and str(mailbox / "kernel.json") in described["reason"]
    assert node_kernel_line(described) == described["reason"]
