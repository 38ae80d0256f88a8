"""What the Ansible and ssh_config readers refuse: in one line naming the file, the line or key
and the construct, exit code 2 through the real entry point, and nothing run (every command
below would create a marker file). Past the bounded-work limits a small file is refused too."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import run_cli

# (case, file name, text with {marker}, options after the file, field named, words)
REFUSED = [
    ("match-exec", "config", 'Host a\n  HostName 10.0.0.1\nMatch exec "touch {marker}"\n'
     "  User x\n", [], "line 3", "Match exec"),
    ("match-negated-exec", "config", "Host a\n  HostName 10.0.0.1\nMatch !exec=\"touch {marker}\""
     "\n  User x\n", [], "line 3", "Match exec"),
    ("match-exec-included", "config", "Include {dir}/inc.conf\nHost a\n  HostName 10.0.0.1\n",
     [], "line 1", "Match exec"),
    ("proxycommand", "config", "Host a\n  HostName 10.0.0.1\n  ProxyCommand touch {marker}\n", [],
     "a.ProxyCommand", "line 3"),
    ("localcommand", "config", "Host a\n  HostName 10.0.0.1\n  PermitLocalCommand yes\n"
     "  LocalCommand touch {marker}\n", [], "a.LocalCommand", "line 4"),
    ("knownhostscommand", "config", "Host a\n  HostName 10.0.0.1\n"
     "  KnownHostsCommand /bin/touch {marker}\n", [], "a.KnownHostsCommand", "line 3"),
    ("jump-proxycommand", "config", "Host gw\n  HostName 10.0.0.9\n  ProxyCommand touch {marker}\n"
     "Host a\n  HostName 10.0.0.1\n  ProxyJump gw\n", ["--hosts", "a"],
     "a.ProxyJump.ProxyCommand", "line 3"),
    ("jump-chain", "config", "Host a\n  HostName 10.0.0.1\n  ProxyJump 10.0.0.2,10.0.0.3\n", [],
     "a.ProxyJump", "only one jump host"),
    ("jump-of-jump", "config", "Host gw\n  HostName 10.0.0.9\n  ProxyJump 10.0.0.8\n"
     "Host a\n  HostName 10.0.0.1\n  ProxyJump gw\n", ["--hosts", "a"], "a.ProxyJump",
     "only one jump host"),
    ("jump-loop", "config", "Host a\n  HostName 10.0.0.1\n  ProxyJump b\nHost b\n"
     "  HostName 10.0.0.2\n  ProxyJump a\n", [], "a.ProxyJump", "only one jump host"),
    ("two-identities", "config", "Host a\n  HostName 10.0.0.1\n  IdentityFile /k/a\n"
     "Host *\n  IdentityFile /k/b\n", [], "a.IdentityFile", "2 keys"),
    ("brackets-alias", "config", "Host gpu[12]\n  HostName 10.0.0.1\n", [], "gpu[12].name", ""),
    ("include-loop", "config", "Include {dir}/config\nHost a\n  HostName 10.0.0.1\n", [],
     "Include", "loop"),
    ("canonicalize", "config", "Host a\n  HostName a\n  CanonicalizeHostname yes\n", [],
     "a.CanonicalizeHostname", "DNS"),
    ("ansible-script", "hosts", "#!/bin/sh\ntouch {marker}\n", [], None, "as a script"),
    ("ansible-plugin", "h.yml", "plugin: constructed\n", [], "plugin", "plugin"),
    ("ansible-vault", "h.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n", [], "line 1", "vault"),
    ("ansible-proxycommand", "h.ini", "a.example ansible_ssh_common_args='-o ProxyCommand=\"touch "
     "{marker}\"'\n", [], "a.example.ansible_ssh_common_args", "would run a command"),
    ("ansible-template", "h.yml", "all:\n  hosts:\n    a.example:\n      ansible_host: \"{{{{ "
     "lookup('pipe', 'touch {marker}') }}}}\"\n", [], "a.example.ansible_host", "template"),
    ("ansible-connection-local", "h.ini", "a.example ansible_connection=local\n", [],
     "a.example.ansible_connection", "not reached by SSH"),
    ("ansible-executable", "h.ini", "a.example ansible_ssh_executable=/tmp/evil\n", [],
     "a.example.ansible_ssh_executable", "another ssh program"),
    ("ansible-two-jumps", "h.ini", "a.example ansible_ssh_common_args='-J 10.0.0.2' "
     "ansible_ssh_extra_args='-J 10.0.0.3'\n", [], "a.example.ansible_ssh_extra_args", "2 jump"),
    ("ansible-jump-chain", "h.ini", "a.example ansible_ssh_extra_args='-J 10.0.0.2,10.0.0.3'\n",
     [], "a.example.ansible_ssh_extra_args.ProxyJump", "only one jump host"),
    ("ansible-v6-name", "h.yml", "all:\n  hosts:\n    '2001:db8::6':\n", [], "2001:db8::6.name",
     ""),
    ("ansible-self-child", "h.ini", "[a]\nh.example\n[a:children]\na\n", [], "a",
     "contain each other"),
    ("ansible-huge-range", "h.ini", "n[1:1000000000].example\n", [], "line 1",
     "more than 10000 hosts"),
    ("ansible-ranges-multiply", "h.yml", "all:\n  hosts:\n    n[1:200]-[1:200]:\n", [],
     "all.hosts.n[1:200]-[1:200]", "more than 10000 hosts"),
    ("ansible-deep-groups", "h.yml", "all:\n  children:\n" + "".join(
        " " * (4 + 4 * i) + f"g{i}:\n" + " " * (6 + 4 * i) + "children:\n" for i in range(70)), [],
     None, "nested deeper than 64"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "name", "text", "options", "field", "words"), REFUSED,
                         ids=[c[0] for c in REFUSED])  # fmt: skip
def test_refused_in_one_line_and_nothing_runs(
    monkeypatch, capsys, tmp_path, case, name, text, options, field, words
):
    marker = tmp_path / "ran"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inc.conf").write_text(f'Match exec "touch {marker}"\n  User x\n')
    path = tmp_path / name
    path.write_text(text.replace("{marker}", str(marker)).replace("{dir}", str(tmp_path))
                    .replace("{{", "{").replace("}}", "}"))  # fmt: skip
    if case == "ansible-script":
        path.chmod(0o755)
    source = "ssh-config" if name == "config" else "ansible"
    argv = ["inventory", "show", "--from", source, str(path), *options]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *argv)
    assert code == 2 and stdout == "", stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    where = lines[0].removeprefix("wanlab: error: ")
    if field is not None:
        assert f": {field}: " in where, where
    assert words in where, where
    assert not marker.exists(), "reading the inventory ran a command"


def test_five_thousand_host_blocks_are_refused(monkeypatch, capsys, tmp_path):
    """Each host is one `ssh -G`: past MAX_HOSTS aliases the file is refused before any runs;
    --hosts narrows the same file to a few, read at once."""
    path = tmp_path / "config"
    path.write_text("".join(f"Host h{i}\n  HostName 10.1.{i // 250}.{i % 250 + 1}\n"
                            for i in range(5000)))  # fmt: skip
    code, stdout, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from",
                                   "ssh-config", str(path))  # fmt: skip
    assert code == 2 and "5000 Host aliases match '*'; at most 256 are read" in stderr, stderr
    argv = ["inventory", "show", "--from", "ssh-config", str(path), "--hosts", "h499?", "--json"]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *argv)
    assert code == 0, stderr


def test_include_deeper_than_openssh_reads_is_refused(monkeypatch, capsys, tmp_path):
    for level in range(20):
        (tmp_path / f"c{level}").write_text(f"Include {tmp_path}/c{level + 1}\n")
    (tmp_path / "c20").write_text("Host a\n  HostName 10.0.0.1\n")
    code, _, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ssh-config",
                              str(tmp_path / "c0"))  # fmt: skip
    assert code == 2 and "Include: nested deeper than 16" in stderr, stderr


def test_yaml_anchors_cannot_multiply_work(monkeypatch, capsys, tmp_path):
    """A few lines of anchors name the same groups over and over; the walk is bounded."""
    lines = ["a0: &a0 {hosts: {h.example: }}"]
    lines += [f"a{i}: &a{i} {{children: {{" + ", ".join(f"c{i}{j}: *a{i - 1}" for j in range(9))
              + "}}" for i in range(1, 9)]  # fmt: skip
    path = tmp_path / "h.yml"
    path.write_text("\n".join(lines) + "\n")
    code, _, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ansible",
                              str(path))  # fmt: skip
    assert code == 2 and "over 50000 entries" in stderr, stderr


def test_show_states_the_host_order(monkeypatch, capsys):
    examples = Path(__file__).parent.parent / "inventory" / "examples"
    code, stdout, _ = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ansible",
                              str(examples / "gpus.yml"))  # fmt: skip
    assert code == 0 and "host order: as `ansible all --list-hosts` lists them" in stdout
    code, stdout, _ = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ssh-config",
                              str(examples / "bastion.ssh_config"))  # fmt: skip
    assert code == 0 and "host order: the order the Host lines name them" in stdout
