"""A stand-alone script run on each host (stdlib only) that installs wanlab into its environment.

Sent as `python -c SOURCE WORKDIR STAMP REQUIREMENT...` after the wheelhouse was uploaded to
`WORKDIR/wheelhouse`. The environment is `WORKDIR/env`, a virtual environment that sees the
host's own packages (`--system-site-packages`), so a torch already installed there (a CUDA
build in the host's conda, say) is reused rather than replaced. Nothing is fetched from a
package registry (`--no-index`). A host whose environment already carries STAMP is skipped.
Prints one JSON object: status (installed, skipped or failed), what was installed and what
was reused, and the environment's python and torch.
"""

import json
import os
import re
import subprocess
import sys

MARKER = "wanlab-deploy.json"


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True)


def environment_python(env):
    return os.path.join(env, "bin", "python")


def stamp_of(env):
    try:
        with open(os.path.join(env, MARKER)) as marker:
            return json.load(marker).get("stamp")
    except (OSError, ValueError):
        return None


def versions(python, names):
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    return json.loads(run([python, "-c", code, *names]).stdout)


def requirement_name(requirement):
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0]


def main():
    workdir, stamp, requirements = sys.argv[1], sys.argv[2], sys.argv[3:]
    env = os.path.join(workdir, "env")
    wheelhouse = os.path.join(workdir, "wheelhouse")
    python = environment_python(env)
    names = [requirement_name(r) for r in requirements]
    if stamp_of(env) == stamp and os.path.exists(python):
        report = {"status": "skipped", "python": python, "versions": versions(python, names)}
        print(json.dumps(report))
        return
    # The host's own pip, where it has one, serves the environment too: a pip (and setuptools)
    # of the environment's own would shadow the host's, older than what its torch requires.
    own_pip = run([sys.executable, "-c", "import pip"]).returncode == 0
    venv = [sys.executable, "-m", "venv", "--clear", "--system-site-packages", env]
    made = run(venv + (["--without-pip"] if own_pip else []))
    if made.returncode != 0:
        print(json.dumps({"status": "failed", "why": "venv: " + made.stderr.strip()[-300:]}))
        return
    pip = [python, "-m", "pip", "install", "--no-index", "--find-links", wheelhouse,
           "--disable-pip-version-check", "--no-warn-script-location"]  # fmt: skip
    steps = [pip + ["--no-deps", "--force-reinstall", "wanlab"], pip + requirements]
    output = ""
    for step in steps:
        done = run(step)
        output += done.stdout
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            print(json.dumps({"status": "failed", "why": "pip: " + (lines[-1] if lines else "")}))
            return
    installed = []
    for line in output.splitlines():
        if line.startswith("Successfully installed "):
            installed += line.split()[2:]
    reused = sorted(
        {requirement_name(line.split(":", 1)[1].strip()) for line in output.splitlines()
         if line.startswith("Requirement already satisfied:")}
    )  # fmt: skip
    with open(os.path.join(env, MARKER), "w") as marker:
        json.dump({"stamp": stamp}, marker)
    report = {"status": "installed", "python": python, "installed": installed, "reused": reused,
              "versions": versions(python, names)}  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
