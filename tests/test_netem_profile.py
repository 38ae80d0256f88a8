"""Profiles, matrices and the tc tree as data: parsing, validation, rendering (no kernel needed)."""

from __future__ import annotations

import pytest
from labnet import LabHost

from inventory.errors import ConfigError
from netem.pairs import Route, is_pair_matrix_document, load_pair_matrix_file, pair_matrix_from_data
from netem.profile import BUILTIN, Profile, load_profile_file, parse_profile
from netem.tree import Match, tc_commands, tree_for_profile, tree_for_routes


def test_builtins_are_the_reference_settings():
    expected = {"d1b5": (1, 5e9), "d5b2": (5, 2e9), "d10b1": (10, 1e9), "d50b1": (50, 1e9)}
    for name, (delay, rate) in expected.items():
        assert (BUILTIN[name].delay_ms, BUILTIN[name].rate_bps) == (delay, rate)
    assert BUILTIN["default"].is_default


def test_queue_limit_covers_the_bandwidth_delay_product():
    # 50 ms one way at 1 Gbit with 1500-byte packets: the round trip holds
    # 1e9/8 * 0.1 / 1500 = 8334 packets; 1.5x headroom, never netem's default 1000.
    assert BUILTIN["d50b1"].queue_limit == 12500
    assert BUILTIN["d10b1"].queue_limit == 2500
    assert parse_profile("10ms/1gbit/limit=7000").queue_limit == 7000
    assert parse_profile("1ms/10mbit").queue_limit == 1000


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("10ms/1gbit", {"delay_ms": 10, "rate_bps": 10**9}),
        ("10ms", {"delay_ms": 10, "rate_bps": None}),
        ("1gbit", {"delay_ms": 0, "rate_bps": 10**9}),
        ("2.5gbit", {"rate_bps": 2_500_000_000}),
        ("250us/790mbit", {"delay_ms": 0.25, "rate_bps": 790_000_000}),
        ("10ms/jitter=1ms/loss=0.1%/dup=1%", {"jitter_ms": 1, "loss_pct": 0.1, "duplicate_pct": 1}),
        ("10ms/reorder=25%/limit=5000", {"reorder_pct": 25, "limit": 5000}),
    ],
)
def test_short_form(text, fields):
    profile = parse_profile(text)
    for key, value in fields.items():
        assert getattr(profile, key) == value
    assert parse_profile(profile.short()) == profile


def test_profile_file(tmp_path):
    path = tmp_path / "lossy.toml"
    path.write_text('delay = "20ms"\njitter = "2ms"\nrate = "500mbit"\nloss = "0.5%"\n')
    profile = load_profile_file(path)
    assert profile == Profile(
        name="lossy", delay_ms=20, jitter_ms=2, rate_bps=500_000_000, loss_pct=0.5
    )
    assert not is_pair_matrix_document(path)


MALFORMED_PROFILES = [
    ("-5ms", None),
    ("10ms/0gbit", "rate"),
    ("10ms/fastbit", None),
    ("10ms/loss=150%", "loss"),
    ("10ms/jitter=20ms", None),
    ("reorder=5%", None),
    ("10ms/limit=0", "limit"),
    ("10ms/limit=many", "limit"),
    ("10ms/color=red", "color"),
    ("d99b9", None),
    ("10ms/20ms", "delay"),
    ("", None),
    ("200gbit", "rate"),
]


@pytest.mark.parametrize(("text", "field"), MALFORMED_PROFILES)
def test_malformed_profiles_are_rejected(text, field):
    with pytest.raises(ConfigError) as err:
        parse_profile(text, source="cli")
    assert err.value.field == field
    assert err.value.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('delay = "-1ms"', "delay"),
        ('rate = "0mbit"', "rate"),
        ("loss = 101", "loss"),
        ('delay = "10ms"\nbandwidth = "1gbit"', "bandwidth"),
        ('delay = "10ms', None),
    ],
)
def test_malformed_profile_files_are_rejected(tmp_path, body, field):
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError) as err:
        load_profile_file(path)
    assert err.value.file == str(path)
    assert err.value.field == field


HOSTS = [
    LabHost(name="a", address="198.19.9.10", labels={"region": "west"}),
    LabHost(name="b", address="198.19.9.11", labels={"region": "west"}),
    LabHost(name="c", address="198.19.9.12", labels={"region": "east"}),
]
GEO = {
    "by": "region",
    "link": [
        {"src": "west", "dst": "east", "delay": "67ms", "rate": "790mbit"},
        {"src": "west", "dst": "west", "delay": "10ms", "rate": "2gbit"},
    ],
}


def test_matrix_by_region_resolves_each_hosts_row():
    rows = pair_matrix_from_data(GEO, "geo.toml").resolve(HOSTS)
    far, near = parse_profile("67ms/790mbit").shape(), parse_profile("10ms/2gbit").shape()
    assert rows["a"] == [
        Route(dst="b", address="198.19.9.11", shape=near),
        Route(dst="c", address="198.19.9.12", shape=far),
    ]
    assert rows["c"] == [
        Route(dst="a", address="198.19.9.10", shape=far),
        Route(dst="b", address="198.19.9.11", shape=far),
    ]


def test_matrix_by_host_one_way(tmp_path):
    path = tmp_path / "pairs.toml"
    path.write_text(
        '[[link]]\nsrc = "a"\ndst = "c"\ndelay = "5ms"\nboth_ways = false\n'
        '[[link]]\nsrc = "b"\ndst = "c"\ndelay = "5ms"\n'
    )
    assert is_pair_matrix_document(path)
    rows = load_pair_matrix_file(path).resolve(HOSTS)
    assert [r.dst for r in rows["a"]] == ["c"]
    assert [r.dst for r in rows["c"]] == ["b"]


MALFORMED_MATRICES = [
    ({"link": []}, "link"),
    ({"by": "host", "link": [{"src": "a", "dst": "a", "delay": "1ms"}]}, "link #1"),
    ({"link": [{"src": "a", "delay": "1ms"}]}, "link #1 dst"),
    ({"link": [{"src": "a", "dst": "b"}]}, "link #1"),
    ({"link": [{"src": "a", "dst": "b", "delay": "-3ms"}]}, "delay"),
    ({"link": [{"src": "a", "dst": "b", "rate": "0bit"}]}, "rate"),
    ({"link": [{"src": "a", "dst": "b", "delay": "1ms", "both_ways": "yes"}]}, "link #1 both_ways"),
    (
        {
            "link": [
                {"src": "a", "dst": "b", "delay": "1ms"},
                {"src": "b", "dst": "a", "delay": "2ms"},
            ]
        },
        "link #2",
    ),
    ({"link": [{"src": "a", "dst": "b", "delay": "1ms"}], "hosts": 3}, "hosts"),
]


@pytest.mark.parametrize(("data", "field"), MALFORMED_MATRICES)
def test_malformed_matrices_are_rejected(data, field):
    with pytest.raises(ConfigError) as err:
        pair_matrix_from_data(data, "m.toml")
    assert err.value.field == field


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"link": [{"src": "a", "dst": "zz", "delay": "1ms"}]}, "'zz'"),
        ({"by": "zone", "link": [{"src": "w", "dst": "e", "delay": "1ms"}]}, "no label 'zone'"),
        ({"by": "region", "link": [{"src": "west", "dst": "mars", "delay": "1ms"}]}, "'mars'"),
    ],
)
def test_matrices_naming_unknown_hosts_are_rejected(data, words):
    with pytest.raises(ConfigError) as err:
        pair_matrix_from_data(data, "m.toml").resolve(HOSTS)
    assert err.value.file == "m.toml"
    assert words in err.value.message


def test_u32_keys_cover_the_right_header_bytes():
    assert Match(tcp_dport=22).keys() == ["0x00060000/0x00ff0000+8", "0x00000016/0x0000ffff+20"]
    assert Match(tcp_sport=22).keys() == ["0x00060000/0x00ff0000+8", "0x00160000/0xffff0000+20"]
    assert Match(dst="198.18.0.11").keys() == ["0xc612000b/0xffffffff+16"]
    for match in (Match(tcp_dport=22), Match(tcp_sport=22), Match(dst="198.18.0.11")):
        assert Match.from_byte_map(match.byte_map()) == match


def test_dry_run_prints_the_equivalent_tc_commands():
    lines = tc_commands(tree_for_profile(BUILTIN["d10b1"]), "eth0")
    assert lines == [
        "tc qdisc replace dev eth0 root handle 1: htb default 20",
        "tc class replace dev eth0 parent 1: classid 1:10 htb rate 100gbit ceil 100gbit"
        " burst 50000000 cburst 50000000 quantum 200000",
        "tc class replace dev eth0 parent 1: classid 1:20 htb rate 1gbit ceil 1gbit"
        " burst 500000 cburst 500000 quantum 200000",
        "tc qdisc replace dev eth0 parent 1:20 handle 20: netem delay 10ms limit 2500",
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff"
        " match ip sport 22 0xffff flowid 1:10",
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff"
        " match ip dport 22 0xffff flowid 1:10",
    ]


def test_matrix_row_gets_one_class_per_distinct_shape():
    rows = pair_matrix_from_data(GEO, "geo.toml").resolve(HOSTS)
    tree = tree_for_routes(rows["c"])
    assert len(tree.classes) == 1
    assert tree.describe()["routes"] == {
        "198.19.9.10": "67ms/790mbit/limit=13233",
        "198.19.9.11": "67ms/790mbit/limit=13233",
    }
    assert len(tree_for_routes(rows["a"]).classes) == 2
