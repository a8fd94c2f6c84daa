"""BrokerProbe: which observations change what the kernel is told (pure), and one real round on loopback."""

from __future__ import annotations

import asyncio
import socket

from appliance.steering.probe import BrokerProbe

A, B = ("127.0.0.1", 9092), ("::1", 9093)


def test_only_changes_reach_the_kernel_and_unknown_brokers_are_ignored():
    told = []
    probe = BrokerProbe([A, B], lambda address, up: told.append((address, up)), interval_s=1.0)
    assert not probe.observe(A, True)  # brokers start UP, as set_brokers writes them
    assert probe.observe(A, False) and not probe.observe(A, False)
    probe.failed(B)
    probe.failed(("10.0.0.9", 1))  # not steered: nothing to mark
    assert probe.observe(A, True)
    assert told == [(A, False), (B, False), (A, True)]
    assert probe.timeout_s == 1.0 and BrokerProbe([], print, interval_s=0.2).timeout_s == 0.2


def test_a_broker_discovery_forgot_is_probed_no_more():
    told = []
    probe = BrokerProbe([A], lambda address, up: told.append((address, up)), interval_s=1.0)
    probe.add(B)
    probe.remove(B)
    probe.remove(("10.0.0.9", 1))  # never probed: nothing to do
    assert probe.brokers == (A,) and not probe.observe(B, False)  # a round already under way tells nothing
    probe.failed(B)
    assert told == []


def test_a_round_marks_a_listening_broker_up_and_a_closed_port_down():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: refuses
    up, down = ("127.0.0.1", listener.getsockname()[1]), ("127.0.0.1", closed.getsockname()[1])
    told = []
    probe = BrokerProbe([up, down], lambda address, ok: told.append((address, ok)), interval_s=0.2)

    async def one_round():
        task = asyncio.get_running_loop().create_task(probe.run())
        await asyncio.sleep(0.1)
        task.cancel()

    try:
        asyncio.run(one_round())
    finally:
        listener.close()
        closed.close()
    assert told == [(down, False)] and probe.up == {up: True, down: False}
