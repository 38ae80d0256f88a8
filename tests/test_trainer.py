"""The trainer against independent references, in real processes over gloo on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from trainer_workers import launch_cli, one_data_parallel_step, pipeline_gradients, spawn

from experiments.launch import trainer_flags
from experiments.localranks import REPO, finish, free_port
from inventory.errors import ConfigError
from inventory.ports import port_open
from trainer.__main__ import overrides_from, parse_args, rendezvous_store
from trainer.config import TrainerConfig, check_world, load_config
from trainer.data import TokenSource
from trainer.dataparallel import make_buckets
from trainer.model import CONFIGS, GPT
from trainer.netif import choose_iface, route_iface, store_address
from trainer.partition import Stage, split_layers
from trainer.tensorparallel import tensor_slice
from trainer.worker import GO, MARK, START

SEED = 3


def reference_gradients(cfg: TrainerConfig, batches):
    """Loss and gradients of the unpartitioned model on the concatenation of `batches`."""
    model = GPT(cfg.gpt, seed=cfg.seed)
    tokens = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    _, loss = model(tokens, targets)
    loss.backward()
    return model, loss.item()


def reference_step(cfg: TrainerConfig):
    """Gradients and parameters of the unpartitioned model after one SGD step on every
    replica's batch of iteration 0, concatenated."""
    source = TokenSource(cfg.dataset, cfg.gpt.vocab_size, cfg.seq, cfg.seed)
    batches = [source.batch(0, r, cfg.batch) for r in range(cfg.dp_degree)]
    model, _ = reference_gradients(cfg, batches)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=cfg.lr).step()
    return grads, dict(model.named_parameters())


def test_layers_split_evenly_or_as_given():
    assert split_layers(24, 12) == [range(2 * s, 2 * s + 2) for s in range(12)]
    assert split_layers(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert split_layers(4, 3, [1, 1, 2]) == [range(0, 1), range(1, 2), range(2, 4)]
    with pytest.raises(ValueError):
        split_layers(4, 2, [1, 1])


@pytest.mark.parametrize("head", ["lm", "classification"])
def test_stages_hold_the_full_models_weights_under_its_names(head):
    cfg = replace(CONFIGS["tiny"], head=head)
    full = dict(GPT(cfg, seed=SEED).named_parameters())
    seen = {}
    for s in range(3):
        stage = Stage(cfg, s, 3, seed=SEED)
        assert (stage.embed is not None) == (s == 0)
        assert (stage.head is not None) == (s == 2)
        seen |= dict(stage.named_parameters())
    assert seen.keys() == full.keys()
    for name, p in seen.items():
        assert torch.equal(p, full[name]), name
    assert sum(p.numel() for p in full.values()) == cfg.n_params()


@pytest.mark.parametrize("n_stages, head", [(3, "lm"), (3, "classification")])
def test_pipelined_loss_and_gradients_equal_the_full_models(tmp_path, n_stages, head):
    base = dict(
        model="tiny", pipeline=n_stages, batch=2 * n_stages, seed=SEED, seq_len=16, head=head
    )
    micro_counts = [1, n_stages, 2 * n_stages]
    spawn(pipeline_gradients, n_stages, str(tmp_path), base, micro_counts)

    cfg = TrainerConfig(**base)
    batch = TokenSource(cfg.dataset, cfg.gpt.vocab_size, cfg.seq, cfg.seed).batch(0, 0, cfg.batch)
    model, loss = reference_gradients(cfg, [batch])
    expected = {name: p.grad for name, p in model.named_parameters()}
    for n_micro in micro_counts:
        parts = [torch.load(tmp_path / f"m{n_micro}-r{r}.pt") for r in range(n_stages)]
        assert parts[-1]["loss"] == pytest.approx(loss, rel=1e-6)
        grads = {name: g for part in parts for name, g in part["grads"].items()}
        assert grads.keys() == expected.keys()
        for name, grad in grads.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


# Every data-parallel mode, with the chains cut into many chunks (4 KiB) and with buckets; `ps`
# and `sharded-ps` also on the backend's own reduce and broadcast (NCCL's path, here on gloo);
# and the reference system's GPipe schedule (its barrier and waits change no number).
SYNC_VARIANTS = [
    ("ps", {"dp_mode": "ps", "ps_chunk_kb": 4}, False),
    ("ps-buckets", {"dp_mode": "ps", "ps_bucket_mb": 0.05, "ps_chunk_kb": 16}, False),
    ("sharded", {"dp_mode": "sharded-ps", "ps_chunk_kb": 4}, False),
    ("ps-backend", {"dp_mode": "ps"}, True),
    ("sharded-backend", {"dp_mode": "sharded-ps", "ps_bucket_mb": 0.02}, True),
    ("star", {"dp_mode": "ps-star"}, False),
    ("allreduce", {"dp_mode": "allreduce"}, False),
    ("fsdp", {"dp_mode": "fsdp"}, False),
    ("fsdp-recompute", {"dp_mode": "fsdp", "recompute": True}, False),
    ("reference-schedule", {"dp_mode": "ps", "gpipe_schedule": "reference"}, False),
]


@pytest.mark.parametrize("pipeline, dp_degree", [(2, 2), (1, 3)])
def test_one_data_parallel_step_equals_one_step_on_the_concatenated_batch(
    tmp_path, pipeline, dp_degree
):
    base = dict(
        model="tiny", pipeline=pipeline, dp_degree=dp_degree, batch=4, micro_batch=2, seed=SEED,
        seq_len=16, optimizer="sgd", lr=0.5,
    )  # fmt: skip
    world = pipeline * dp_degree
    spawn(one_data_parallel_step, world, str(tmp_path), base, SYNC_VARIANTS)

    cfg = TrainerConfig(**base)
    expected_grads, expected = reference_step(cfg)
    for label, _, _ in SYNC_VARIANTS:
        ranks = [torch.load(tmp_path / f"{label}-r{r}.pt") for r in range(world)]
        for stage in range(pipeline):
            replicas = [ranks[replica * pipeline + stage] for replica in range(dp_degree)]
            for name, param in replicas[0]["params"].items():
                for other in replicas[1:]:
                    torch.testing.assert_close(param, other["params"][name], rtol=0, atol=0)
                torch.testing.assert_close(
                    replicas[0]["grads"][name], expected_grads[name], rtol=1e-5, atol=1e-7
                )
                torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6)
        names = {name for r in ranks for name in r["params"]}
        assert names == expected.keys(), label


# The reference's configuration in miniature: a classification head, a vocabulary of its own,
# the flat central PS (on chunked chains and on the backend's reduce and broadcast), the
# reference's schedule with a middle stage (its waits for the previous send) and SGD.
REFERENCE_VARIANTS = [
    ("reference-flat", {"ps_flat": True, "ps_chunk_kb": 4}, False),
    ("reference-flat-backend", {"ps_flat": True}, True),
]


def test_the_reference_configuration_steps_as_the_unpartitioned_model(tmp_path):
    base = dict(
        model="tiny", head="classification", vocab_size=70, pipeline=3, dp_degree=2, batch=4,
        micro_batch=2, seed=SEED, seq_len=16, optimizer="sgd", lr=0.5, dp_mode="ps",
        gpipe_schedule="reference",
    )  # fmt: skip
    cfg = TrainerConfig(**base)
    spawn(one_data_parallel_step, cfg.world_size, str(tmp_path), base, REFERENCE_VARIANTS)

    expected_grads, expected = reference_step(cfg)
    assert expected["head.fc.weight"].shape == (2, 32)
    assert expected["embed.wte.weight"].shape == (70, 32)
    for label, _, _ in REFERENCE_VARIANTS:
        ranks = [torch.load(tmp_path / f"{label}-r{r}.pt") for r in range(cfg.world_size)]
        for saved in ranks:
            for name, param in saved["params"].items():
                torch.testing.assert_close(
                    saved["grads"][name], expected_grads[name], rtol=1e-5, atol=1e-7
                )
                torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6)
        assert {name for r in ranks for name in r["params"]} == expected.keys(), label


def test_a_flat_ps_is_one_bucket_of_the_whole_stage():
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (10, 10, 30, 5, 5)]
    flat = TrainerConfig(model="tiny", dp_mode="ps", ps_flat=True)
    assert [[p.numel() for p in b] for b in make_buckets(params, flat.ps_bucket_bytes)] == [
        [10, 10, 30, 5, 5]
    ]
    with pytest.raises(ConfigError, match="ps_bucket_mb"):
        load_config(None, {"model": "tiny", "ps_flat": True, "ps_bucket_mb": 1.0})


TENSOR_VARIANTS = [
    ("tp-ps", {"dp_mode": "ps", "ps_chunk_kb": 4}, False),
    ("tp-allreduce", {"dp_mode": "allreduce"}, False),
    ("tp-recompute", {"dp_mode": "sharded-ps", "recompute": True}, False),
    ("tp-fsdp", {"dp_mode": "fsdp"}, False),
    ("tp-library", {"dp_mode": "fsdp", "engine": "pipelining-gpipe"}, False),
    ("tp-library-1f1b", {"dp_mode": "allreduce", "engine": "pipelining-1f1b"}, False),
]


@pytest.mark.parametrize("tensor, pipeline, dp_degree", [(2, 2, 2), (2, 1, 1)])
def test_tensor_parallel_shards_step_as_the_unpartitioned_model_on_the_whole_batch(
    tmp_path, tensor, pipeline, dp_degree
):
    """Each shard's gradients and stepped parameters are its slice of the unpartitioned
    model's on the concatenated batch; replicas and shards of a replicated tensor agree."""
    base = dict(
        model="tiny", tensor=tensor, pipeline=pipeline, dp_degree=dp_degree, batch=4,
        micro_batch=2, seed=SEED, seq_len=16, optimizer="sgd", lr=0.5,
    )  # fmt: skip
    cfg = TrainerConfig(**base)
    spawn(one_data_parallel_step, cfg.world_size, str(tmp_path), base, TENSOR_VARIANTS)

    expected_grads, expected = reference_step(cfg)
    for label, _, _ in TENSOR_VARIANTS:
        names = set()
        for rank in range(cfg.world_size):
            where = cfg.layout.position(rank)
            saved = torch.load(tmp_path / f"{label}-r{rank}.pt")
            for name, param in saved["params"].items():
                grad = tensor_slice(name, expected_grads[name], where.shard, tensor)
                if "c_attn" in name or "c_fc" in name or name.endswith("c_proj.weight"):
                    assert param.numel() * tensor == expected[name].numel(), (label, name)
                torch.testing.assert_close(saved["grads"][name], grad, rtol=1e-5, atol=1e-7)
                want = tensor_slice(name, expected[name].detach(), where.shard, tensor)
                torch.testing.assert_close(param, want, rtol=1e-5, atol=1e-6)
            names |= saved["params"].keys()
        assert names == expected.keys(), label


def test_a_tensor_degree_that_does_not_split_the_heads_is_refused():
    with pytest.raises(ConfigError, match="tensor"):
        load_config(None, {"model": "tiny", "tensor": 3})
    emulate = {"scale": 0.5, "forward_ms": [1.0], "backward_ms": [2.0]}
    with pytest.raises(ConfigError, match="tensor"):
        load_config(None, {"model": "tiny", "tensor": 2, "emulate": emulate})
    with pytest.raises(ConfigError, match="dp_mode"):
        load_config(None, {"model": "tiny", "dp_mode": "fsdp", "emulate": emulate})


def test_buckets_group_consecutive_tensors_up_to_their_size():
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (10, 10, 30, 5, 5)]
    sizes = lambda buckets: [[p.numel() for p in bucket] for bucket in buckets]  # noqa: E731
    assert sizes(make_buckets(params, 0)) == [[10], [10], [30], [5], [5]]
    assert sizes(make_buckets(params, 80)) == [[10, 10], [30], [5, 5]]
    assert sizes(make_buckets(params, 10**6)) == [[10, 10, 30, 5, 5]]


def test_cli_trains_with_pipeline_and_parameter_server_and_writes_results(tmp_path):
    out = tmp_path / "run"
    flags = ["--model", "tiny", "--pipeline", "2", "--dp-degree", "2", "--batch", "4",
             "--micro-batch", "1", "--iterations", "12", "--warmup", "2", "--lr", "3e-3",
             "--seq-len", "16", "--iface", "lo", "--out", str(out)]  # fmt: skip
    results = finish(launch_cli(4, flags), timeout=120)
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results

    summary = json.loads(results[0][1].strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    losses = summary["losses"]
    assert len(losses) == 12
    assert max(losses[-3:]) < min(losses[:3]) - 0.05, losses
    assert summary["config"]["pipeline"] == 2 and summary["config"]["dp_mode"] == "ps"
    assert summary["backend"] == "gloo" and summary["timed_iterations"] == 10
    assert summary["versions"]["torch"] == torch.__version__
    assert sorted((s["stage"], s["replica"]) for s in summary["stages"]) == [
        (0, 0), (0, 1), (1, 0), (1, 1)
    ]  # fmt: skip
    lines = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == list(range(2, 12))
    assert summary["iterations_s"] == [line["total_s"] for line in lines]
    for line in lines:
        parts = sum(line[k] for k in ("forward_s", "backward_s", "comm_wait_s", "optimizer_s"))
        assert 0 < parts <= line["total_s"]
        assert line["ps_sync_s"] > 0
    assert sorted(p.name for p in out.glob("rank-*.jsonl")) == [f"rank-{r}.jsonl" for r in range(4)]
    for name, stats in summary["phases"].items():
        assert stats["min"] <= stats["median"] <= stats["max"], name


@pytest.mark.parametrize(
    ("flags", "world_size", "field"),
    [
        (["--batch", "6", "--micro-batch", "4"], 2, "micro_batch"),
        (["--pipeline", "5"], 2, "pipeline"),
        (["--pipeline", "2", "--dp-degree", "2"], 2, "WORLD_SIZE"),
        (["--model", "gpt-9"], 2, "model"),
    ],
)
def test_bad_configs_fail_fast_on_every_rank(flags, world_size, field):
    started = time.monotonic()
    results = finish(launch_cli(world_size, flags), timeout=60)
    for code, _, err in results:
        assert code == 2, err
        assert f": {field}: " in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < 50


def test_a_bad_field_in_a_config_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "tiny"\npipeline = 2\nbatch = 4\nmicro_batch = 3\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.file, caught.value.field) == (str(path), "micro_batch")
    assert load_config(path, {"micro_batch": 2}).n_micro == 2
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        check_world(load_config(path, {"micro_batch": 2}), 3)
    path.write_text("pipeline = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_dead_or_frozen_rank_makes_the_others_exit_within_the_timeout(sig):
    flags = ["--model", "tiny", "--pipeline", "3", "--batch", "3", "--iterations", "100000",
             "--seq-len", "16", "--timeout-s", "8"]  # fmt: skip
    procs = launch_cli(3, flags)
    try:
        for line in procs[0].stdout:
            if line.startswith("iteration 3:"):
                break
        procs[1].send_signal(sig)
        stopped_at = time.monotonic()
        survivors = finish([procs[0], procs[2]], timeout=40)
        waited = time.monotonic() - stopped_at
    finally:
        procs[1].kill()
        finish(procs, timeout=5)
    for code, _, err in survivors:
        assert code == 1, err
        assert "failed" in err, err
    assert waited < 30


def test_the_interface_is_the_flag_else_the_route_to_the_master(monkeypatch):
    monkeypatch.delenv("WANLAB_IFACE", raising=False)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert route_iface("127.0.0.1") == "lo"
    assert choose_iface(None, "127.0.0.1") == "lo"
    assert choose_iface("lo", "198.18.9.1") == "lo"
    monkeypatch.setenv("WANLAB_IFACE", "lo")
    assert choose_iface(None, "198.18.9.1") == "lo"
    # an interface this host does not have is bad input, named by where it came from
    monkeypatch.setenv("WANLAB_IFACE", "eth9")
    assert choose_iface("lo", "127.0.0.1") == "lo"  # the flag comes first
    for flag, field in ((None, "WANLAB_IFACE"), ("veth7", "iface")):
        with pytest.raises(ConfigError) as caught:
            choose_iface(flag, "127.0.0.1")
        assert caught.value.field == field


def test_the_rendezvous_store_listens_only_on_the_masters_address():
    # torch's own store listens on every interface; 127.0.0.2 (loopback too, but another
    # address) reaches a socket bound to 0.0.0.0 and must not reach this one.
    port = free_port()
    store = rendezvous_store(TrainerConfig(timeout_s=10), 0, 1, "127.0.0.1", port)
    store.set("joined", "yes")
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                               text=True, check=True).stdout.split()  # fmt: skip
    assert f"127.0.0.1:{port}" in listening, listening
    assert port_open("127.0.0.1", port, timeout=2)
    assert not port_open("127.0.0.2", port, timeout=2)
    client = rendezvous_store(TrainerConfig(timeout_s=10), 1, 2, "127.0.0.1", port)
    assert client.get("joined") == b"yes"


def test_a_master_address_this_host_does_not_hold_binds_the_interfaces_own():
    assert store_address("127.0.0.1", "lo") == "127.0.0.1"
    # 198.18.255.254 is on no interface here (a master reached through NAT): the store binds to
    # the address of the interface the trainer uses instead; nothing is sent to it.
    assert store_address("198.18.255.254", "lo") == "127.0.0.1"


@pytest.fixture
def two_namespaces():
    """Two network namespaces joined by a veth pair, 198.18.77.1 and .2; removed afterwards."""
    names = [f"wtr{os.getpid()}x{i}" for i in range(2)]
    links = [f"wtrv{os.getpid()}x{i}"[:15] for i in range(2)]
    try:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            ["ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1]], check=True
        )
        for i, (ns, link) in enumerate(zip(names, links, strict=True)):
            subprocess.run(["ip", "link", "set", link, "netns", ns], check=True)
            ip = ["ip", "-n", ns]
            subprocess.run([*ip, "addr", "add", f"198.18.77.{i + 1}/30", "dev", link], check=True)
            subprocess.run([*ip, "link", "set", link, "up"], check=True)
            subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        yield list(zip(names, links, strict=True))
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_ranks_in_two_namespaces_find_their_interface_and_train(two_namespaces):
    flags = ["--model", "tiny", "--pipeline", "2", "--batch", "2", "--iterations", "3",
             "--seq-len", "16", "--threads", "1", "--timeout-s", "30"]  # fmt: skip
    procs = []
    for rank, (ns, _) in enumerate(two_namespaces):
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "198.18.77.1",
               "MASTER_PORT": "29517", "PYTHONPATH": str(REPO)}  # fmt: skip
        env_args = [f"{key}={value}" for key, value in env.items()]
        cmd = ["ip", "netns", "exec", ns, "env", *env_args, sys.executable, "-m", "trainer"]
        procs.append(subprocess.Popen([*cmd, *flags], cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = finish(procs, timeout=60)
    assert [code for code, _, _ in results] == [0, 0], results
    summary = json.loads(results[0][1].strip().splitlines()[-1])
    assert summary["world_size"] == 2 and len(summary["losses"]) == 3
    for ns, link in two_namespaces:
        probe = "from trainer.netif import route_iface; print(route_iface('198.18.77.1'))"
        found = subprocess.run(["ip", "netns", "exec", ns, "env", f"PYTHONPATH={REPO}",
                                sys.executable, "-c", probe], capture_output=True, text=True,
                               check=True)  # fmt: skip
        assert found.stdout.strip() == link


def test_workers_build_before_go_and_join_their_process_group_only_after(tmp_path):
    """The controller shapes the network between "built" and go, and probes it between "joined"
    and start: no connection between the ranks (not even to rank 0's store) may exist before go,
    so every one is made on the shaped network, and none may be missing after "joined"."""
    port = free_port()
    flags = ["--model", "tiny", "--pipeline", "2", "--batch", "2", "--iterations", "3",
             "--warmup", "1", "--seq-len", "16", "--threads", "1", "--iface", "lo"]  # fmt: skip
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer.worker"],
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(2)
    ]

    def send_all(line: dict) -> None:
        for worker in workers:
            worker.stdin.write(json.dumps(line) + "\n")
            worker.stdin.flush()

    def next_answers() -> list[dict]:
        answers = []
        for worker in workers:
            while not (line := worker.stdout.readline()).startswith(MARK):
                assert line, "a worker ended without answering"
            answers.append(json.loads(line[len(MARK) :]))
        return answers

    try:
        assert all(answer["ready"] for answer in next_answers())
        for rank, worker in enumerate(workers):
            env = {"RANK": rank, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            worker.stdin.write(json.dumps({"argv": flags, "env": env}) + "\n")
            worker.stdin.flush()
        assert next_answers() == [{"built": True}] * 2
        assert not port_open("127.0.0.1", port), "rank 0's store listened before go"
        send_all(GO)
        assert next_answers() == [{"joined": True}] * 2
        assert port_open("127.0.0.1", port)
        send_all(START)
        answers = next_answers()
        assert [a["exit_code"] for a in answers] == [0, 0], answers
        assert answers[0]["summary"]["setup_s"]["process_group_s"] > 0
        assert answers[0]["summary"]["timed_iterations"] == 2
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=30)


@pytest.mark.parametrize("flat", [True, False])
def test_the_runners_flags_give_the_rank_the_same_configuration(flat):
    """What the runner passes to `python -m trainer` reads back as the configuration it was
    made from, the reference's fields (head, vocabulary, flat sync, schedule) included."""
    config = TrainerConfig(
        model="tiny", head="classification", vocab_size=70, ps_flat=flat, recompute=flat,
        optimizer="sgd", gpipe_schedule="reference", pipeline=2, batch=4,
    )  # fmt: skip
    args = parse_args(trainer_flags(config))
    assert load_config(None, overrides_from(args)) == config
