"""What the kernel side loses is counted and shown by `appliance status`, which walks no map.

Defect C of issue 9: helper return values were not checked and ring-buffer
drops were not counted, so a refusal flood could hide the refusals after it
from the audit with no trace; and the status writer walked all 65,536 entries
of a map every second on the event loop.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from tests.integration.conftest import PY, cli, eventually

HEALTH = {"ringbuf_drops", "storage_failures", "handoff_failures", "counter_failures", "close_hook_failures",
          "retval_failures", "no_listener_drops", "assign_failures", "stale_records"}


def test_a_refusal_flood_shows_as_lost_events_in_status(appliance, config_path, make_cgroup):
    n = 20000  # the ring buffer holds about 3,600 refusal events
    flooder = make_cgroup("flood")
    # The kernel refuses on its own; with the appliance stopped nothing drains the ring buffer, so the flood overruns
    # it however slowly this host runs the flooder.
    os.kill(appliance.proc.pid, signal.SIGSTOP)
    try:
        done = flooder.run([PY, str(Path(__file__).resolve().parent / "clients" / "flood.py"), "127.0.0.1", "39092",
                            str(n)])
    finally:
        os.kill(appliance.proc.pid, signal.SIGCONT)
    assert done.stdout.strip() == str(n)

    def lost():
        status = appliance.status() or {}
        counted = status.get("counters", {}).get(str(flooder.cgroup.id), {}).get("refused")
        return status if counted == n and status["kernel_health"]["ringbuf_drops"] > 0 else None

    status = eventually(lost, message="the flood counted and its lost events shown")
    assert set(status["kernel_health"]) == HEALTH
    maps = {m["name"]: m for m in status["steering"]["maps"]}
    assert maps["conn_by_peer"]["entries"] is None and maps["counters"]["entries"] is None  # never walked

    text = cli(config_path, "status").stdout
    shown = re.search(r"kernel health: .*ringbuf_drops (\d+)", text)
    assert shown and int(shown.group(1)) > 0, text
    as_json = json.loads(cli(config_path, "status", "--json").stdout)
    assert as_json["status"]["kernel_health"]["ringbuf_drops"] > 0
