"""A catalogue of malformed and hostile input: every one gets one line naming the file (or the
command line, or the environment) and the field, exit code 2, and no connection to any host.

The real `wanlab` entry point runs in process with SSH connections forbidden (a connection
attempt fails the test). The parsers of units, profiles and pair matrices are also fed
generated input (hypothesis): whatever they are given, they answer with a value or a
ConfigError, never another exception.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from clirun import GOOD_MATRIX, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.cli import main
from inventory.errors import ConfigError
from netem.pairs import pair_matrix_from_data
from netem.profile import parse_profile
from netem.units import parse_percent, parse_rate_bps, parse_time_ms

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
    ("key-is-folder", HOST + 'key_file = "."\n', "hosts[0].key_file", "does not exist"),
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
    ("predict-native-rate", ["predict", "MATRIX", "--native-rate", "fast"], "--native-latency"),
    (
        "scale-ceiling",
        ["scale", "MATRIX", "--ceiling", "fast", "--lab-latency", "1ms"],
        "--ceiling/--lab-latency",
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
