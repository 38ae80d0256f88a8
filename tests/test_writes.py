"""Every file wanlab writes goes through `inventory.safewrite`: nothing at a path but a regular
file is followed, written through or replaced, no temporary file outlives a failure, and a bad
path is one line. Every name that ends up in a path follows the one rule of `inventory.names`.

The writer is checked against the real things planted where it writes (symbolic links, FIFOs, a
character device with /dev/null's numbers, sockets, folders), a real full disk (a tmpfs in a
mount namespace of its own) and real signals; each command that writes is run as the `wanlab`
command line in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_predict import MATRIX as PREDICT_MATRIX
from test_predict import STAGE_TIMES, cell_record

from experiments.lab.fleet import LocalFleet
from experiments.lab.node import DelayNode
from experiments.matrix import load_matrix
from experiments.results import CellRecord, ResultsStore
from experiments.scale import scaled_name
from inventory import safewrite
from inventory.errors import ConfigError
from inventory.loader import load_inventory
from inventory.names import NAME_RULE, check_name
from inventory.safewrite import check_target, open_append, write_file
from netem.profile import load_profile_file

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "experiments" / "matrices" / "seed-gpt3xl.toml"
KINDS = {
    "symlink": "a symbolic link",
    "dangling": "a symbolic link",
    "fifo": "a FIFO",
    "device": "a character device",
    "folder": "a folder",
    "socket": "a socket",
}
"""What can be planted at a path, and how a refusal names it."""
VICTIM = "victim.txt"
VICTIM_TEXT = "not to be touched\n"
INVENTORY = "".join(
    f'[[hosts]]\nname = "h{i}"\naddress = "198.18.9.{i + 1}"\n' for i in range(4)
)  # fmt: skip
"""Four hosts nobody answers at: any command that tried one would fail, not pass."""
MATRIX = """
[matrix]
name = "{name}"
[trainer]
model = "tiny"
batch = 4
pipeline = 2
iterations = 3
[axes]
profiles = ["default", "200mbit"]
dp_degrees = [1, 2]
"""
LAB = ["--ceiling", "500mbit", "--lab-latency", "0.35ms", "--lab-receive-share", "0.72"]
"""Every figure of the lab given: `wanlab scale` probes no host."""


# -- planting and looking -------------------------------------------------------------------
def plant(path: Path, kind: str) -> None:
    """Put `kind` at `path`: a link to a file outside the folder (or to nothing), a FIFO, a
    character device with /dev/null's numbers, a folder, a socket, or a regular file."""
    elsewhere = path.parent.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / VICTIM).write_text(VICTIM_TEXT)
    if kind == "symlink":
        os.symlink(elsewhere / VICTIM, path)
    elif kind == "dangling":
        os.symlink(elsewhere / "made-through-a-link", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
    elif kind == "regular":
        path.write_text("old\n")


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under `top` (links not followed): its type, inode, and its content or the
    link's target, so that any change to what is there shows."""
    seen = {}
    for folder, folders, files in os.walk(top):
        for name in folders + files:
            path = Path(folder) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                what = path.read_bytes()
            else:
                what = None
            seen[str(path.relative_to(top))] = (stat.S_IFMT(info.st_mode), info.st_ino, what)
    return seen


def wanlab(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The `wanlab` command line of this tree, run in `cwd`; its temporary files go to
    cwd/tmp (so that a wheelhouse built there would show)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(cwd / "tmp")}
    return subprocess.run(
        [sys.executable, "-c", "from experiments.cli import main; main()", *args],
        capture_output=True, text=True, timeout=180, cwd=cwd, env=env,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, target: Path | str, field: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr naming `target` and `field`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{target}: {field}: " in lines[0], lines[0]
    return lines[0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def work(tmp_path) -> Path:
    """A folder to write in (a planted link points out of it, into ../elsewhere)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# -- the writer -----------------------------------------------------------------------------
def test_a_file_is_written_whole_text_or_bytes_and_replaces_a_regular_one(work):
    target = work / "out.toml"
    assert write_file(target, "température = 1\n", "--write") == target
    assert target.read_bytes() == "température = 1\n".encode()
    write_file(target, b"\x00\xff", "--write")
    assert target.read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(work)) == ["out.toml"]


def test_a_replaced_file_keeps_its_mode_and_owner(work):
    target = work / "private.toml"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    os.chown(target, 4321, 4321)
    write_file(target, "new\n", "--write")
    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 4321, 4321)
    write_file(work / "new.sh", "#!/bin/sh\n", None, mode=0o700)
    assert stat.S_IMODE((work / "new.sh").stat().st_mode) == 0o700 & ~_umask()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["write_file", "open_append", "check_target"])
def test_anything_but_a_regular_file_at_the_target_is_refused_and_left_alone(work, kind, how):
    target = work / "out.toml"
    plant(target, kind)
    before = snapshot(work.parent)
    with pytest.raises(ConfigError) as refused:
        if how == "write_file":
            write_file(target, "new\n", "--write")
        elif how == "open_append":
            open_append(target, "-o")
        else:
            check_target(target, "-o")
    assert refused.value.file == str(target)
    assert refused.value.field == ("--write" if how == "write_file" else "-o")
    assert KINDS[kind] in refused.value.message and "\n" not in str(refused.value)
    assert snapshot(work.parent) == before


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "device"])
def test_a_thing_planted_at_the_temporary_name_is_never_followed(work, kind, monkeypatch):
    monkeypatch.setattr(safewrite.secrets, "token_hex", lambda _n: "0123456789abcdef")
    target = work / "fleet.toml"
    plant(work / ".fleet.toml.0123456789abcdef.tmp", kind)
    before = snapshot(work.parent)
    with pytest.raises(ConfigError, match="cannot be written: File exists"):
        write_file(target, "new\n", "--write")
    assert snapshot(work.parent) == before


def test_the_temporary_name_is_random_so_a_link_at_the_old_partial_name_is_untouched(work):
    plant(work / ".fleet.toml.partial", "symlink")
    before = snapshot(work.parent)
    write_file(work / "fleet.toml", "new\n", "--write")
    after = snapshot(work.parent)
    assert after.pop("work/fleet.toml")[2] == b"new\n"
    assert after == before


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("", "names a folder, not a file"),
        (".", "names a folder, not a file"),
        ("..", "names a folder, not a file"),
        ("/", "names a folder, not a file"),
        ("no-such-folder/out.toml", "does not exist"),
        ("a-file/out.toml", "is not a folder"),
        ("x" * 300, "the name is too long"),
        ("/proc/out.toml", "cannot be written"),
    ],
)
def test_a_path_that_cannot_be_a_file_is_one_line(work, monkeypatch, path, words):
    monkeypatch.chdir(work)
    (work / "a-file").write_text("")
    before = snapshot(work.parent)
    with pytest.raises(ConfigError) as refused:
        write_file(path, "new\n", "--write")
    assert refused.value.field == "--write" and words in refused.value.message
    assert "\n" not in str(refused.value)
    assert snapshot(work.parent) == before


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(work, monkeypatch):
    target = work / "out.toml"
    target.write_text("old\n")

    def broken_disk(_descriptor):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_disk)
    with pytest.raises(ConfigError, match="cannot be written: Input/output error"):
        write_file(target, "new\n", "--write")
    assert os.listdir(work) == ["out.toml"] and target.read_text() == "old\n"


def test_ctrl_c_during_a_write_leaves_no_temporary_file(work, monkeypatch):
    def interrupted(_descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_file(work / "out.toml", "new\n", "--write")
    assert os.listdir(work) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopping_signal_during_a_write_ends_the_process_after_the_clean_up(work, signum):
    """The signal arrives while the temporary file exists (from inside fsync): the process
    still dies of it, and leaves the old file whole and no temporary file."""
    target = work / "out.toml"
    target.write_text("old\n")
    child = (
        "import os, sys\n"
        "from inventory.safewrite import write_file\n"
        f"os.fsync = lambda fd: os.kill(os.getpid(), {int(signum)})\n"
        "write_file(sys.argv[1], 'new' * 100000, '--write')\n"
        "print('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(target)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == -signum and "survived" not in done.stdout, done.stderr
    assert os.listdir(work) == ["out.toml"] and target.read_text() == "old\n"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_full_disk_is_one_line_and_leaves_the_old_file_whole(work):
    """A real full disk: a 64 KiB tmpfs, mounted in a mount namespace of the test's own."""
    child = (
        "import sys\n"
        "from inventory.safewrite import write_file\n"
        "write_file(sys.argv[1] + '/out.toml', 'old\\n', '-o')\n"
        "write_file(sys.argv[1] + '/out.toml', 'x' * 1_000_000, '-o')\n"
    )
    script = (
        'mount -t tmpfs -o size=64k wanlab-full "$1" && "$2" -c "$3" "$1"; rc=$?;'
        ' ls -A "$1"; cat "$1/out.toml"; exit $rc'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(work), sys.executable, child],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout == "out.toml\nold\n"  # no temporary file, the old content whole
    assert "-o: cannot be written: No space left on device" in done.stderr
    assert os.listdir(work) == []  # the tmpfs was the namespace's only


def test_a_thing_planted_at_the_target_while_writing_is_refused_before_the_rename(
    work, monkeypatch
):
    target = work / "out.toml"
    real_fsync = os.fsync

    def plant_a_link(descriptor):
        real_fsync(descriptor)
        if not target.is_symlink():
            plant(target, "symlink")

    monkeypatch.setattr(os, "fsync", plant_a_link)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        write_file(target, "new\n", "--write")
    assert os.listdir(work) == ["out.toml"] and target.is_symlink()
    assert (work.parent / "elsewhere" / VICTIM).read_text() == VICTIM_TEXT


def test_a_link_planted_in_the_last_moment_is_replaced_itself_never_written_through(
    work, monkeypatch
):
    """The one race left, between the last check and rename(2): the rename replaces the link
    (the directory entry), and the file it pointed to is untouched."""
    target = work / "out.toml"
    real_rename = os.rename

    def plant_then_rename(*args, **kwargs):
        plant(target, "symlink")
        real_rename(*args, **kwargs)

    monkeypatch.setattr(os, "rename", plant_then_rename)
    write_file(target, "new\n", "--write")
    assert not target.is_symlink() and target.read_text() == "new\n"
    assert (work.parent / "elsewhere" / VICTIM).read_text() == VICTIM_TEXT
    assert os.listdir(work) == ["out.toml"]


def test_appending_adds_to_a_regular_file_and_reads_it(work):
    target = work / "cells.jsonl"
    target.write_text("one\n")
    with open_append(target, "-o") as cells:
        cells.seek(0)
        assert cells.read() == "one\n"
        cells.write("two\n")
    assert target.read_text() == "one\ntwo\n"


NAMES = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=100,
).filter(lambda name: name not in (".", ".."))
PLANTED = st.sampled_from(["absent", "regular", *KINDS])
TOKEN = "fedcba9876543210"


def _fits(name: str) -> bool:
    return len(os.fsencode(name)) <= 255


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=NAMES, at_target=PLANTED, at_temp=PLANTED, data=st.binary(max_size=4096))
def test_writer_on_any_name_with_anything_at_the_target_and_temporary_paths(
    monkeypatch, name, at_target, at_temp, data
):
    """Any name, anything at the target and at the temporary name: written whole where only
    a regular file or nothing was in the way, else refused with nothing changed at all."""
    monkeypatch.setattr(safewrite.secrets, "token_hex", lambda _n: TOKEN)
    with tempfile.TemporaryDirectory() as top:
        work = Path(top) / "work"
        work.mkdir()
        target, temp = work / name, work / f".{name[:40]}.{TOKEN}.tmp"
        if _fits(name):
            plant(target, at_target)
        plant(temp, at_temp)
        before = snapshot(Path(top))
        blocked = at_target not in ("absent", "regular") or at_temp != "absent"
        if not _fits(name) or blocked:
            with pytest.raises(ConfigError) as refused:
                write_file(target, data, "--write")
            assert refused.value.file == str(target) and refused.value.field == "--write"
            assert snapshot(Path(top)) == before
            return
        write_file(target, data, "--write")
        after = snapshot(Path(top))
        assert after.pop(f"work/{name}")[2] == data
        before.pop(f"work/{name}", None)
        assert after == before


@settings(max_examples=40, deadline=None)
@given(name=NAMES, at_target=PLANTED, line=st.text(max_size=200))
def test_appender_on_any_name_with_anything_at_the_target(name, at_target, line):
    with tempfile.TemporaryDirectory() as top:
        work = Path(top) / "work"
        work.mkdir()
        target = work / name
        if _fits(name):
            plant(target, at_target)
        before = snapshot(Path(top))
        if not _fits(name) or at_target not in ("absent", "regular"):
            with pytest.raises(ConfigError):
                open_append(target, "-o")
            assert snapshot(Path(top)) == before
            return
        with open_append(target, "-o") as appended:
            appended.write(line)
        old = b"old\n" if at_target == "regular" else b""
        assert target.read_bytes() == old + line.encode()


# -- the results store, the local fleet, the delay node ---------------------------------------
def _record() -> CellRecord:
    return CellRecord.model_validate({
        "cell_id": "default|dp1|mb1|gpipe|ps|r0", "status": "failed", "reason": "test",
        "params": {"profile": "default", "dp_degree": 1, "micro_batch": 1, "engine": "gpipe",
                   "dp_mode": "ps"},
        "trainer": {"model": "tiny", "batch": 4, "pipeline": 2},
    })  # fmt: skip


@pytest.mark.parametrize(
    ("planted", "write"),
    [
        ("cells.jsonl", lambda store: store.append(_record())),
        ("cells.parquet", lambda store: store.write_parquet()),
        ("run.json", lambda store: store.write_run_info({"hosts": []})),
    ],
)
def test_the_results_store_writes_through_no_link(work, planted, write):
    plant(work / planted, "symlink")
    before = snapshot(work.parent)
    with pytest.raises(ConfigError) as refused:
        write(ResultsStore(work))
    assert refused.value.file == str(work / planted) and refused.value.field == "-o"
    assert snapshot(work.parent) == before


@pytest.mark.parametrize("planted", ["cells.jsonl", "run.json", "matrix.toml"])
def test_a_run_is_refused_before_any_cell_where_it_would_write_through_a_link(work, planted):
    plant(work / planted, "dangling")
    with pytest.raises(ConfigError) as refused:
        ResultsStore(work).check_for_run(resume=True)
    assert refused.value.file == str(work / planted) and "symbolic link" in refused.value.message


def test_the_local_fleets_inventory_is_not_written_through_a_link(tmp_path):
    fleet = LocalFleet(prefix="wlw", subnet="198.18.30.0/24", home=tmp_path / "home")
    fleet.directory.mkdir(parents=True)
    plant(fleet.inventory_path, "symlink")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        fleet.refresh_inventory()
    assert snapshot(tmp_path) == before


def test_the_delay_nodes_files_are_not_written_through_a_fifo(work):
    plant(work / "forwarding.json", "fifo")
    before = snapshot(work.parent)
    with pytest.raises(ConfigError, match="is a FIFO"):
        DelayNode(work).record_forwarding({"one_way_ms_at_delay": {}})
    assert snapshot(work.parent) == before


# -- names ----------------------------------------------------------------------------------
BAD_NAMES = ["/some/where", "../x", "..", ".", "a/b", "x" * 300, "x" * 64, "a\n", "\na", "",
             "-a", "a b", "a;b", "é", "a\x00b", ".hidden", "_a"]  # fmt: skip
GOOD_NAMES = ["a", "x" * 63, "a.b-c_d", "0", "seed-gpt3xl"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_could_leave_its_folder_is_refused(name):
    with pytest.raises(ValueError, match="must be 1-63"):
        check_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_name_by_the_rule_is_kept(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["/some/where", "../x", "x" * 300, "a\nb", ""])
def test_matrix_fleet_host_and_profile_names_follow_the_one_rule(tmp_path, name):
    quoted = json.dumps(name)  # a TOML basic string
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.replace('"{name}"', quoted))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"[fleet]\nname = {quoted}\n" + INVENTORY)
    host = tmp_path / "host.toml"
    host.write_text(f'[[hosts]]\nname = {quoted}\naddress = "198.18.9.1"\n')
    profile = tmp_path / "profile.toml"
    profile.write_text(f'name = {quoted}\ndelay = "10ms"\n')
    for read, path, field in [
        (load_matrix, matrix, "matrix.name"),
        (lambda p: load_inventory(p, check_keys=False), fleet, "fleet.name"),
        (lambda p: load_inventory(p, check_keys=False), host, "hosts[0].name"),
        (load_profile_file, profile, "name"),
    ]:
        with pytest.raises(ConfigError) as refused:
            read(path)
        assert (refused.value.file, refused.value.field) == (str(path), field)
        assert NAME_RULE in refused.value.message


def test_a_profile_files_name_is_its_stem_and_follows_the_rule_too(tmp_path):
    path = tmp_path / "far away.toml"
    path.write_text('delay = "10ms"\n')
    with pytest.raises(ConfigError, match="far away"):
        load_profile_file(path)
    (tmp_path / "far-away.toml").write_text('delay = "10ms"\n')
    assert load_profile_file(tmp_path / "far-away.toml").name == "far-away"


# -- every command that writes, as the command line runs it ----------------------------------
@pytest.fixture
def site(tmp_path) -> Path:
    """The current folder of a command: an inventory of hosts nobody answers, a matrix, an
    output folder and a folder for temporary files."""
    folder = tmp_path / "site"
    for name in ("out", "tmp"):
        (folder / name).mkdir(parents=True)
    (folder / "hosts.toml").write_text(INVENTORY)
    (folder / "matrix.toml").write_text(MATRIX.format(name="t"))
    return folder


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device", "folder"])
def test_inventory_show_write_refuses_anything_but_a_file(site, kind):
    target = site / "out" / "fleet.toml"
    plant(target, kind)
    before = snapshot(site)
    result = wanlab(site, "inventory", "show", "-i", "hosts.toml", "--write", str(target))
    assert KINDS[kind] in assert_refused(result, target, "--write")
    assert snapshot(site) == before


@pytest.mark.parametrize(("given", "shown"), [("", "."), ("/", "/")])
def test_inventory_show_write_to_no_file_is_one_line(site, given, shown):
    before = snapshot(site)
    result = wanlab(site, "inventory", "show", "-i", "hosts.toml", "--write", given)
    assert "names a folder" in assert_refused(result, shown, "--write")
    assert snapshot(site) == before


def test_inventory_show_writes_the_file_and_nothing_else(site):
    before = snapshot(site)
    result = wanlab(site, "inventory", "show", "-i", "hosts.toml", "--write", "out/fleet.toml")
    assert result.returncode == 0, result.stderr
    after = snapshot(site)
    written = after.pop("out/fleet.toml")
    frozen = load_inventory(site / "out" / "fleet.toml", check_keys=False)
    assert [host.name for host in frozen.hosts] == ["h0", "h1", "h2", "h3"]
    assert written[0] == stat.S_IFREG
    assert after == before


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_deploy_write_is_refused_before_the_wheelhouse_is_built(site, kind):
    target = site / "out" / "deployed.toml"
    plant(target, kind)
    before = snapshot(site)
    result = wanlab(site, "deploy", "-i", "hosts.toml", "--write", str(target))
    assert_refused(result, target, "--write")
    assert snapshot(site) == before  # tmp/ holds no wheelhouse


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_scale_output_is_refused_before_the_lab_is_modelled(site, kind):
    target = site / "out" / "scaled.toml"
    plant(target, kind)
    before = snapshot(site)
    result = wanlab(site, "scale", str(SEED), "--to", "hosts.toml", *LAB, "-o", str(target))
    assert_refused(result, target, "-o")
    assert snapshot(site) == before


@pytest.mark.parametrize("name", ["/some/where", "../escaped"])
def test_a_matrix_name_that_is_a_path_is_refused_where_it_is_read(site, name):
    matrix = site / "out" / "target.toml"
    matrix.write_text(SEED.read_text().replace('name = "seed-gpt3xl"', f'name = "{name}"'))
    before = snapshot(site.parent)
    result = wanlab(site, "scale", str(matrix), "--to", "hosts.toml", *LAB)
    assert NAME_RULE in assert_refused(result, matrix, "matrix.name")
    assert snapshot(site.parent) == before


def test_a_results_folder_whose_matrix_name_is_a_path_is_refused(site):
    results = site / "out"
    (results / "cells.jsonl").write_text("")
    (results / "matrix.toml").write_text(MATRIX.format(name="../escaped"))
    before = snapshot(site.parent)
    result = wanlab(site, "scale", str(results), "--to", "hosts.toml", *LAB)
    assert_refused(result, results / "matrix.toml", "matrix.name")
    assert snapshot(site.parent) == before


def test_scale_without_output_writes_name_scale_toml_into_the_current_folder_only(site):
    matrix = site / "out" / "target.toml"
    text = SEED.read_text().replace('"default", "d1b5", "d5b2", "d10b1", "d50b1"', '"default"')
    matrix.write_text(text.replace("dp_degrees = [1, 4]", "dp_degrees = [1]"))
    before = snapshot(site.parent)
    result = wanlab(site, "scale", str(matrix), "--to", "hosts.toml", *LAB, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["written"] == "seed-gpt3xl-scale.toml"
    after = snapshot(site.parent)
    after.pop(f"{site.name}/seed-gpt3xl-scale.toml")
    assert after == before
    assert load_matrix(site / "seed-gpt3xl-scale.toml").header.name == "seed-gpt3xl-scale"


def _results(folder: Path) -> Path:
    """A results folder of three finished cells (test_predict's, with the statistics of their
    iteration times a run records)."""
    folder.mkdir()
    records = [
        cell_record("10ms/100mbit", 1, STAGE_TIMES[1], 0.5),
        cell_record("default", 2, STAGE_TIMES[2], 0.4),
        cell_record("default", 1, STAGE_TIMES[1], 0.1),
    ]
    for record in records:
        total = record["summary"]["phases"]["total_s"]
        total |= {"std": 0.0, "median": total["mean"], "p10": total["mean"], "p90": total["mean"]}
    (folder / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "matrix.toml").write_text(PREDICT_MATRIX)
    return folder


@pytest.mark.parametrize(("planted", "kind"), [("report.md", "symlink"),
                                               ("report_cells.csv", "fifo")])  # fmt: skip
def test_report_refuses_before_drawing_and_writes_nothing(site, planted, kind):
    results = _results(site / "results")
    report = site / "report"
    report.mkdir()
    plant(report / planted, kind)
    before = snapshot(site)
    result = wanlab(site, "report", str(results), "-o", str(report), "--format", "md,csv")
    assert_refused(result, report / planted, "-o")
    assert snapshot(site) == before


def test_report_compare_names_its_folder_after_b_only_when_that_is_a_name(site):
    a, b = _results(site / "a"), _results(site / "b c")
    before = snapshot(site)
    result = wanlab(site, "report", "--compare", str(a), str(b), "--format", "csv")
    assert NAME_RULE in assert_refused(result, b, "--compare")
    assert snapshot(site) == before


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_predict_store_writes_through_nothing(site, kind):
    results = _results(site / "results")
    plant(results / "predictions.jsonl", kind)
    before = snapshot(site)
    result = wanlab(site, "predict", str(results / "matrix.toml"), "--calibrate", str(results),
                    "--store")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{results / 'predictions.jsonl'}: --store: " in result.stderr.strip().splitlines()[-1]
    assert snapshot(site) == before


@pytest.mark.parametrize(("planted", "kind"), [("cells.jsonl", "dangling"), ("run.json", "fifo")])
def test_run_refuses_a_results_folder_with_a_link_or_fifo_before_any_host(site, planted, kind):
    plant(site / "out" / planted, kind)
    before = snapshot(site)
    result = wanlab(site, "run", "matrix.toml", "-i", "hosts.toml", "-o", "out", "--dry-run")
    assert KINDS[kind] in assert_refused(result, Path("out") / planted, "-o")
    assert snapshot(site) == before


def test_a_scale_models_name_is_a_name_whatever_the_targets_name_length():
    assert check_name(scaled_name("x" * 63)) == "x" * 57 + "-scale"
    assert scaled_name("seed-gpt3xl") == "seed-gpt3xl-scale"
