"""netem itself, inside the user-mode Linux kernel (the host kernel has no sch_netem).

One boot runs tests/netem_uml_checks.py, which shapes a 3-namespace lab through netem.shaper
and records what pyroute2 and `tc` read back and what netem.probe measured; the tests judge it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from netem import kernel, uml

pytestmark = pytest.mark.skipif(not kernel.available(), reason="user-mode-linux is not installed")

CHECKS = Path(__file__).with_name("netem_uml_checks.py")


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    out = tmp_path_factory.mktemp("uml") / "checks.json"
    run = uml.run([sys.executable, str(CHECKS), str(out)], timeout_s=240)
    assert out.exists(), f"the guest wrote nothing\n{run.output}\n{run.console[-2000:]}"
    data = json.loads(out.read_text())
    assert data["ok"], data.get("error")
    return data


def test_netem_delay_and_limit_as_the_kernel_reports_them(seen):
    assert seen["apply"] == ["built", "built"]
    assert seen["shaped"]["matches"]
    [netem] = seen["shaped"]["netem"]
    assert netem["parent"] == "1:20"
    assert netem["options"]["delay"]["delay"] == pytest.approx(0.010)
    assert netem["options"]["limit"] == seen["profile"]["limit"] >= 1000
    assert seen["shaped"]["classes"]["1:20"] == [100 * 10**6, 100 * 10**6]


def test_delay_and_rate_are_real(seen):
    base = seen["base"]["rtt_ms_median"]
    rtt = seen["shaped_probe"]["rtt_ms_median"]
    assert 20 <= rtt <= 20 + base + 2  # 10 ms on each end
    assert 85e6 <= seen["shaped_probe"]["throughput_bps"] <= 102e6
    assert seen["drops"]["1:20"]["drops"] == 0


def test_ssh_is_exempt_under_netem(seen):
    # shaped traffic gains 2 x 10 ms; SSH, exempt, gains none (the guest's own round trips
    # wander by a few ms, so the bound is half of what shaping would add)
    assert seen["ssh_probe"]["rtt_ms_median"] < seen["base"]["rtt_ms_median"] + 10


def test_applying_twice_and_switching(seen):
    assert seen["apply_again"] == "unchanged"
    assert seen["switch"] == "updated"
    assert seen["switched"]["matches"]
    options = seen["switched"]["netem"][0]["options"]
    assert options["delay"]["delay"] == pytest.approx(0.005)
    assert options["delay"]["jitter"] == pytest.approx(0.001)
    assert options["loss-random"]["loss"] == pytest.approx(0.005)
    assert seen["switched"]["classes"]["1:20"] == [200 * 10**6, 200 * 10**6]


def test_pair_matrix(seen):
    assert set(seen["matrix_apply"].values()) == {"built"}
    assert all(state["matches"] for state in seen["matrix_state"].values())
    h0 = seen["matrix_state"]["wlu-h0"]
    assert h0["classes"] == {
        "1:10": [100 * 10**9, 100 * 10**9],
        "1:20": [100 * 10**9, 100 * 10**9],
        "1:21": [50 * 10**6, 50 * 10**6],
    }
    delays = {q["parent"]: q["options"]["delay"]["delay"] for q in h0["netem"]}
    assert delays == pytest.approx({"1:20": 0.005, "1:21": 0.030})
    probes = seen["matrix_probe"]
    assert 10 <= probes["h0_h1"]["rtt_ms_median"] <= 13  # west-west: 5 ms each way
    assert 60 <= probes["h0_h2"]["rtt_ms_median"] <= 63  # west-east: 30 ms each way
    assert 60 <= probes["h2_h1"]["rtt_ms_median"] <= 63
    assert probes["h0_h2_ssh"]["rtt_ms_median"] < 5


def test_reset_leaves_the_interfaces_as_before(seen):
    assert seen["qdisc_after"] == seen["qdisc_before"]
    assert seen["after_reset_probe"]["rtt_ms_median"] < 5
