"""Who the hosts are and how to reach them: models, loaders, the SSH layer, checking and
deploying hosts. Every package builds on this one.

- the fleet: `models.py` (host and fleet models), `loader.py` (the TOML inventory), `names.py`
  (the one rule for names that become paths), `errors.py` (`ConfigError`, the one error for bad
  input, and the one pydantic-to-ConfigError path);
- other sources of the same fleet: `ansible.py` with `ansiblefile.py` (Ansible inventories),
  `sshconfig.py` with `sshscan.py` (SSH client configurations, through `ssh -G`), `ec2.py`,
  sharing `sources.py`, chosen by `fromsource.py`; `freeze.py` writes any of them as TOML;
- files: `tomlfile.py` (reading any file wanlab reads, with one clear error), `safewrite.py`
  (writing any file wanlab writes, never through a link), `environment.py` (the WANLAB_*
  folders);
- hosts: `ssh.py` (the one SSH layer: parallel runs, uploads, long-running streams, strict host
  keys, one jump host), `ship.py` (wanlab's code to hosts as a zip), `ports.py`, `check.py` with
  `host_facts.py` (`inventory check`), `deploy.py` with `host_install.py` (`wanlab deploy`).
"""
