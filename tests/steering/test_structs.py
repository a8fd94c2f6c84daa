"""The ctypes mirrors of bpf/appliance.h and the keys built from them: pure, no kernel."""

from __future__ import annotations

import ctypes as ct
import re
import socket
from pathlib import Path

import pytest

from appliance.steering import structs as S

HEADER = (Path(__file__).resolve().parents[2] / "bpf" / "appliance.h").read_text()


def test_every_mirror_is_asserted_by_the_c_side_and_has_no_implicit_padding():
    steering_c = (Path(__file__).resolve().parents[2] / "bpf" / "steering.c").read_text()
    for name, cls in S.MIRRORS.items():
        assert f"APPLIANCE_SIZEOF_{name}" in steering_c
        assert sum(ct.sizeof(t) for _, t in cls._fields_) == ct.sizeof(cls), f"{cls.__name__} has implicit padding"
    assert (ct.sizeof(S.PeerKey), ct.sizeof(S.Conn), ct.sizeof(S.Sock)) == (48, 88, 144)


def test_health_slots_and_refusal_reasons_match_the_header():
    slots = {int(n): name for name, n in re.findall(r"#define APPLIANCE_HEALTH_(\w+) (\d+)", HEADER) if name != "SLOTS"}
    assert sorted(slots) == list(range(len(S.HEALTH_SLOTS)))
    assert int(re.search(r"APPLIANCE_HEALTH_SLOTS (\d+)", HEADER).group(1)) == len(S.HEALTH_SLOTS)
    reasons = dict(re.findall(r"#define APPLIANCE_REFUSED_(\w+) (\d+)", HEADER))
    assert {int(v) for v in reasons.values()} == {r.value for r in S.RefusalReason}
    states = dict(re.findall(r"#define APPLIANCE_BROKER_(\w+) (\d+)", HEADER))
    assert {k: int(v) for k, v in states.items()} == {s.name: s.value for s in S.BrokerState}


def test_a_peer_key_holds_both_ends_and_the_namespace_with_mapped_addresses_as_ipv4():
    key = S.peer_key(("::ffff:127.0.0.1", 40000), ("127.0.0.1", 19190), 3)
    assert (key.client.family, key.client.port, bytes(key.client.addr)[:4]) == (socket.AF_INET, 40000, b"\x7f\0\0\1")
    assert bytes(key.client.addr)[4:] == b"\0" * 12  # hashed as bytes: the rest must be zero
    assert (key.proxy.port, key.netns_cookie) == (19190, 3)
    six = S.endpoint("::1", 5)
    assert (six.family, bytes(six.addr)) == (socket.AF_INET6, b"\0" * 15 + b"\1")
    assert bytes(S.peer_key(("127.0.0.1", 1), ("127.0.0.1", 2), 3)) != bytes(S.peer_key(("127.0.0.1", 1), ("127.0.0.1", 2), 4))


def test_a_refusal_event_carries_its_reason():
    ev = S.RefusalEvent(cgroup_id=7, dst=S.make_addr("::1", 9093), pid=1, tgid=2, uid=3, comm=b"java",
                        reason=S.RefusalReason.BROKER_DOWN)
    r = S.refusal(ev)
    assert (r.dst_host, r.dst_port, r.comm, r.reason) == ("::1", 9093, "java", S.RefusalReason.BROKER_DOWN)
    ev.reason = 99  # from a newer kernel side: still read as a refusal
    assert S.refusal(ev).reason == S.RefusalReason.UNENROLLED


def test_make_addr_names_what_is_wrong():
    with pytest.raises(ValueError, match="not an IP address literal"):
        S.make_addr("broker.example", 9092)
    with pytest.raises(ValueError, match="port 0 of 127.0.0.1 is out of range"):
        S.make_addr("127.0.0.1", 0)
