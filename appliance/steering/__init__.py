"""Kernel steering: the BPF programs that send enrolled workloads' broker connects to the proxy.

`loader.Steering` owns one loaded set of programs (bpf/steering.c) and its
pinned maps; `structs` mirrors the structs of bpf/appliance.h and holds their
Python values. Only `loader` imports bcc, and it is imported on first use of
one of its names, so importing this package for its types loads no compiler.
"""

from __future__ import annotations

from appliance.steering.structs import BrokerState, CgroupCounters, CgroupKind, ConnRecord, Refusal, RefusalReason

__all__ = [
    "BrokerState",
    "CgroupCounters",
    "CgroupKind",
    "ConnRecord",
    "Refusal",
    "RefusalReason",
    "Steering",
    "SteeringError",
    "attached_programs",
]
_FROM_LOADER = {"Steering", "SteeringError", "attached_programs"}


def __getattr__(name: str):
    if name in _FROM_LOADER:
        from appliance.steering import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'appliance.steering' has no attribute {name!r}")
