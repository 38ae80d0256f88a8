"""The delay node's own latency, taken out of the delays it applies (pure arithmetic)."""

from __future__ import annotations

import pytest

from netem.mailbox import ForwardingLatency
from netem.profile import parse_profile
from netem.tree import less_forwarding_delay, tree_for_profile


def test_latency_is_interpolated_between_measured_delays_and_flat_beyond():
    latency = ForwardingLatency(((0.5, 0.2), (5.0, 0.4), (10.0, 0.3)))
    assert latency(0.1) == 0.2
    assert latency(2.75) == pytest.approx(0.3)
    assert latency(7.5) == pytest.approx(0.35)
    assert latency(50.0) == 0.3
    assert ForwardingLatency()(10.0) == 0.0


def test_each_delay_is_less_the_latency_at_it_and_the_queue_stays_sized_for_the_full_delay():
    profile = parse_profile("10ms/100mbit")
    tree = tree_for_profile(profile)
    built = less_forwarding_delay(tree, ForwardingLatency(((1.0, 0.25), (10.0, 0.4))))
    [shaped] = built.classes
    assert shaped.shape.delay_ms == pytest.approx(9.6)
    assert shaped.shape.limit == tree.classes[0].shape.queue_limit
    assert shaped.shape.rate_bps == profile.rate_bps
    tiny = less_forwarding_delay(tree_for_profile(parse_profile("0.1ms")), lambda d: 0.2)
    assert tiny.classes[0].shape.delay_ms == 0.0
    # a delay the box's own latency covers leaves a rate-only class, as the kernel reads it back
    covered = less_forwarding_delay(tree_for_profile(parse_profile("15us/14mbit")), lambda d: 0.1)
    assert covered.classes[0].shape == parse_profile("14mbit").shape()
    untouched = tree_for_profile(parse_profile("100mbit"))
    assert less_forwarding_delay(untouched, lambda d: 0.3) == untouched
