"""Charging workload network namespaces to enrolled cgroups: one workload cannot take every slot."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance.identity.netns import pids_below
from appliance.workload_netns import charge

A, B, C = Path("/cg/a"), Path("/cg/b"), Path("/cg/c")


def test_a_workload_gets_its_bound_and_the_rest_are_left_out():
    found = {inode: frozenset({A}) for inode in range(100, 134)}  # 34 namespaces of its own
    charges = charge(found, {}, limit=4)
    assert sorted(charges.charged) == [100, 101, 102, 103]
    assert set(charges.charged.values()) == {A}
    assert sorted(charges.beyond[A]) == list(range(104, 134))


def test_a_hoarder_at_its_bound_leaves_room_for_a_later_container():
    found = {inode: frozenset({A}) for inode in range(100, 134)}
    before = charge(found, {}, limit=4).charged
    found[7] = frozenset({B})  # a container enrolled after the hoarder
    charges = charge(found, before, limit=4)
    assert charges.charged[7] == B
    assert [i for i, w in charges.charged.items() if w == A] == [100, 101, 102, 103]


def test_what_was_charged_stays_charged_while_its_workload_is_in_it():
    charged = {1: A, 2: A}
    charges = charge({1: frozenset({A}), 2: frozenset({A, B}), 3: frozenset({A})}, charged, limit=2)
    assert charges.charged == {1: A, 2: A}
    assert charges.beyond == {A: [3]}


def test_a_namespace_its_workload_left_passes_to_another_in_it_with_room():
    charges = charge({1: frozenset({B})}, {1: A}, limit=1)
    assert charges.charged == {1: B}


def test_a_namespace_passed_on_never_takes_a_workload_past_its_bound():
    # Two workloads passing namespaces between them must not pile them on one.
    charges = charge({1: frozenset({B}), 2: frozenset({B})}, {1: A, 2: B}, limit=1)
    assert charges.charged == {2: B}
    assert charges.beyond == {B: [1]}


def test_a_shared_namespace_goes_to_the_least_charged_workload_with_room():
    charges = charge({1: frozenset({A}), 2: frozenset({A, B})}, {}, limit=1)
    assert charges.charged == {1: A, 2: B}
    charges = charge({2: frozenset({A, B})}, {1: A}, limit=1)
    assert charges.charged == {1: A, 2: B}


def test_a_namespace_left_out_counts_against_every_workload_in_it():
    charges = charge({3: frozenset({A, B})}, {1: A, 2: B}, limit=1)
    assert charges.beyond == {A: [3], B: [3]}


def test_namespaces_not_found_in_this_step_keep_their_charge():
    # Between scans only the kernel's refusals are looked at: the rest stays as it was.
    charges = charge({9: frozenset({A})}, {1: A, 2: A}, limit=2)
    assert charges.charged == {1: A, 2: A}
    assert charges.beyond == {A: [9]}


workloads = st.frozensets(st.sampled_from([A, B, C]), min_size=1)


@given(found=st.dictionaries(st.integers(0, 40), workloads, max_size=40),
       before=st.dictionaries(st.integers(0, 40), st.sampled_from([A, B, C]), max_size=40),
       limit=st.integers(1, 5))
def test_no_new_charge_takes_a_workload_past_its_bound_and_every_charge_is_a_workload_in_it(found, before, limit):
    charges = charge(found, before, limit)
    for inode, workload in charges.charged.items():
        if inode in found:
            assert workload in found[inode]
        else:
            assert before[inode] == workload  # not looked at: untouched
    kept = {i for i, w in before.items() if i not in found or w in found[i]}
    for workload in (A, B, C):
        new = [i for i, w in charges.charged.items() if w == workload and i not in kept]
        held = [i for i in kept if before[i] == workload]
        assert not new or len(held) + len(new) <= limit
    for workload, inodes in charges.beyond.items():
        assert all(i in found and workload in found[i] and i not in charges.charged for i in inodes)
    assert set(found) <= set(charges.charged) | {i for inodes in charges.beyond.values() for i in inodes}


def test_pids_below_leaves_out_the_enrolled_cgroups_nested_below(tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    (inner / "deeper").mkdir(parents=True)
    (outer / "cgroup.procs").write_text("10\n11\n")
    (inner / "cgroup.procs").write_text("20\n")
    (inner / "deeper" / "cgroup.procs").write_text("30\n")
    (outer / "other").mkdir()
    (outer / "other" / "cgroup.procs").write_text("40\n")
    assert sorted(pids_below([outer])) == [10, 11, 20, 30, 40]
    assert sorted(pids_below([outer], skip={inner})) == [10, 11, 40]
    assert sorted(pids_below([inner], skip={outer})) == [20, 30]
