"""The cost model against cases worked by hand, and the large-fleet simulation's sanity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from experiments.costmodel.analytic import Hops, StageCompute, _run_pipeline, evaluate, predict
from experiments.costmodel.barrier import dissemination_barrier, rounds
from experiments.costmodel.calibrate import from_flops, workload_of
from experiments.costmodel.collectives import _chain_sync
from experiments.costmodel.network import (
    TCP_PAYLOAD_SHARE,
    Native,
    Network,
    pair_network,
    uniform_network,
)
from experiments.costmodel.reference import load_reference, storage_mib
from experiments.costmodel.simulate import explore, world_scenario
from experiments.costmodel.tcp import (
    MSS_BYTES,
    mss_of,
    payload_share,
    receive_window,
    start_window,
    tcp_side,
    wire_s,
)
from experiments.costmodel.workload import Workload, make_workload
from netem.pairs import pair_matrix_from_data
from netem.profile import BUILTIN, parse_profile
from netem.tcp import PRESETS
from trainer.config import TrainerConfig
from trainer.layout import Layout
from trainer.model import CONFIGS
from trainer.partition import Stage, split_layers, stage_tensor_sizes
from trainer.tensorparallel import shard_stage


def toy_workload(
    stages, replicas, micro, *, schedule="gpipe", dp_mode="ps-star", act=1.0, params=1.0,
    buckets=1, chunk=256 * 1024,
):  # fmt: skip
    """A workload with round numbers; FLOPs are unused when stage times are given. Each stage's
    gradients (4 bytes per parameter) go in `buckets` equal buckets."""
    ones = np.ones(stages)
    per_bucket = np.full(buckets, 4 * params / buckets)
    return Workload(
        layout=Layout(stages, replicas),
        n_micro=micro,
        micro_batch=1,
        seq=1,
        dp_mode=dp_mode,
        schedule=schedule,
        activation_bytes=act,
        stage_params=ones * params,
        forward_flops=ones,
        backward_flops=2 * ones,
        sync_buckets=tuple(per_bucket for _ in range(stages)),
        chunk_bytes=chunk,
    )


def times(stages, t_f, t_b, opt=0.0):
    return StageCompute(
        np.full(stages, t_f, dtype=float),
        np.full(stages, t_b, dtype=float),
        np.full(stages, opt, dtype=float),
    )


def free_network(hosts):
    return Network(np.zeros((hosts, hosts)), np.full((hosts, hosts), 1e30), np.full(hosts, 1e30))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("stages", "micro"), [(3, 4), (4, 8), (2, 5)])
def test_bubble_formula_on_a_free_network(schedule, stages, micro):
    t_f, t_b, opt = 1.0, 2.0, 0.5
    result = predict(
        toy_workload(stages, 1, micro, schedule=schedule),
        times(stages, t_f, t_b, opt),
        free_network(stages),
    )
    assert result.iteration_s == pytest.approx((micro + stages - 1) * (t_f + t_b) + opt)
    assert result.parts["compute"] == pytest.approx(micro * (t_f + t_b))
    assert result.parts["bubble"] == pytest.approx((stages - 1) * (t_f + t_b))
    assert result.parts["activation_transfer"] == pytest.approx(0.0)


def test_one_micro_batch_pays_each_hop_both_ways():
    """Rank 0 ends last; the closing barrier's one round waits for rank 1's reply: 2α.

    Rank 1 left the opening barrier α before rank 0, so its receive is heard by rank 0 at
    rank 0's start, before the first send: the rendezvous costs nothing here.
    """
    alpha, wire = 0.01, 0.1  # latency; 1 MB over 10 MB/s
    net = Network(np.full((2, 2), alpha), np.full((2, 2), 1e7), np.full(2, 1e7))
    result = predict(toy_workload(2, 1, 1, act=1e6), times(2, 0.05, 0.1), net)
    pipeline = 2 * 0.05 + 2 * 0.1 + 2 * (alpha + wire)
    assert result.iteration_s == pytest.approx(pipeline + 2 * alpha)
    assert result.parts["barrier"] == pytest.approx(2 * alpha)
    assert result.slowest_hop_s == pytest.approx(alpha + wire)


def test_a_bandwidth_bound_hop_serializes_the_micro_batches():
    """10 micro-batches, compute 1 ms a step, 100 ms on the wire each: the link sets the pace."""
    alpha, wire, step, micro = 0.01, 0.1, 0.001, 10
    net = Network(np.full((2, 2), alpha), np.full((2, 2), 1e7), np.full(2, 1e7))
    result = predict(toy_workload(2, 1, micro, act=1e6), times(2, step, step), net)
    last_activation_in = step + micro * wire + alpha
    last_gradient_in = (last_activation_in + 2 * step) + micro * wire + alpha
    closing_barrier = 2 * alpha
    assert result.iteration_s == pytest.approx(last_gradient_in + step + closing_barrier)
    assert result.parts["activation_transfer"] > 2 * (micro - 1) * wire


def test_a_barrier_round_costs_a_round_trip():
    """gloo sends only once the receiver's notice came back: 2α a round, not α."""
    alpha = 0.01
    latency = np.full((4, 4), alpha)
    two = np.array([[0, 1]])
    assert dissemination_barrier(latency, two, np.zeros((1, 2)))[0] == pytest.approx([0.02, 0.02])
    four = np.array([[0, 1, 2, 3]])
    assert dissemination_barrier(latency, four, np.zeros((1, 4)))[0] == pytest.approx([0.04] * 4)


def test_a_barrier_lets_the_early_rank_go_a_hop_before_the_late_one():
    """Rank 1 arrives at 1 s: its message leaves then (rank 0's notice is long there), reaching
    rank 0 at 1 + α; rank 1 waits for rank 0's notice-then-message, 1 + 2α."""
    alpha = 0.01
    left = dissemination_barrier(np.full((2, 2), alpha), np.array([[0, 1]]), np.array([[0, 1.0]]))
    assert left[0] == pytest.approx([1.01, 1.02])


def test_a_forward_send_waits_for_the_receivers_notice():
    """Both stages start at 0 with α = 50 ms: the activation, ready at 1 ms, leaves at α (when
    stage 1's posted receive is heard) and arrives at 2α; the gradient goes at once."""
    alpha, step = 0.05, 0.001
    net = Network(np.full((2, 2), alpha), np.full((2, 2), 1e30), np.full(2, 1e30))
    workload = toy_workload(2, 1, 1)
    hosts = np.array([[[0]], [[1]]])
    hops = Hops(net, hosts[:-1], hosts[1:], size=0.0)
    done = _run_pipeline(workload, times(2, step, step), hops, np.zeros((2, 1, 1)))
    stage_1_done = 2 * alpha + 2 * step
    assert done[1, 0, 0] == pytest.approx(stage_1_done)
    assert done[0, 0, 0] == pytest.approx(stage_1_done + alpha + step)


def test_a_shaped_rate_carries_data_at_its_payload_share():
    """10 Mbit/s of 1,514-byte frames carry 1,448 bytes of TCP payload each."""
    net = uniform_network(2, parse_profile("10ms/10mbit"), Native(latency_s=0.0, rate_bps=1e9))
    assert net.bytes_per_s[0, 1] == pytest.approx(10e6 / 8 * 1448 / 1514)
    unshaped = uniform_network(2, BUILTIN["default"], Native(latency_s=0.0, rate_bps=1e9))
    assert unshaped.bytes_per_s[0, 1] == pytest.approx(1e9 / 8)  # the probe measured payload


def test_ps_sync_is_twice_latency_plus_d_minus_1_copies_when_ingress_is_as_slow():
    d, n, alpha, rate_bps = 4, 4e6, 0.002, 8e8  # N bytes of gradients, 100 MB/s
    net = uniform_network(d, BUILTIN["default"], Native(latency_s=alpha, rate_bps=rate_bps))
    beta = rate_bps / 8
    result = predict(toy_workload(1, d, 1, params=n / 4), times(1, 0.0, 0.0), net)
    assert result.parts["ps_sync"] == pytest.approx(2 * (alpha + (d - 1) * n / beta))


def test_ps_push_runs_in_parallel_when_only_egress_is_shaped():
    d, n = 4, 4e6
    native = Native(latency_s=0.0, rate_bps=1e10)
    shaped = parse_profile("2ms/800mbit")
    net = uniform_network(d, shaped, native)
    beta = 8e8 * TCP_PAYLOAD_SHARE / 8
    result = predict(toy_workload(1, d, 1, params=n / 4), times(1, 0.0, 0.0), net)
    push, pull = 0.002 + n / beta, (d - 1) * n / beta + 0.002
    assert result.parts["ps_sync"] == pytest.approx(push + pull)


@pytest.mark.parametrize("step_latencies", [2, 1])  # gloo, NCCL
def test_allreduce_moves_two_d_minus_1_over_d_of_the_gradients(step_latencies):
    d, n, alpha, rate_bps = 4, 4e6, 0.002, 8e8
    net = uniform_network(d, BUILTIN["default"], Native(latency_s=alpha, rate_bps=rate_bps))
    beta = rate_bps / 8
    workload = replace(
        toy_workload(1, d, 1, dp_mode="allreduce", params=n / 4),
        ring_step_latencies=step_latencies,
    )
    ring = predict(workload, times(1, 0.0, 0.0), net)
    assert ring.parts["allreduce"] == pytest.approx(
        2 * (d - 1) * step_latencies * alpha + 2 * (d - 1) / d * n / beta
    )
    no_latency = uniform_network(d, BUILTIN["default"], Native(latency_s=0.0, rate_bps=rate_bps))
    star = predict(toy_workload(1, d, 1, params=n / 4), times(1, 0.0, 0.0), no_latency)
    ring0 = predict(
        toy_workload(1, d, 1, dp_mode="allreduce", params=n / 4), times(1, 0.0, 0.0), no_latency
    )
    assert star.parts["ps_sync"] / ring0.parts["allreduce"] == pytest.approx(d)


def test_chained_ps_costs_each_bucket_its_pipelined_reduce_and_broadcast():
    d, n, alpha, rate_bps, chunk, buckets = 4, 4e6, 0.002, 8e8, 1e5, 5
    net = uniform_network(d, BUILTIN["default"], Native(latency_s=alpha, rate_bps=rate_bps))
    beta, size = rate_bps / 8, n / buckets
    workload = toy_workload(1, d, 1, dp_mode="ps", params=n / 4, buckets=buckets, chunk=chunk)
    result = predict(workload, times(1, 0.0, 0.0), net)
    # per phase: the first chunk through D − 1 hops, the rest behind it; only the first phase
    # waits for the receives' notice (each later one follows the previous bucket's broadcast)
    phase = (d - 1) * (chunk / beta + alpha) + (size - chunk) / beta
    assert result.parts["ps_sync"] == pytest.approx(alpha + buckets * 2 * phase)
    assert phase == pytest.approx((d - 1) * alpha + (size + (d - 2) * chunk) / beta)


def test_after_an_idle_each_hop_of_a_ps_chain_ramps_the_first_chunk_in_turn():
    """With slow start after idle, the first chunk leaves every hop from the initial window
    (a hop forwards it only once it has all of it): three initial windows take one round trip,
    then the last two at the line rate, at each of the D − 1 hops in turn. The broadcast's
    first use of its direction follows a long idle too."""
    d, alpha = 3, 0.002
    initial = 10 * MSS_BYTES
    chunk = 3 * initial
    net = uniform_network(d, parse_profile("2ms/1gbit"), Native(latency_s=0.0, rate_bps=1e10))
    cold = net.with_tcp(tcp_side([{"slow_start_after_idle": True, "initcwnd": 10}] * d))
    workload = toy_workload(1, d, 1, dp_mode="ps", params=chunk / 4, buckets=1, chunk=chunk)
    beta, rtt = 1e9 * TCP_PAYLOAD_SHARE / 8, 2 * alpha
    hop = rtt + 2 * initial / beta  # round 1: one window; then two windows at line rate
    phase = (d - 1) * (hop + alpha)  # hop after hop (after the receives' notice, once)
    cold_sync = predict(workload, times(1, 0.0, 0.0), cold).parts["ps_sync"]
    assert cold_sync == pytest.approx(alpha + 2 * phase)
    warm = net.with_tcp(tcp_side([{"slow_start_after_idle": False}] * d))
    warm_sync = predict(workload, times(1, 0.0, 0.0), warm).parts["ps_sync"]
    assert warm_sync == pytest.approx(alpha + 2 * (d - 1) * (chunk / beta + alpha))


def test_sharded_ps_sends_d_minus_1_over_d_of_the_gradients_per_host_and_phase():
    d, n, rate_bps, chunk = 4, 4e6, 8e8, 1e5
    net = uniform_network(d, BUILTIN["default"], Native(latency_s=0.0, rate_bps=rate_bps))
    beta, size = rate_bps / 8, n / d  # one bucket per replica
    workload = toy_workload(1, d, 1, dp_mode="sharded-ps", params=n / 4, buckets=d, chunk=chunk)
    sharded = predict(workload, times(1, 0.0, 0.0), net)
    # every link starts at once with the bucket it is the tail of, and the other chains' chunks
    # come in while it is busy: each phase is the (D − 1)/D·N every host sends, no fill
    assert sharded.parts["ps_sync"] == pytest.approx(2 * (d - 1) * size / beta)
    central = predict(replace(workload, dp_mode="ps"), times(1, 0.0, 0.0), net)
    assert central.parts["ps_sync"] == pytest.approx(d * 2 * (size + (d - 2) * chunk) / beta)


def test_sharded_ps_with_one_bucket_is_the_central_chain():
    """One bucket is one chain from replica 0 whichever mode: the chunk-by-chunk play of
    `sharded-ps` must give the `ps` formula, fill and notice included, when every replica
    starts together (in a whole iteration `ps` starts them all with the last)."""
    d, alpha, rate_bps, chunk = 4, 0.003, 8e8, 1e5
    net = uniform_network(d, BUILTIN["default"], Native(latency_s=alpha, rate_bps=rate_bps))
    workload = toy_workload(1, d, 1, dp_mode="ps", params=7.5 * chunk / 4, buckets=1, chunk=chunk)
    hosts, done = np.arange(d).reshape(1, 1, d), np.zeros((1, 1, d))
    central = _chain_sync(workload, net, hosts, done)
    sharded = _chain_sync(replace(workload, dp_mode="sharded-ps"), net, hosts, done)
    beta = rate_bps / 8
    phase = (d - 1) * alpha + (7.5 * chunk + (d - 2) * chunk) / beta
    assert central.max() == pytest.approx(alpha + 2 * phase)
    assert sharded.max() == pytest.approx(central.max())


def test_sharded_ps_broadcast_needs_no_notice_and_at_d_2_no_second_slow_start():
    """Every receive of both phases is posted at the sync's start, so only the reduce waits
    for their notice; at D = 2 the broadcast runs back over the connections the reduce has
    just used, so it starts at the line rate, while the reduce after the idle ramps up from
    the initial window (three initial windows: one round trip, then two at the line rate)."""
    d, alpha = 2, 0.002
    initial = 10 * MSS_BYTES
    bucket = 3 * initial
    net = uniform_network(d, parse_profile("2ms/1gbit"), Native(latency_s=0.0, rate_bps=1e10))
    cold = net.with_tcp(tcp_side([{"slow_start_after_idle": True, "initcwnd": 10}] * d))
    workload = toy_workload(
        1, d, 1, dp_mode="sharded-ps", params=d * bucket / 4, buckets=d, chunk=bucket
    )
    beta, rtt = 1e9 * TCP_PAYLOAD_SHARE / 8, 2 * alpha
    reduce = alpha + (bucket / beta + alpha) + (rtt + 2 * initial / beta - bucket / beta)
    broadcast = bucket / beta + alpha
    sync = predict(workload, times(1, 0.0, 0.0), cold).parts["ps_sync"]
    assert sync == pytest.approx(reduce + broadcast)


def test_stage_tensor_sizes_are_the_stages_own_parameters():
    for gpt in (CONFIGS["tiny"], replace(CONFIGS["tiny"], bias=False)):
        layers = split_layers(gpt.n_layer, 3)
        expected = [[p.numel() for p in Stage(gpt, s, 3).parameters()] for s in range(3)]
        assert stage_tensor_sizes(gpt, layers) == expected
        workload = make_workload(gpt, pipeline=3, dp_degree=1, batch=1, micro_batch=1, seq=8)
        assert [sum(sizes) for sizes in expected] == list(workload.stage_params)


def test_pair_matrix_hops_use_their_own_pair():
    matrix = pair_matrix_from_data(
        {
            "by": "region",
            "link": [
                {"src": "a", "dst": "a", "delay": "10ms", "rate": "2gbit"},
                {"src": "a", "dst": "b", "delay": "67ms", "rate": "790mbit", "both_ways": False},
            ],
        },
        "test",
    )
    native = Native(latency_s=1e-4, rate_bps=1e10)
    net = pair_network(["a", "a", "b"], matrix, native)
    assert net.latency_s[0, 1] == pytest.approx(0.0101)
    assert net.bytes_per_s[0, 1] == pytest.approx(2e9 * TCP_PAYLOAD_SHARE / 8)
    assert net.latency_s[1, 2] == pytest.approx(0.0671)
    assert net.bytes_per_s[1, 2] == pytest.approx(790e6 * TCP_PAYLOAD_SHARE / 8)
    assert net.latency_s[2, 1] == pytest.approx(1e-4)  # b → a is not in the matrix
    assert net.bytes_per_s[2, 1] == pytest.approx(1e10 / 8)
    assert net.latency_s[2, 2] == 0.0

    workload = toy_workload(2, 1, 1, act=1e6)
    inside, across = np.array([[[0], [1]]]), np.array([[[1], [2]]])
    result = evaluate(workload, times(2, 0.0, 0.0), net, np.concatenate([inside, across]))
    a_to_b = 0.0671 + 1e6 / net.bytes_per_s[1, 2]
    assert result.slowest_hop_s[0] == pytest.approx(0.0101 + 1e6 / net.bytes_per_s[0, 1])
    assert result.slowest_hop_s[1] == pytest.approx(a_to_b)


def test_workload_sizes_match_the_model():
    gpt = CONFIGS["gpt3-xl"]
    w = make_workload(gpt, pipeline=12, dp_degree=1, batch=64, micro_batch=1, seq=2048)
    assert w.stage_params.sum() == gpt.n_params()
    assert w.activation_bytes == 2048 * 2048 * 4  # a 16 MiB activation in fp32
    total = w.forward_flops.sum() + w.backward_flops.sum()
    d = gpt.n_embd
    not_multiplied = (gpt.vocab_size + gpt.block_size) * d + gpt.n_layer * 13 * d + 2 * d
    assert total / 2048 == pytest.approx(gpt.flops_per_token(2048) - 6 * not_multiplied)


def test_reference_calibration_reproduces_the_reference_cell():
    reference = load_reference()
    calibration = reference.calibration()
    config = reference.config()
    workload = calibration.workload_for(config)
    assert workload.schedule == "reference"
    network = uniform_network(12, BUILTIN["default"], calibration.native)
    network = network.with_tcp(calibration.tcp_for(config, calibration.tcp, 12))
    result = predict(workload, calibration.compute_for(workload), network)
    assert result.iteration_s == pytest.approx(15.16, rel=1e-5)
    assert calibration.tcp["rmem"][2] == 6 * 2**20 and calibration.tcp["slow_start_after_idle"]
    assert sum(result.parts.values()) == pytest.approx(result.iteration_s)
    # physical: below a V100's fp32 peak (with an LM head of 50,257 tokens it took 17 TFLOP/s)
    assert calibration.flops_per_s < calibration.peak_flops_per_s == 15.7e12


@pytest.mark.parametrize("dp_mode", ["ps", "sharded-ps", "ps-star", "allreduce"])
def test_a_1024_host_world_scenario_gives_sensible_numbers(dp_mode):
    config = TrainerConfig(
        model="gpt3-xl", batch=64, pipeline=16, dp_degree=64, recompute=True, dp_mode=dp_mode
    )
    scenario = world_scenario(config, from_flops(), 1024)
    found = explore(scenario, restarts=2, randoms=2)
    assert found["hosts"] == 1024
    parts = found["best_parts"]
    assert np.isfinite(found["best_iteration_s"]) and found["best_iteration_s"] > 0
    assert sum(parts.values()) == pytest.approx(found["best_iteration_s"])
    assert all(value >= -1e-9 for value in parts.values())
    assert found["best_regions_per_pipeline"] == 1.0  # greedy pipelines stay in one region
    assert found["best_slowest_hop_s"] < min(found["random_slowest_hop_s"])
    assert found["best_iteration_s"] <= min(found["random_iteration_s"]) * 1.01


MSS = 1448


def test_a_warm_connection_with_room_moves_at_the_rate_and_a_full_window_at_w_over_r():
    size, rtt, rate = 16e6, np.array(0.1), np.array(125e6)
    unlimited = wire_s(size, rtt, rate, np.array(np.inf), np.array(rate * rtt))
    assert unlimited == pytest.approx(size / rate)
    window = np.array(3 * 2**20)  # below β·R = 12.5 MB: the window sets the pace
    assert wire_s(size, rtt, rate, window, window) == pytest.approx(size * rtt / window)


def test_slow_start_doubles_the_window_each_round_trip():
    rtt, rate, initial = np.array(0.1), np.array(1e12), np.array(10.0 * MSS)
    # three rounds carry 1 + 2 + 4 initial windows: two round trips, then the last at line rate
    size = 7 * 10 * MSS
    assert wire_s(size, rtt, rate, np.array(np.inf), initial) == pytest.approx(0.2, abs=1e-6)
    # one byte more needs a fourth round
    assert wire_s(size + 1, rtt, rate, np.array(np.inf), initial) == pytest.approx(0.3, abs=1e-6)


def test_an_idle_connection_halves_its_window_per_rto_when_told_to():
    cap, initial, rtt = np.array(1e6), np.array(10.0 * MSS), np.array(0.05)
    rto = 0.05 + 0.2
    on, off = np.array(True), np.array(False)
    assert start_window(cap, initial, on, np.array(0.9 * rto), rtt) == cap
    assert start_window(cap, initial, on, np.array(2.1 * rto), rtt) == cap / 4
    assert start_window(cap, initial, on, np.array(np.inf), rtt) == initial
    assert start_window(cap, initial, off, np.array(np.inf), rtt) == cap


def test_the_window_is_what_both_ends_buffers_allow():
    assert receive_window(6 * 2**20, 1) == 3 * 2**20
    assert receive_window(4 * 2**20, 2) == 3 * 2**20
    side = tcp_side([PRESETS["ubuntu-2022"].model_dump(), None], sockets=2)
    assert side.window(np.array(0), np.array(0)) == 2 * 3 * 2**20  # rmem 6 MiB / 2, 2 sockets
    assert side.window(np.array(1), np.array(0)) == 2 * 3 * 2**20  # host 1's own is unknown
    assert tcp_side([None, None]) is None


def test_each_links_first_send_of_an_iteration_ramps_up_and_the_rest_do_not():
    """Two stages, three micro-batches, no compute: stage 1 has its last activation after one
    cold send and two warm ones, and stage 0 its last gradient likewise."""
    native = Native(latency_s=0.025, rate_bps=8e8)
    size = 2e6
    workload = toy_workload(2, 1, 3, act=size)
    settings = PRESETS["ubuntu-2022"].model_dump()
    base = uniform_network(2, BUILTIN["default"], native)
    done = {}
    for ramp in (True, False):
        network = base.with_tcp(tcp_side([settings | {"slow_start_after_idle": ramp}] * 2))
        hops = Hops(network, np.array([[[0]]]), np.array([[[1]]]), size)
        done[ramp] = _run_pipeline(workload, times(2, 0.0, 0.0), hops, np.zeros((2, 1, 1)))
    a, b = np.array(0), np.array(1)
    network = base.with_tcp(tcp_side([settings] * 2))
    cold, warm = network.wire_s(size, a, b), network.wire_s(size, a, b, 0.0)
    assert cold > 2 * warm  # 2 MB in slow start from 10 segments over a 50 ms round trip
    notice, alpha = 0.025, 0.025
    assert done[True][0, 0, 0] == pytest.approx(notice + 2 * (cold + 2 * warm + alpha))
    assert done[False][0, 0, 0] == pytest.approx(notice + 2 * (3 * warm + alpha))


def test_the_reference_schedule_waits_between_phases_and_for_each_middle_stage_send():
    """Three stages, M = 2, t_f = 1 s, t_b = 0, every message 0.5 s on the wire, no buffers
    (a send completes as its last byte leaves), no latency.

    Ours: stage 1 gets m0 at 1.5, computes to 2.5, sends to 3.0; gets m1 at 2.5 and computes
    it at once (to 3.5), sends 3.5-4.0; stage 2 computes m0 3.0-4.0 and m1 4.0-5.0. Backwards
    (free): stage 2 sends at 5.0-5.5 and 5.5-6.0; stage 1 passes them on 5.5-6.0 and 6.0-6.5:
    done at 6.5.

    The reference's backend runs a receive after the previous send: stage 1 computes m1 only
    once send(m0) has completed (3.0), to 4.0, sends 4.0-4.5; stage 2 computes m1 4.5-5.5.
    Everyone leaves the barrier at 5.5; stage 2 sends 5.5-6.0 and 6.0-6.5, stage 1 passes the
    first on at 6.0-6.5 and the second once that send completed and it arrived (6.5), to 7.0."""
    net = Network(np.zeros((3, 3)), np.full((3, 3), 2.0), np.full(3, 1e30))
    hosts = np.arange(3).reshape(3, 1, 1)
    hops = Hops(net, hosts[:-1], hosts[1:], size=1.0)
    compute = times(3, 1.0, 0.0)
    ours = _run_pipeline(toy_workload(3, 1, 2), compute, hops, np.zeros((3, 1, 1)))
    theirs = _run_pipeline(
        toy_workload(3, 1, 2, schedule="reference"), compute, hops, np.zeros((3, 1, 1))
    )
    assert ours[:, 0, 0] == pytest.approx([6.5, 6.5, 6.0])
    assert theirs[:, 0, 0] == pytest.approx([7.0, 7.0, 6.5])


def test_every_socket_of_a_connection_starts_from_its_own_initial_window():
    net = uniform_network(2, parse_profile("50ms/1gbit"), Native(latency_s=0.0, rate_bps=1e10))
    cold = {"slow_start_after_idle": True}
    four = net.with_tcp(tcp_side([cold | {"initcwnd": 10}] * 2, sockets=4))
    one = net.with_tcp(tcp_side([cold | {"initcwnd": 40}] * 2, sockets=1))
    src, dst = np.array([0]), np.array([1])
    first = four.wire_s(4e6, src, dst)
    assert first == pytest.approx(one.wire_s(4e6, src, dst))
    assert first > 2 * net.wire_s(4e6, src, dst)  # slow start still shows at 100 ms RTT


def test_a_send_completes_once_its_rest_fits_in_the_senders_buffers():
    rate_bps = 1e8
    net = uniform_network(2, parse_profile("10ms/100mbit"), Native(latency_s=0.0, rate_bps=1e10))
    warm = {"wmem": (4096, 16384, 400_000), "slow_start_after_idle": False}
    net = net.with_tcp(tcp_side([warm] * 2, sockets=2, backend_buffer_bytes=100_000))
    hosts = np.array([[[0]], [[1]]])
    size = 2_000_000
    hops = Hops(net, hosts[:-1], hosts[1:], size)
    buffered = 400_000 * 2 + 100_000  # two sockets' send buffers, and the backend's buffer
    beta = rate_bps * TCP_PAYLOAD_SHARE / 8
    sent = hops.send_s(hosts[1], hosts[0], np.inf)
    assert sent == pytest.approx((size - buffered) / beta, rel=1e-6)
    assert hops.backward_wire(0, np.inf) == pytest.approx(size / beta, rel=1e-6)
    small = Hops(net, hosts[:-1], hosts[1:], buffered - 1)
    assert small.send_s(hosts[1], hosts[0], np.inf) == pytest.approx(0.0)


@pytest.mark.parametrize("tensor", [2, 4])
def test_a_tensor_shards_sizes_are_its_own_parameters(tensor):
    gpt = replace(CONFIGS["tiny"], n_head=4)
    layers = split_layers(gpt.n_layer, 2)
    expected = []
    for s in range(2):
        stage = Stage(gpt, s, 2)
        shard_stage(stage, tensor - 1, tensor)
        expected.append([p.numel() for p in stage.parameters()])
    assert stage_tensor_sizes(gpt, layers, tensor) == expected


@pytest.mark.parametrize(("tensor", "recompute"), [(2, False), (4, True)])
def test_tensor_allreduces_cost_a_ring_per_block_pass(tensor, recompute):
    """Each micro-batch's forward all-reduces twice per block and its backward twice more (four
    with recompute): each a ring of 2·(T − 1) steps of A/T bytes, 2α + A/(T·β) each on gloo."""
    latency, rate_bps, stages, micro, blocks = 0.002, 8e8, 2, 3, 2
    gpt = replace(CONFIGS["tiny"], n_head=4)
    workload = make_workload(
        gpt, pipeline=stages, dp_degree=1, batch=micro, micro_batch=1, seq=16,
        recompute=recompute, tensor=tensor,
    )  # fmt: skip
    network = uniform_network(
        stages * tensor, BUILTIN["default"], Native(latency_s=latency, rate_bps=rate_bps)
    )
    t_f, t_b = 0.01, 0.02
    result = predict(workload, times(stages, t_f, t_b), network)
    one = 2 * (tensor - 1) * (2 * latency + workload.activation_bytes / tensor / (rate_bps / 8))
    per_micro = (2 * blocks + (4 if recompute else 2) * blocks) * one
    assert result.parts["compute"] == pytest.approx(micro * (t_f + t_b))
    assert result.parts["tensor_allreduce"] == pytest.approx(micro * per_micro)
    assert sum(result.parts.values()) == pytest.approx(result.iteration_s)
    unsplit = replace(workload, layout=replace(workload.layout, tensor=1), tensor_allreduces=None)
    plain_network = uniform_network(stages, BUILTIN["default"], Native(latency, rate_bps))
    plain = predict(unsplit, times(stages, t_f, t_b), plain_network)
    assert "tensor_allreduce" not in plain.parts
    assert result.iteration_s > plain.iteration_s + micro * per_micro * 0.99


def test_fully_sharded_gathers_and_reduce_scatter_cost_rings_over_the_replicas():
    """Per micro-batch each block is gathered for its forward (the rest of the stage once an
    iteration, and the blocks once more for the backwards); then one reduce-scatter: each a
    ring of (D − 1) steps of 2α (gloo) and 1/D of the bytes."""
    latency, rate_bps, replicas, micro = 0.003, 8e8, 3, 4
    gpt = CONFIGS["tiny"]
    workload = make_workload(
        gpt, pipeline=1, dp_degree=replicas, batch=micro, micro_batch=1, seq=16, dp_mode="fsdp"
    )
    network = uniform_network(
        replicas, BUILTIN["default"], Native(latency_s=latency, rate_bps=rate_bps)
    )
    t_f, t_b = 0.01, 0.02
    result = predict(workload, times(1, t_f, t_b), network)
    beta, blocks = rate_bps / 8, gpt.n_layer
    block_bytes = 4 * sum(p.numel() for p in Stage(gpt, 0, 1).h.parameters())
    stage_bytes = 4 * gpt.n_params()
    steps = replicas - 1

    def ring(size, units=1):  # gloo: each step waits the receive's notice, then the segment
        return steps * (units * 2 * latency + size / replicas / beta)

    gathers = (micro + 1) * ring(block_bytes, blocks) + ring(stage_bytes - block_bytes)
    assert result.parts["fsdp_allgather"] == pytest.approx(gathers)
    assert result.parts["reduce_scatter"] == pytest.approx(ring(stage_bytes, blocks + 1))
    assert result.parts["compute"] == pytest.approx(micro * (t_f + t_b))
    assert sum(result.parts.values()) == pytest.approx(result.iteration_s)


# -- the reference's inputs, worked by hand (issue 30) ------------------------------------------


def test_a_flat_ps_is_one_reduce_and_one_broadcast_of_the_stage_in_the_backends_steps():
    """The reference's sync at DP 4: each stage's whole gradient in one bucket, moved in NCCL's
    512 KiB steps (4 MiB buffer / 8 steps)."""
    reference = load_reference()
    calibration = reference.calibration()
    workload = calibration.workload_for(reference.config(dp_degree=4))
    assert workload.chunk_bytes == 524_288  # 4,194,304 / 8
    assert [len(b) for b in workload.sync_buckets] == [1] * 12
    assert workload.sync_buckets[0][0] == 164_298_752 * 4  # stage 0's whole gradient, fp32

    # By hand, one stage of 4 replicas (a chain 3 → 2 → 1 → 0, then back), a gradient of
    # N = 4 MiB = 4,194,304 B in steps of c = 524,288 B, α = 10 ms, β = 1 Gbit/s = 125e6 B/s:
    #   c/β = 524,288 / 125e6 = 4.194304 ms; (N − c)/β = 3,670,016 / 125e6 = 29.360128 ms
    #   reduce    = α (the receives' notice) + 3 × (c/β + α) + (N − c)/β
    #             = 10 + 3 × 14.194304 + 29.360128 = 81.943040 ms
    #   broadcast = 3 × (c/β + α) + (N − c)/β = 42.582912 + 29.360128 = 71.943040 ms
    #   sync      = 153.886080 ms
    one_stage = replace(
        workload, layout=Layout(1, 4), sync_buckets=(np.array([4_194_304.0]),),
        stage_params=np.array([1_048_576.0]),
    )  # fmt: skip
    net = uniform_network(4, BUILTIN["default"], Native(latency_s=0.010, rate_bps=1e9))
    result = predict(one_stage, times(1, 0.0, 0.0), net)
    assert result.parts["ps_sync"] == pytest.approx(0.153886080, rel=1e-9)
    # per bucket instead (wanlab's `ps` of 8 buckets of 512 KiB): each bucket's reduce and
    # broadcast fill the chain anew, 3 × (c/β + α) each way, and only the first reduce waits
    # for the notice: 8 × 2 × 42.582912 + 10 = 691.326592 ms
    per_bucket = replace(one_stage, sync_buckets=(np.full(8, 524_288.0),))
    filled = predict(per_bucket, times(1, 0.0, 0.0), net).parts["ps_sync"]
    assert filled == pytest.approx(0.691326592, rel=1e-9)


def test_an_mtu_of_9001_gives_jumbo_segments_a_larger_initial_window_and_payload_share():
    """MSS = MTU − 20 (IP) − 20 (TCP) − 12 (timestamps); the initial window is 10 of them on
    each of NCCL's 16 sockets; a shaper counting frames of MTU + 14 bytes leaves MSS of them."""
    assert (mss_of(1500), mss_of(9001)) == (1448, 8949)
    assert payload_share(9001) == pytest.approx(8949 / 9015)
    assert payload_share(1500) == TCP_PAYLOAD_SHARE == pytest.approx(1448 / 1514)
    reference = load_reference()
    calibration = reference.calibration()
    side = calibration.tcp_for(reference.config(), calibration.tcp, 2)
    assert side.initial_bytes(np.array(0)) == 10 * 8949 * 16 == 1_431_840
    jumbo = uniform_network(2, BUILTIN["d50b1"], Native(mtu=9001))
    assert jumbo.bytes_per_s[0, 1] == pytest.approx(1e9 * 8949 / 9015 / 8)
    # a cold 16 MiB activation at 100.1 ms round trip: slow start from 1.43 MB covers it in
    # 1.43 + 2.86 + 5.73 + 11.45 MB (4 rounds, the last at the line rate); from 10 × 1,448 B
    # × 16 = 232 kB it takes 7 (232 kB × (2^7 − 1) = 29.4 MB ≥ 16.8 MB > 232 kB × 63)
    size, rtt = 2048 * 2048 * 4, 2 * (50e-3 + 50e-6)
    src, dst = np.array([0]), np.array([1])
    cold = jumbo.with_tcp(side).wire_s(size, src, dst)
    beta = jumbo.bytes_per_s[0, 1]
    assert cold == pytest.approx(3 * rtt + (size - 7 * 1_431_840) / beta)
    small = uniform_network(2, BUILTIN["d50b1"], Native(mtu=1500))
    ethernet = replace(side, initial_window_bytes=side.initial_window_bytes * 1448 / 8949)
    small_beta = small.bytes_per_s[0, 1]
    slow = small.with_tcp(ethernet).wire_s(size, src, dst)
    assert slow == pytest.approx(6 * rtt + (size - 63 * 231_680) / small_beta)


def test_the_48_rank_barrier_takes_six_rounds_of_a_round_trip():
    """gloo's dissemination barrier over W ranks: ⌈log2 W⌉ rounds (d = 1, 2, 4, …, 32 at
    W = 48), each a notice and the data (2α) when all enter together. The reference's phase
    barrier is over the world: at DP 4 (48 ranks) 12α, at DP 1 (12 ranks) 8α."""
    assert (rounds(12), rounds(48)) == (4, 6)
    alpha = 0.01
    latency = np.full((48, 48), alpha)
    left = dissemination_barrier(latency, np.arange(48)[None], np.zeros((1, 48)))
    assert left[0] == pytest.approx([12 * alpha] * 48)
    for replicas, world_rounds in ((12, 4), (48, 6)):  # one-stage pipelines: W = replicas
        workload = toy_workload(1, replicas, 1, schedule="reference", dp_mode="ps", params=1.0)
        net = Network(np.full((48, 48), alpha), np.full((48, 48), 1e30), np.full(48, 1e30))
        result = predict(workload, times(1, 0.0, 0.0), net)
        assert result.parts["barrier"] == pytest.approx(2 * world_rounds * alpha)


def test_the_reference_printed_sizes_come_from_its_shapes():
    """The reference printed floored MiB (bytes // 1024 // 1024) of fp32: a 1 × 2048 × 2048
    activation, stage 0 (embedding 28,998 × 2,048, positions 2,048 × 2,048, two blocks) and the
    last stage (two blocks, pooler 2,048 × 2,048 and 2 classes); a middle stage prints 384."""
    config = load_reference().config()
    assert storage_mib(config) == {
        "activation_mib": 16,
        "first_stage_mib": 626,
        "last_stage_mib": 400,
    }
    block = 12 * 2048**2 + 13 * 2048
    first = (28_998 + 2048) * 2048 + 2 * block
    last = 2 * block + 2048**2 + 2048 + 2 * 2048 + 2
    workload = workload_of(config)
    assert list(workload.stage_params[[0, 1, -1]]) == [first, 2 * block, last]
    assert (first, last) == (164_298_752, 104_916_994)
    assert 2 * block * 4 // 2**20 == 384
    assert config.gpt.n_params() == 1_276_381_186
