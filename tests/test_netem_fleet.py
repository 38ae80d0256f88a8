"""Fleet-wide netem over real sshd: a 2-host local fleet of our own (prefix wlt, 198.19.0.0/16).

Rate-only profiles (the host kernel has no sch_netem); what each host's kernel holds is read
back with `tc` inside the host's namespace, independently of the agent's own answer.
"""

from __future__ import annotations

import os
import secrets
import time

import netem_tc
import pytest
from typer.testing import CliRunner

from experiments.cli.netem import app
from experiments.lab.fleet import LocalFleet
from inventory.errors import ConfigError
from inventory.loader import load_inventory
from netem.fleet import FleetNetem, load_target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the local fleet")


@pytest.fixture(scope="module")
def fleet():
    local = LocalFleet(prefix=f"wlt{secrets.token_hex(2)}", subnet="198.19.44.0/24")
    try:
        yield load_inventory(local.up(2)), local
    finally:
        local.down()


def _kinds(local: LocalFleet) -> list[str]:
    return [netem_tc.qdiscs(local.host(i).netns, "eth0")[0]["kind"] for i in range(2)]


def test_apply_show_reset_across_the_fleet(fleet, tmp_path):
    inventory, local = fleet
    matrix = tmp_path / "pairs.toml"
    matrix.write_text('[[link]]\nsrc = "h0"\ndst = "h1"\nrate = "50mbit"\nboth_ways = false\n')
    with FleetNetem(inventory) as netem:
        applied = netem.apply(load_target("200mbit"), lease_s=120)
        assert all(a["ok"] and a["matches"] for a in applied.values())
        for i in range(2):
            assert netem_tc.classes(local.host(i).netns, "eth0")["1:20"] == (200e6, 200e6)
        shown = netem.show()
        assert {a["shaping"]["profile"] for a in shown.values()} == {"200mbit"}
        switched = netem.apply(load_target(str(matrix)), lease_s=120)
        assert switched["h0"]["shaping"]["routes"] == {local.host(1).address: "50mbit"}
        assert switched["h1"]["result"] == "restored"  # nothing to shape there: reset
        assert _kinds(local) == ["htb", "noqueue"]
        assert {a["result"] for a in netem.reset().values()} == {"restored", "clean"}
        assert _kinds(local) == ["noqueue", "noqueue"]
        assert {a["result"] for a in netem.reset().values()} == {"clean"}


def test_delay_fails_everywhere_and_leaves_nothing_shaped(fleet):
    inventory, local = fleet
    with FleetNetem(inventory) as netem:
        answers = netem.apply(load_target("d10b1"))
    assert {a["error_kind"] for a in answers.values()} == {"netem_unavailable"}
    assert _kinds(local) == ["noqueue", "noqueue"]


def test_cli_dry_run_and_bad_input(fleet):
    inventory, local = fleet
    runner = CliRunner()
    result = runner.invoke(app, ["apply", "d50b1", "-i", str(inventory.source), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "netem delay 50ms limit 12500" in result.output
    assert _kinds(local) == ["noqueue", "noqueue"]
    # Dry means no host is contacted: a fleet whose host cannot be reached still prints its plan.
    unreachable = inventory.source.parent / "unreachable.toml"
    unreachable.write_text('[[hosts]]\nname = "far"\naddress = "198.18.255.254"\nport = 1\n')
    result = runner.invoke(app, ["apply", "d50b1", "-i", str(unreachable), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "tc qdisc replace dev IFACE" in result.output
    result = runner.invoke(app, ["apply", "10ms/loss=200%", "-i", str(inventory.source)])
    assert isinstance(result.exception, ConfigError)
    assert result.exception.field == "loss"
    assert _kinds(local) == ["noqueue", "noqueue"]


def test_persistent_agents_shape_and_revert_when_the_session_dies(fleet):
    inventory, local = fleet
    with FleetNetem(inventory) as netem:
        applied = netem.apply(load_target("300mbit"), lease_s=60)
        assert all(a["ok"] and a["matches"] and a["lease_until"] for a in applied.values())
        for i in range(2):
            assert netem_tc.classes(local.host(i).netns, "eth0")["1:20"] == (300e6, 300e6)
        assert {a["result"] for a in netem.reset().values()} == {"restored"}
        assert _kinds(local) == ["noqueue", "noqueue"]
        netem.apply(load_target("300mbit"), lease_s=1.5)
        assert _kinds(local) == ["htb", "htb"]
    # The session is gone without a reset: the agents revert when the lease runs out.
    deadline = time.monotonic() + 15
    while _kinds(local) != ["noqueue", "noqueue"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kinds(local) == ["noqueue", "noqueue"]


def test_a_second_controller_is_refused_while_the_first_holds_the_fleet(fleet):
    """The agents hold the lock: a second owner can neither reshape nor reset the hosts while
    the first one's lease runs; the first one's reset or its lease's end releases them."""
    inventory, local = fleet
    with (
        FleetNetem(inventory, owner="first") as first,
        FleetNetem(inventory, owner="second") as second,
    ):
        assert all(a["ok"] for a in first.apply(load_target("300mbit"), lease_s=60).values())
        refused = second.apply(load_target("100mbit"), lease_s=60)
        assert {a["error_kind"] for a in refused.values()} == {"locked"}
        assert all("shaped by first" in a["error"] for a in refused.values())
        assert not any(a["ok"] for a in second.reset().values())
        for i in range(2):  # the first controller's shaping is untouched
            assert netem_tc.classes(local.host(i).netns, "eth0")["1:20"] == (300e6, 300e6)
        assert set(second.held_by_others()) == {"h0", "h1"}
        assert first.held_by_others() == {}
        assert all(a["ok"] for a in first.apply(load_target("300mbit"), lease_s=1.5).values())
        time.sleep(2.5)  # the first one's lease has run out: the hosts are free again
        assert second.held_by_others() == {}
        assert all(a["ok"] for a in second.apply(load_target("100mbit"), lease_s=60).values())
        assert all(a["ok"] for a in second.reset().values())
    assert _kinds(local) == ["noqueue", "noqueue"]
