"""Which host runs which rank: inventory order, a rank map, or grouped by a label."""

from __future__ import annotations

import pytest

from experiments.placement import Placement, place_ranks
from inventory.errors import ConfigError
from inventory.models import Fleet, Host
from trainer.config import TrainerConfig
from trainer.layout import position_of

# Six hosts in two regions, interleaved in the inventory: a0 b0 a1 b1 a2 b2.
HOSTS = [
    Host(name=f"{region}{i}", address=f"198.18.0.{10 * (region == 'b') + i + 1}",
         labels={"region": region})
    for i in range(3) for region in "ab"
]  # fmt: skip
FLEET = Fleet(name="geo", hosts=HOSTS)


def placed(placement: Placement, pipeline: int, dp_degree: int) -> list[str]:
    config = TrainerConfig(model="tiny", pipeline=pipeline, dp_degree=dp_degree)
    return [host.name for host in place_ranks(config, FLEET, placement, "m.toml")]


def pipelines(names: list[str], stages: int) -> list[list[str]]:
    """Each pipeline's hosts in stage order, from rank order (rank = replica · S + stage)."""
    by_replica: dict[int, list[str]] = {}
    for rank, name in enumerate(names):
        stage, replica = position_of(rank, stages)
        by_replica.setdefault(replica, []).insert(stage, name)
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
    ],
)
def test_a_placement_the_fleet_cannot_hold_names_the_field(placement, pipeline, dp, field, says):
    with pytest.raises(ConfigError) as error:
        placed(placement, pipeline, dp)
    assert error.value.field == field and says in str(error.value)


def test_a_placement_table_must_be_complete():
    with pytest.raises(ValueError, match="ranks"):
        Placement(by="ranks")
    with pytest.raises(ValueError, match="twice"):
        Placement(by="ranks", ranks=["a0", "a0"])
