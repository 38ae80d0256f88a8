"""Which host runs which rank: the matrix's `[placement]` table.

Ranks are laid out as `trainer.layout` says: pipeline-major, as the reference system did
(rank = replica · S + stage, so rank 0 is stage 0 of pipeline 0), with a stage's T tensor
shards as consecutive ranks. A host runs as many ranks as it has `slots` (GPUs), so consecutive
ranks share a host until it is full: a tensor group of T ≤ slots stays inside one machine.
The rules:
- `order` (the default): ranks fill the inventory's hosts in order, each up to its slots;
- `ranks`: an explicit rank map, `ranks = ["h3", "h0", …]` (rank i on host ranks[i]; a host
  named at most its slots times);
- `label`: hosts grouped by a label's value (e.g. `label = "region"`), in the order the groups
  first appear in the inventory; `pipelines = "together"` keeps each pipeline inside one group
  (the first with room for all its ranks), `"spread"` sends consecutive stages of a pipeline
  to different groups in turn (a geo-distributed pipeline); a stage's tensor shards always
  share a group.

```toml
[placement]
by = "label"
label = "region"
pipelines = "spread"
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inventory.errors import ConfigError
from inventory.models import Fleet, Host
from trainer.layout import Layout


class Placement(BaseModel):
    """The [placement] table."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    by: Literal["order", "ranks", "label"] = "order"
    ranks: list[str] | None = Field(None, min_length=1)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    pipelines: Literal["together", "spread"] = "together"

    @model_validator(mode="after")
    def _complete(self) -> Placement:
        if (self.by == "ranks") != (self.ranks is not None):
            raise ValueError("`ranks` is given exactly when by = 'ranks'")
        if (self.by == "label") != (self.label is not None):
            raise ValueError("`label` is given exactly when by = 'label'")
        return self

    def describe(self) -> str:
        """The rule in a few words, for records and reports."""
        if self.by == "label":
            return f"by {self.label}, pipelines {self.pipelines}"
        return "rank map" if self.by == "ranks" else "inventory order"


def place_ranks(layout: Layout, fleet: Fleet, placement: Placement, source: str) -> list[Host]:
    """The host of every rank of a cell, rank order; ConfigError (naming `source`, the matrix
    file, or the inventory) when the fleet cannot hold it."""
    world = layout.world_size
    room = sum(host.slots for host in fleet.hosts)
    if world > room:
        raise ConfigError(
            str(fleet.source), "hosts",
            f"a cell needs {world} ranks (layout {layout.describe()}) but the "
            f"inventory has {_slots_phrase(fleet.hosts)}",
        )  # fmt: skip
    if placement.by == "order":
        return rank_slots(fleet.hosts)[:world]
    if placement.by == "ranks":
        if len(placement.ranks) < world:
            raise ConfigError(
                source, "placement.ranks", f"maps {len(placement.ranks)} ranks; a cell has {world}"
            )
        known = {host.name: host for host in fleet.hosts}
        unknown = [name for name in placement.ranks if name not in known]
        if unknown:
            raise ConfigError(
                source, "placement.ranks", f"no host {unknown[0]!r} in {fleet.source}"
            )
        full = [n for n in known if placement.ranks.count(n) > known[n].slots]
        if full:
            raise ConfigError(
                source, "placement.ranks",
                f"names {full[0]!r} more often than its {known[full[0]].slots} slot(s)",
            )  # fmt: skip
        return [known[name] for name in placement.ranks[:world]]
    return _by_label(layout, fleet, placement, source)


def rank_slots(hosts: list[Host]) -> list[Host]:
    """Each host repeated once per slot, in inventory order: where ranks go, in rank order."""
    return [host for host in hosts for _ in range(host.slots)]


def _slots_phrase(hosts: list[Host]) -> str:
    room = sum(host.slots for host in hosts)
    if room == len(hosts):
        return f"{len(hosts)}"
    return f"{room} slots on {len(hosts)} hosts"


def _by_label(layout: Layout, fleet: Fleet, placement: Placement, source: str) -> list[Host]:
    groups: dict[str, list[Host]] = {}
    for host in fleet.hosts:
        if placement.label not in host.labels:
            raise ConfigError(
                str(fleet.source), f"hosts.{host.name}.labels", f"has no {placement.label!r}"
            )
        groups.setdefault(host.labels[placement.label], []).extend([host] * host.slots)
    if placement.pipelines == "spread" and len(groups) < 2:
        raise ConfigError(
            source, "placement.pipelines", f"'spread' needs hosts of two {placement.label}s or "
            f"more; {fleet.source} has only {placement.label} {next(iter(groups))!r}",
        )  # fmt: skip
    free = list(groups.values())
    stages, width = layout.stages, layout.tensor
    ranks: dict[int, Host] = {}
    for replica in range(layout.dp_degree):
        if placement.pipelines == "together":
            group = next((hosts for hosts in free if len(hosts) >= stages * width), None)
            if group is None:
                raise ConfigError(
                    source, "placement.pipelines",
                    f"no {placement.label} has {stages * width} free hosts for pipeline {replica}",
                )  # fmt: skip
            chosen = [[group.pop(0) for _ in range(width)] for _ in range(stages)]
        else:
            chosen = []
            turn = replica
            for stage in range(stages):
                with_room = [hosts for hosts in free if len(hosts) >= width]
                if not with_room:
                    raise ConfigError(
                        source, "placement.pipelines",
                        f"no {placement.label} has {width} free hosts for stage {stage} of "
                        f"pipeline {replica}",
                    )  # fmt: skip
                group = with_room[turn % len(with_room)]
                chosen.append([group.pop(0) for _ in range(width)])
                turn += 1
        for stage, shards in enumerate(chosen):
            for shard, host in enumerate(shards):
                ranks[layout.rank(stage, replica, shard)] = host
    return [ranks[rank] for rank in range(layout.world_size)]
