"""Which host runs which rank: the matrix's `[placement]` table.

Ranks are pipeline-major, as the reference system laid them out: rank = replica · S + stage, so
rank 0 is stage 0 of pipeline 0 and a pipeline's stages are consecutive ranks. The rules:
- `order` (the default): rank r on the r-th host of the inventory;
- `ranks`: an explicit rank map, `ranks = ["h3", "h0", …]` (rank i on host ranks[i]);
- `label`: hosts grouped by a label's value (e.g. `label = "region"`), in the order the groups
  first appear in the inventory; `pipelines = "together"` keeps each pipeline inside one group
  (the first with room for all its stages), `"spread"` sends consecutive stages of a pipeline
  to different groups in turn (a geo-distributed pipeline).

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
from trainer.config import TrainerConfig
from trainer.layout import rank_of


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
        if self.ranks is not None and len(set(self.ranks)) != len(self.ranks):
            raise ValueError("`ranks` names a host twice (one rank per host)")
        return self

    def describe(self) -> str:
        """The rule in a few words, for records and reports."""
        if self.by == "label":
            return f"by {self.label}, pipelines {self.pipelines}"
        return "rank map" if self.by == "ranks" else "inventory order"


def place_ranks(
    config: TrainerConfig, fleet: Fleet, placement: Placement, source: str
) -> list[Host]:
    """The host of every rank of a cell, rank order; ConfigError (naming `source`, the matrix
    file, or the inventory) when the fleet cannot hold it."""
    world = config.world_size
    if world > len(fleet.hosts):
        raise ConfigError(
            str(fleet.source), "hosts",
            f"a cell needs {world} hosts (pipeline {config.pipeline} × dp_degree "
            f"{config.dp_degree}) but the inventory has {len(fleet.hosts)}",
        )  # fmt: skip
    if placement.by == "order":
        return fleet.hosts[:world]
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
        return [known[name] for name in placement.ranks[:world]]
    return _by_label(config, fleet, placement, source)


def _by_label(config: TrainerConfig, fleet: Fleet, placement: Placement, source: str) -> list[Host]:
    groups: dict[str, list[Host]] = {}
    for host in fleet.hosts:
        if placement.label not in host.labels:
            raise ConfigError(
                str(fleet.source), f"hosts.{host.name}.labels", f"has no {placement.label!r}"
            )
        groups.setdefault(host.labels[placement.label], []).append(host)
    free = list(groups.values())
    stages, replicas = config.pipeline, config.dp_degree
    ranks: dict[int, Host] = {}
    for replica in range(replicas):
        if placement.pipelines == "together":
            group = next((hosts for hosts in free if len(hosts) >= stages), None)
            if group is None:
                raise ConfigError(
                    source, "placement.pipelines",
                    f"no {placement.label} has {stages} free hosts for pipeline {replica}",
                )  # fmt: skip
            chosen = [group.pop(0) for _ in range(stages)]
        else:
            chosen = []
            turn = replica
            for _ in range(stages):
                with_room = [hosts for hosts in free if hosts]
                chosen.append(with_room[turn % len(with_room)].pop(0))
                turn += 1
        for stage, host in enumerate(chosen):
            ranks[rank_of(stage, replica, stages)] = host
    return [ranks[rank] for rank in range(config.world_size)]
