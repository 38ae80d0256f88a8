"""Differential tests: every legal inventory below is read by the reference tool and by wanlab,
and every host's name, address, user, port, identity file and jump host must agree.

References: ansible-core itself, in one separate process for all cases (tests/ansible_reference.py:
its host list is what `ansible GROUP --list-hosts` prints, its variables what `ansible-inventory
--list` prints, and the ssh connection plugin's own option lookup turns those into address, user,
port and key); OpenSSH's `ssh -G` for ssh_config, `ssh -v` for the identity files ssh actually
loads (tokens expanded) and for the jump host ssh actually runs (its `Executing proxy command`
line). Every jump host here is a loopback address with nothing listening on port 9, so the jump
ssh starts fails at once and nothing leaves this machine."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from clirun import run_cli

from inventory.ansible import load_ansible
from inventory.sshconfig import load_ssh_config

pytest.importorskip("ansible")
REFERENCE_SCRIPT = Path(__file__).with_name("ansible_reference.py")

# (case, {file: text}, group). The first file is the inventory; others are host_vars/group_vars.
ANSIBLE_CASES = [
    ("yaml-basic", {"h.yml": "all:\n  hosts:\n    a.example:\n    b.example:\n"}, "all"),
    ("ini-basic", {"h.ini": "a.example\nb.example ansible_port=2200\n"}, "all"),
    ("yaml-children-before-hosts", {"h.yml": (
        "all:\n  children:\n    g:\n      children:\n        k:\n          hosts: {k1.example: }\n"
        "      hosts: {g1.example: }\n  hosts:\n    top.example:\n")}, "all"),
    ("yaml-hosts-before-children", {"h.yml": (
        "all:\n  children:\n    g:\n      hosts: {g1.example: }\n      children:\n"
        "        k:\n          hosts: {k1.example: }\n")}, "g"),
    ("yaml-host-port", {"h.yml": "all:\n  hosts:\n    a.example:2222:\n    10.0.0.5:2200:\n"},
     "all"),
    ("ini-host-port", {"h.ini": "[g]\na.example:2222\n10.0.0.5:2201 ansible_user=ops\n"}, "all"),
    ("yaml-bracketed-port", {"h.yml": "all:\n  hosts:\n    '[10.0.0.9]:2222':\n    v6:\n"
                                      "      ansible_host: '2001:db8::6'\n"}, "all"),
    ("port-first-mention-wins", {"h.ini": "[a]\nx.example:2222\n[b]\nx.example:3333\n"}, "all"),
    ("ini-header-comment", {"h.ini": "[gpus]  # the GPU hosts\ng1.example\n[gpus:vars]  # vars\n"
                                     "ansible_user=ubuntu\n"}, "gpus"),
    ("ini-comments-and-semicolons", {"h.ini": "; a comment\n# another\n[g]\n"
                                              "a.example ansible_user=x # trailing\n"}, "all"),
    ("ssh-host-wins", {"h.yml": "all:\n  hosts:\n    a:\n      ansible_ssh_host: 10.0.0.7\n"
                                "      ansible_host: 10.0.0.8\n"}, "all"),
    ("ssh-names-across-groups", {"h.ini": (
        "[g]\na ansible_host=10.0.0.1\n[g:vars]\nansible_ssh_host=10.0.0.2\nansible_ssh_user=gu\n"
        "ansible_user=hu\nansible_ssh_port=2022\n")}, "all"),
    ("private-key-names", {"h.yml": (
        "all:\n  vars:\n    ansible_ssh_private_key_file: /keys/ssh.pem\n  hosts:\n"
        "    a.example:\n      ansible_private_key_file: /keys/a.pem\n    b.example:\n"
        "      ansible_private_key_file: ~/.ssh/b.pem\n")}, "all"),
    ("relative-key", {"h.ini": "a.example ansible_private_key_file=keys/a.pem\n"}, "all"),
    ("group-priority", {"h.yml": (
        "all:\n  children:\n    x:\n      vars: {ansible_user: xu, ansible_group_priority: 5}\n"
        "      hosts: {a.example: }\n    y:\n      vars: {ansible_user: yu}\n"
        "      hosts: {a.example: }\n")}, "all"),
    ("group-priority-ini", {"h.ini": (
        "[x]\na.example\n[y]\na.example\n[x:vars]\nansible_port=2001\nansible_group_priority=9\n"
        "[y:vars]\nansible_port=2002\n")}, "all"),
    ("depth-beats-name", {"h.yml": (
        "all:\n  vars: {ansible_user: allu}\n  children:\n    b:\n      vars: {ansible_user: bu}\n"
        "      hosts: {h.example: }\n    a:\n      vars: {ansible_user: au, ansible_port: 2}\n"
        "      children:\n        deep:\n          vars: {ansible_port: 3}\n"
        "          hosts: {h.example: }\n")}, "all"),
    ("group-vars-files", {
        "inv/h.yml": "all:\n  children:\n    gpus:\n      hosts: {g1.example: , g2.example: }\n",
        "inv/group_vars/all.yml": "ansible_user: fromall\nansible_port: 2000\n",
        "inv/group_vars/gpus.yaml": "ansible_port: 2100\n",
        "inv/host_vars/g2.example.json": '{"ansible_port": 2200, "ansible_user": "own"}\n'},
     "all"),
    ("group-vars-folders", {
        "inv/h.ini": "[gpus]\ng1.example ansible_user=inline\ng2.example\n",
        "inv/group_vars/gpus/10-port.yml": "ansible_port: 2300\n",
        "inv/group_vars/gpus/20-user": "ansible_user: folder\n",
        "inv/group_vars/gpus/.hidden.yml": "ansible_user: hidden\n",
        "inv/group_vars/gpus/notes.txt": "ansible_user: txt\n",
        "inv/host_vars/g1.example/main.yml": "ansible_port: 2400\n"}, "gpus"),
    ("group-vars-all-beats-groups", {
        "inv/h.yml": "all:\n  children:\n    g:\n      vars: {ansible_user: inventory}\n"
                     "      hosts: {a.example: }\n",
        "inv/group_vars/all": "ansible_user: groupvarsall\n"}, "all"),
    ("host-vars-first-suffix", {
        "inv/h.ini": "a.example\n",
        "inv/host_vars/a.example": "ansible_port: 2501\n",
        "inv/host_vars/a.example.yml": "ansible_port: 2502\n"}, "all"),
    ("ranges", {"h.ini": "[g]\nnode[01:03].example\nr[a:c]-[1:2].example\nx[8:12:2].example\n"},
     "all"),
    ("range-open-start", {"h.yml": "all:\n  hosts:\n    n[:2].example:\n"}, "all"),
    ("ini-literal-values", {"h.ini": "[g]\na.example ansible_port=\"2022\"\n[g:vars]\n"
                                     "ansible_user='quoted'\nwanlab_region=us-east-1\n"}, "all"),
    ("ini-pending-children", {"h.ini": (
        "[parent:children]\nkid\n[kid]\nk.example\n[parent]\np.example\n")}, "all"),
    ("ini-ungrouped-first", {"h.ini": "u.example\n[g]\ng.example\n"}, "all"),
    ("group-defined-twice", {"h.yml": (
        "g:\n  hosts: {a.example: {ansible_user: one}}\nh:\n  children:\n    g:\n"
        "      hosts: {b.example: , a.example: {ansible_port: 2}}\n")}, "all"),
    ("top-level-groups", {"h.yml": "web:\n  hosts: {w.example: }\ndb:\n  hosts: {d.example: }\n"},
     "all"),
    ("json-inventory", {"h.json": '{"all": {"hosts": {"j.example": {"ansible_port": 2600}}}}'},
     "all"),
    ("jump-common-args", {"h.yml": (
        "all:\n  vars:\n    ansible_ssh_common_args: '-o ProxyJump=ops@127.0.0.1:9'\n  hosts:\n"
        "    a.example:\n")}, "all"),
    ("jump-extra-args-J", {"h.ini": "a.example ansible_ssh_extra_args='-J jump@127.0.0.2:9'\n"},
     "all"),
    ("jump-o-joined", {"h.ini": "[g]\na.example\n[g:vars]\nansible_ssh_common_args="
                                "'-oProxyJump=127.0.0.3:9 -o ServerAliveInterval=30'\n"}, "all"),
    ("jump-v6", {"h.yml": "all:\n  hosts:\n    a.example:\n"
                          "      ansible_ssh_extra_args: -J root@[::1]:9\n"}, "all"),
    ("group-selected", {"h.ini": "[a]\nx.example\n[b]\ny.example\n[c:children]\nb\n"}, "c"),
]  # fmt: skip

SSH_CASES = [
    ("basic", "Host a\n  HostName 10.0.0.1\n  User ops\n  Port 2022\n"),
    ("first-obtained-wins", "Host a\n  HostName 10.0.0.1\n  User first\nHost *\n  User second\n"
                            "  Port 2200\n"),
    ("star-before", "Host *\n  User star\nHost a\n  HostName 10.0.0.2\n  User own\n"),
    ("equals-and-case", "host=a\n  hostname=10.0.0.3\n  USER = ops\n  port=2000\n"),
    ("trailing-comment", "Host a # the a host\n  HostName 10.0.0.4 # its address\n"
                         "  User ops # login\n"),
    ("brackets-are-literal", "Host gpu1\n  HostName 10.0.0.5\nHost gpu[12]\n  User never\n", "gpu1",
     ["gpu1"]),
    ("negation", "Host a b\n  HostName 10.0.0.6\nHost b\n  Port 2\nHost * !b\n  User nb\n"),
    ("hostname-token", "Host a.short\n  HostName %h.example.com\n"),
    ("proxycommand-none", "Host a\n  HostName 10.0.0.7\n  ProxyCommand none\n"),
    ("proxyjump-none", "Host a\n  HostName 10.0.0.8\n  ProxyJump none\n"),
    ("match-host", "Host a\n  HostName 10.0.0.9\nMatch host 10.0.0.9\n  User matched\n"),
    ("match-originalhost", "Match originalhost a\n  Port 2400\nHost a\n  HostName 10.0.1.1\n"),
    ("identity-one", "Host a\n  HostName 10.0.1.2\n  IdentityFile /keys/a.pem\n"),
    ("identity-tilde", "Host a\n  HostName 10.0.1.3\n  IdentityFile ~/.ssh/a.pem\n"),
    ("identity-tokens", "Host tok\n  HostName 127.0.0.1\n  Port {port}\n  User bob\n"
                        "  IdentityFile ~/.ssh/k-%n-%h-%p-%r-%u-%d-%i-%L-%l-%C-%k-%%\n"),
    ("identity-relative", "Host rel\n  HostName 127.0.0.1\n  Port {port}\n"
                          "  IdentityFile keys/%n\n"),
    ("include-absolute-glob", "Include {dir}/conf.d/*.conf\nHost a\n  HostName 10.0.1.4\n", "*",
     ["a", "b"]),
    ("include-in-block", "Host a\n  HostName 10.0.1.5\n  Include {dir}/conf.d/*.conf\n", "a",
     ["a"]),
    ("jump-alias", "Host gw\n  HostName 127.0.0.1\n  Port 9\n  User jumper\n"
                   "  IdentityFile /keys/gw.pem\nHost a\n  HostName 10.0.1.6\n  ProxyJump gw\n"),
    ("jump-inline", "Host a\n  HostName 10.0.1.7\n  ProxyJump ops@127.0.0.4:9\n"),
    ("jump-v6", "Host a\n  HostName 10.0.1.8\n  ProxyJump root@[::1]:9\n"),
    ("jump-uri", "Host a\n  HostName 10.0.1.9\n  ProxyJump ssh://u@127.0.0.5:9\n"),
    ("jump-user-from-config", "Host 127.0.0.6\n  User fromconfig\n  Port 9\n"
                              "Host a\n  HostName 10.0.2.1\n  ProxyJump 127.0.0.6\n"),
]  # fmt: skip
INCLUDED = {"conf.d/10-user.conf": "Host a\n  User included\n  Port 2600\n",
            "conf.d/20-other.conf": "Host b\n  HostName 10.0.9.9\n"}  # fmt: skip


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / next(iter(files))


@pytest.fixture(scope="module")
def ansible_cases(tmp_path_factory) -> dict[str, tuple[Path, Path, list[dict]]]:
    """Every Ansible case written to its own folder, with ansible-core's reading of it (one
    process for all cases, each in its folder): case -> (folder, inventory, its hosts)."""
    cases = {}
    for case, files, group in ANSIBLE_CASES:
        root = tmp_path_factory.mktemp(case)
        cases[case] = {"dir": str(root), "path": str(write_files(root, files)), "group": group}
    done = subprocess.run([sys.executable, str(REFERENCE_SCRIPT)], input=json.dumps(list(
        cases.values())), capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    answers = json.loads(done.stdout)
    return {case: (Path(spec["dir"]), Path(spec["path"]), [reference_host(h) for h in hosts])
            for (case, spec), hosts in zip(cases.items(), answers, strict=True)}  # fmt: skip


def reference_host(options: dict) -> dict:
    """A host as ansible-core's ssh connection would reach it (jump host: the one ssh itself
    runs for those ssh arguments)."""
    args = " ".join(options[n] or "" for n in ("ssh_args", "ssh_common_args", "ssh_extra_args"))
    return {
        "name": options["name"],
        "address": options["host"],
        "user": options["remote_user"] or "root",  # unset: wanlab's default (README)
        "port": options["port"] or 22,
        "key_file": options["private_key_file"],
        "jump": ssh_jump_reference(["-F", "/dev/null", *shlex.split(args)], "target.invalid"),
    }


def ssh_g(argv: list[str]) -> dict[str, list[str]]:
    done = subprocess.run(["ssh", "-G", *argv], capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    options: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        keyword, _, value = line.partition(" ")
        options.setdefault(keyword, []).append(value)
    return options


def ssh_jump_reference(argv: list[str], host: str) -> dict | None:
    """The jump host ssh itself runs for `ssh ARGV HOST`: its `Executing proxy command: exec
    ssh [-l U] [-p P] -W ... J` line, then J read by `ssh -G` with those options."""
    if ssh_g([*argv, host]).get("proxyjump", ["none"])[0] == "none":
        return None
    done = subprocess.run(["ssh", "-v", *argv, "-o", "BatchMode=yes", "-o", "ConnectTimeout=2",
                           host, "true"], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    line = next(x for x in done.stderr.splitlines() if "Executing proxy command" in x)
    words = shlex.split(line.split("exec ", 1)[1])
    config = argv[: argv.index("-F") + 2] if "-F" in argv else []
    jump_argv = [*config]
    for flag in ("-l", "-p"):
        if flag in words:
            jump_argv += [flag, words[words.index(flag) + 1]]
    options = ssh_g([*jump_argv, words[-1]])
    address = options["hostname"][0]
    assert address.startswith("127.") or address == "::1", "jump hosts here stay on loopback"
    return {"address": address, "user": options["user"][0], "port": int(options["port"][0]),
            "key_file": identity(options, None)}  # fmt: skip


DEFAULT_KEYS = None


def identity(options: dict[str, list[str]], loaded: list[str] | None) -> str | None:
    """The one identity file ssh uses (None: only its defaults), `loaded` being what `ssh -v`
    reported where the configuration has tokens."""
    global DEFAULT_KEYS
    if DEFAULT_KEYS is None:
        DEFAULT_KEYS = ssh_g(["-F", "/dev/null", "x.invalid"])["identityfile"]
    keys = options.get("identityfile", [])
    if keys == DEFAULT_KEYS:
        return None
    assert len(keys) == 1, keys
    key = loaded[0] if loaded else os.path.expanduser(keys[0])
    return str(Path.cwd() / key)


def wanlab_hosts(fleet) -> list[dict]:
    return [{
        "name": h.name, "address": h.address, "user": h.user, "port": h.port,
        "key_file": str(h.key_file) if h.key_file else None,
        "jump": h.jump and {"address": h.jump.address, "user": h.jump.user, "port": h.jump.port,
                            "key_file": str(h.jump.key_file) if h.jump.key_file else None},
    } for h in fleet.hosts]  # fmt: skip


def normalized(hosts: list[dict]) -> list[dict]:
    """Addresses in wanlab's one spelling (IPv6 canonical, names in lower case)."""
    from inventory.models import normalized_address

    for host in hosts:
        host["address"] = normalized_address(host["address"])
        if host["jump"]:
            host["jump"]["address"] = normalized_address(host["jump"]["address"])
    return hosts


@pytest.mark.parametrize("case", [c[0] for c in ANSIBLE_CASES])
def test_ansible_reads_as_ansible_core(ansible_cases, monkeypatch, case):
    folder, path, reference = ansible_cases[case]
    monkeypatch.chdir(folder)
    reference = normalized(reference)
    assert reference, "the reference found no hosts"
    group = next(c[2] for c in ANSIBLE_CASES if c[0] == case)
    assert wanlab_hosts(load_ansible(path, group)) == reference


@pytest.fixture(scope="module")
def listener():
    """A loopback TCP port that accepts and then closes: ssh connects, loads its identity
    files (printing them with -v), and gives up at the missing banner."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def loaded_identities(config: Path, alias: str) -> list[str]:
    done = subprocess.run(["ssh", "-v", "-F", str(config), "-o", "BatchMode=yes", alias, "true"],
                          capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    found = re.findall(r"identity file (\S+) type", done.stderr)
    return [path for path in found if not path.endswith("-cert")]


def ssh_reference(config: Path, alias: str) -> dict:
    options = ssh_g(["-F", str(config), alias])
    raw = options.get("identityfile", [])
    tokens = any("%" in key for key in raw) or any(not key.startswith(("/", "~")) for key in raw)
    loaded = loaded_identities(config, alias) if tokens else None
    return {"name": alias, "address": options["hostname"][0], "user": options["user"][0],
            "port": int(options["port"][0]), "key_file": identity(options, loaded),
            "jump": ssh_jump_reference(["-F", str(config)], alias)}  # fmt: skip


@pytest.mark.parametrize("case", SSH_CASES, ids=[c[0] for c in SSH_CASES])
def test_ssh_config_reads_as_openssh(tmp_path, monkeypatch, listener, case):
    """Each alias read as ssh reads it; the aliases those of the Host lines without a wildcard
    or negation, in file order (ssh has no list of hosts: this is wanlab's order)."""
    _, text, pattern, names = (*case, "*", None)[:4]
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, INCLUDED)
    config = tmp_path / "config"
    config.write_text(text.replace("{port}", str(listener)).replace("{dir}", str(tmp_path)))
    fleet = load_ssh_config(config, pattern)
    reference = normalized([ssh_reference(config, host.name) for host in fleet.hosts])
    assert wanlab_hosts(fleet) == reference
    if names is None:
        lines = re.findall(r"(?im)^\s*host[\s=]+(.*)$", text)
        words = [w for line in lines for w in line.split("#")[0].split()]
        names = list(dict.fromkeys(w for w in words if not set(w) & set("*?!")))
    assert fleet.names == names


def test_cli_shows_what_the_references_read(ansible_cases, monkeypatch, capsys, tmp_path):
    """A sample through the real entry point: `wanlab inventory show --json` for one Ansible
    inventory (with group_vars) and one ssh_config (with a jump host)."""
    _, path, reference = ansible_cases["group-vars-folders"]
    group = next(c[2] for c in ANSIBLE_CASES if c[0] == "group-vars-folders")
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ansible",
                                   str(path), "--group", group, "--json")  # fmt: skip
    assert code == 0, stderr
    shown = [{k: h[k] for k in ("name", "address", "user", "port", "key_file", "jump")}
             for h in json.loads(stdout)["hosts"]]  # fmt: skip
    assert shown == normalized(reference)
    config = tmp_path / "config"
    config.write_text(next(c[1] for c in SSH_CASES if c[0] == "jump-alias"))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from",
                                   "ssh-config", str(config), "--hosts", "a", "--json")  # fmt: skip
    assert code == 0, stderr
    host = json.loads(stdout)["hosts"][0]
    assert {k: host[k] for k in ("address", "user", "port", "jump")} == {
        k: v for k, v in ssh_reference(config, "a").items() if k in ("address", "user", "port",
                                                                    "jump")}  # fmt: skip
