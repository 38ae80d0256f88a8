"""Which host runs which rank: inventory order, a rank map, or grouped by a label."""

from __future__ import annotations

import pytest

from experiments.placement import Placement, place_ranks
from inventory.errors import ConfigError
from inventory.models import Fleet, Host
from trainer.config import TrainerConfig
from trainer.layout import Layout

# Six hosts in two regions, interleaved in the inventory: a0 b0 a1 b1 a2 b2.
HOSTS = [
    Host(name=f"{region}{i}", address=f"198.18.0.{10 * (region == 'b') + i + 1}",
         labels={"region": region})
    for i in range(3) for region in "ab"
]  # fmt: skip
FLEET = Fleet(name="geo", hosts=HOSTS)


def placed(placement: Placement, pipeline: int, dp_degree: int) -> list[str]:
    config = TrainerConfig(model="tiny", pipeline=pipeline, dp_degree=dp_degree)
    return [host.name for host in place_ranks(config.layout, FLEET, placement, "m.toml")]


def pipelines(names: list[str], stages: int) -> list[list[str]]:
    """Each pipeline's hosts in stage order, from rank order (rank = replica · S + stage)."""
    by_replica: dict[int, list[str]] = {}
    for rank, name in enumerate(names):
        where = Layout(stages, len(names) // stages).position(rank)
        by_replica.setdefault(where.replica, []).insert(where.stage, name)
    return [by_replica[r] for r in sorted(by_replica)]


def test_by_default_rank_r_runs_on_the_r_th_host():
    assert placed(Placement(), 2, 2) == ["a0", "b0", "a1", "b1"]


def test_a_rank_map_places_each_rank_where_it_says():
    assert placed(Placement(by="ranks", ranks=["b2", "a0", "b1"]), 3, 1) == ["b2", "a0", "b1"]


def test_pipelines_together_stay_inside_one_region():
    names = placed(Placement(by="label", label="region"), 3, 2)
    assert pipelines(names, 3) == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]


def test_pipelines_spread_cross_the_regions_at_every_stage():
    names = placed(Placement(by="label", label="region", pipelines="spread"), 2, 3)
    for pipeline in pipelines(names, 2):
        assert {name[0] for name in pipeline} == {"a", "b"}, pipeline
    assert sorted(names) == sorted(h.name for h in HOSTS)


@pytest.mark.parametrize(
    ("placement", "pipeline", "dp", "field", "says"),
    [
        (Placement(by="ranks", ranks=["a0"]), 2, 1, "placement.ranks", "maps 1 ranks"),
        (Placement(by="ranks", ranks=["a0", "zz"]), 2, 1, "placement.ranks", "no host 'zz'"),
        (Placement(by="label", label="region"), 4, 1, "placement.pipelines", "4 free hosts"),
        (Placement(by="label", label="rack"), 2, 1, "hosts.a0.labels", "no 'rack'"),
        (Placement(by="ranks", ranks=["a0", "a0"]), 2, 1, "placement.ranks", "1 slot(s)"),
    ],
)
def test_a_placement_the_fleet_cannot_hold_names_the_field(placement, pipeline, dp, field, says):
    with pytest.raises(ConfigError) as error:
        placed(placement, pipeline, dp)
    assert error.value.field == field and says in str(error.value)


def test_a_placement_table_must_be_complete():
    with pytest.raises(ValueError, match="ranks"):
        Placement(by="ranks")


# Two 4-GPU machines m0, m1 and a 2-GPU machine m2, in two regions.
MACHINES = Fleet(
    name="gpus",
    hosts=[
        Host(name="m0", address="198.18.1.1", slots=4, labels={"region": "a"}),
        Host(name="m1", address="198.18.1.2", slots=4, labels={"region": "b"}),
        Host(name="m2", address="198.18.1.3", slots=2, labels={"region": "a"}),
    ],
)


def on_machines(placement: Placement, **layout) -> list[str]:
    config = TrainerConfig(model="cpu-small", **layout)
    return [host.name for host in place_ranks(config.layout, MACHINES, placement, "m.toml")]


def test_ranks_fill_each_hosts_slots_so_tensor_groups_stay_on_one_machine():
    names = on_machines(Placement(), tensor=4, pipeline=2)
    assert names == ["m0"] * 4 + ["m1"] * 4
    layout = TrainerConfig(model="cpu-small", tensor=4, pipeline=2).layout
    for stage in range(2):
        assert len({names[r] for r in layout.tensor_ranks(stage, 0)}) == 1
    assert on_machines(Placement(), tensor=2, pipeline=5) == ["m0"] * 4 + ["m1"] * 4 + ["m2"] * 2


def test_by_label_a_pipeline_together_counts_slots_and_a_rank_map_may_repeat_a_host():
    names = on_machines(Placement(by="label", label="region"), tensor=2, pipeline=3)
    assert names == ["m0"] * 4 + ["m2"] * 2  # region a: 6 slots for the pipeline's 6 ranks
    rank_map = Placement(by="ranks", ranks=["m1", "m1", "m0"])
    assert on_machines(rank_map, tensor=1, pipeline=3) == ["m1", "m1", "m0"]


def test_a_cell_larger_than_every_slot_is_refused():
    with pytest.raises(ConfigError, match="needs 12 ranks .* but the inventory has 10 slots on 3"):
        on_machines(Placement(), tensor=4, pipeline=3)
