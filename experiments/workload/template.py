"""A workload's templates: strings with `{name}` fields, filled in per cell, host or process.

Parsed once when the matrix is read, refusing a format spec, a conversion, an attribute or an
index, and any name that is not a variable of the template's scope; filled in with plain
strings (nothing is evaluated, nothing is split, no shell sees them).
"""

from __future__ import annotations

from string import Formatter

HOST_SCOPE = {
    "host": "this host's inventory name",
    "address": "this host's inventory address",
    "slots": "this host's slots",
    "python": "the workload's interpreter on this host",
    "workdir": "the workload's working folder on this host",
    "workload": "the workload's name",
    "iterations": "the step timings the job prints (warm-up included)",
    "warmup": "the leading steps that are not timed",
}
CELL_SCOPE = {
    **HOST_SCOPE,
    "profile": "the cell's network setting",
    "tcp": "the cell's TCP setting",
    "dp_degree": "the cell's DP degree: its ranks",
    "world_size": "the cell's ranks (the DP degree)",
    "micro_batch": "the cell's micro-batch",
    "repeat": "which repeat of its point the cell is",
    "cell_id": "the cell's id",
    "run": "the cell's run name (safe in a path)",
    "nnodes": "the hosts the cell uses",
    "master_addr": "rank 0's host address",
    "master_port": "the port rank 0's host chose for the job",
}
PROCESS_SCOPE = {
    **CELL_SCOPE,
    "rank": "the process's rank",
    "local_rank": "the process's index on its host",
    "node_rank": "its host's index among the cell's hosts",
    "local_world_size": "the cell's processes on its host",
    "interface": "the interface gloo and NCCL are told",
    "threads": "OMP_NUM_THREADS",
    "out": "an empty folder for the process's files",
}
BATCH_SCOPE = {
    name: CELL_SCOPE[name]
    for name in ("dp_degree", "world_size", "micro_batch", "repeat", "iterations", "warmup")
}
"""What `batch` may name: the cell's numbers known before it runs."""


def fields(template: str, scope: dict[str, str]) -> list[str]:
    """The variables `template` names; ValueError for any it may not name, or a field that is
    more than a name."""
    names = []
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"{template!r}: {error} (write {{{{ and }}}} for a brace)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"{{{shown}}} is not a plain variable name")
        if name not in scope:
            known = ", ".join(scope)
            raise ValueError(f"unknown variable {{{name}}} here (known: {known})")
        names.append(name)
    return names


def render(template: str, values: dict[str, object]) -> str:
    """`template` with every field filled in by its value as a string."""
    parts = []
    for literal, name, _, _ in Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(str(values[name]))
    return "".join(parts)
