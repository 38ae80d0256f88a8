"""`python -m trainer`: start one rank. Config from `--config FILE` (TOML) and/or flags.

The rank reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment. Bad input
exits with code 2 and one message before any connection is tried; a failure during training
(a peer died, a timeout) exits with code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import get_args

from inventory.errors import ConfigError
from inventory.ports import wait_listening
from trainer.config import COMMAND_LINE, TrainerConfig, check_world, load_config

ENVIRONMENT = "environment"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags: `--config FILE` plus one flag per TrainerConfig field (flags win over the file)."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--config", help="TOML file with TrainerConfig fields")
    for name, field in TrainerConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif name == "layers":
            parser.add_argument(flag, help="layers per stage, comma-separated, e.g. 2,1,1")
        elif name == "emulate":
            parser.add_argument(flag, type=json_object, help="emulated compute, as JSON")
        else:
            parser.add_argument(flag, help=f"default {field.default!r}")
    return parser.parse_args(argv)


def json_object(text: str) -> dict:
    """A flag's JSON object (argparse reports the error when it is not one)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    return value


def overrides_from(args: argparse.Namespace) -> dict:
    """The fields given as flags, as the numbers their fields hold (the config is strict)."""
    given = {name: getattr(args, name) for name in TrainerConfig.model_fields}
    if given["layers"] is not None:
        given["layers"] = [flag_number("layers", part, int) for part in given["layers"].split(",")]
    for name, field in TrainerConfig.model_fields.items():
        kinds = {field.annotation, *get_args(field.annotation)}
        kind = int if int in kinds else float if float in kinds else None
        if kind is not None and given[name] is not None:
            given[name] = flag_number(name, given[name], kind)
    return given


def flag_number(name: str, text: str, kind: type) -> int | float:
    """A flag's text as an int or a float; a ConfigError naming the flag when it is not one."""
    try:
        return kind(text.strip())
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(COMMAND_LINE, name, f"{text!r} is not {noun}") from None


def read_environment() -> tuple[int, int, str, int]:
    """RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (defaults: a single local rank)."""
    values = {}
    for var, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_PORT", "29500")):
        raw = os.environ.get(var, default)
        try:
            values[var] = int(raw)
        except ValueError:
            raise ConfigError(ENVIRONMENT, var, f"{raw!r} is not an integer") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ConfigError(
            ENVIRONMENT, "RANK", f"{values['RANK']} is outside 0..{values['WORLD_SIZE'] - 1}"
        )
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    return values["RANK"], values["WORLD_SIZE"], addr, values["MASTER_PORT"]


def prepare(argv: list[str] | None):
    """Validate everything and set the process up; raises ConfigError on bad input."""
    args = parse_args(argv)
    cfg = load_config(args.config, overrides_from(args))
    rank, world_size, addr, port = read_environment()
    check_world(cfg, world_size)

    import torch

    from trainer.netif import choose_iface, default_threads, export_iface

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError(args.config or "command line", "device", "CUDA is not available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and cuda)
    if cfg.dtype == "fp16" and not use_cuda:
        raise ConfigError(args.config or "command line", "dtype", "fp16 needs a CUDA device")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    try:
        iface = choose_iface(cfg.iface, addr)
    except OSError as exc:
        raise ConfigError(ENVIRONMENT, "MASTER_ADDR", f"no route to {addr!r}: {exc}") from None
    export_iface(iface)
    torch.set_num_threads(cfg.threads or default_threads(addr, world_size))
    return cfg, rank, world_size, addr, port, device


def wait_for_store(addr: str, port: int, timeout_s: float) -> None:
    """Return once rank 0's store accepts connections (or the timeout passes, for the process
    group to report): a store client that comes too early backs off for up to a second."""
    with contextlib.suppress(OSError):
        wait_listening(addr, port, timeout_s, poll_s=0.01)


def rendezvous_store(cfg, rank: int, world_size: int, addr: str, port: int):
    """The process group's TCP store. Rank 0's listens only on its fleet interface's address
    (torch's own would listen on every interface); the others connect to it."""
    import torch.distributed as dist

    from trainer.netif import choose_iface, listening_socket, store_address

    timeout = timedelta(seconds=cfg.timeout_s)
    if rank != 0:
        return dist.TCPStore(addr, port, world_size, False, timeout=timeout)
    listener = listening_socket(store_address(addr, choose_iface(cfg.iface, addr)), port)
    # detach(): the store owns the descriptor from here on (closing it would stop the store)
    return dist.TCPStore(
        addr, port, world_size, True, timeout=timeout, master_listen_fd=listener.detach()
    )


def run_rank(
    argv: list[str] | None,
    on_ready: Callable[[], None] | None = None,
    on_joined: Callable[[], None] | None = None,
) -> tuple[int, dict | None, str | None]:
    """Run one rank to the end: (exit code, rank 0's summary or None, error message or None).

    Exit code 2: bad input, found before any connection; 1: a peer died or timed out, or
    `on_ready` (called with the stage built, before the process group is joined) or `on_joined`
    (called once it is joined, before the first iteration) raised.
    """
    preparing = time.perf_counter()
    try:
        cfg, rank, world_size, addr, port, device = prepare(argv)
    except ConfigError as exc:
        return 2, None, f"trainer: error: {exc}"
    setup_s = {"prepare_s": time.perf_counter() - preparing}

    import torch.distributed as dist

    from trainer.train import train

    def join() -> None:
        if rank != 0:
            wait_for_store(addr, port, cfg.timeout_s)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=rendezvous_store(cfg, rank, world_size, addr, port),
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=cfg.timeout_s),
        )

    try:
        summary = train(cfg, rank, device, join, setup_s, on_ready, on_joined)
    except Exception as exc:  # a peer died or timed out: report and leave without hanging
        return 1, None, f"trainer: rank {rank} failed: {type(exc).__name__}: {exc}"
    dist.destroy_process_group()
    return 0, summary, None


def main(argv: list[str] | None = None) -> int:
    """Run one rank; returns the exit code (a failed rank leaves at once, without teardown)."""
    exit_code, summary, error = run_rank(argv)
    if error is not None:
        print(error, file=sys.stderr, flush=True)
    if exit_code == 1:
        sys.stdout.flush()
        os._exit(1)
    if summary is not None:
        print(json.dumps(summary), flush=True)
    return exit_code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's teardown: gloo work objects that torch.distributed's
    # pipelining schedules still hold can abort it ("terminate called without an active
    # exception", SIGABRT) after a run that succeeded and reported.
    os._exit(code)
