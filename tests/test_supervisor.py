"""The supervisor's restart policy (pure) and its loop around a real short-lived child."""

from __future__ import annotations

import sys
import time

from appliance import supervisor


def test_the_first_restart_is_immediate_then_backoff_doubles_up_to_a_cap():
    waits = [supervisor.backoff_s(n) for n in range(1, 10)]
    assert waits[:4] == [0.0, 0.5, 1.0, 2.0]
    assert max(waits) == supervisor.MAX_BACKOFF_S and waits == sorted(waits)


def test_a_dying_child_is_restarted_and_a_clean_exit_ends_supervision(tmp_path):
    runs = tmp_path / "runs"
    # Dies with status 3 twice, then exits 0.
    child = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) if p.exists() else 0; "
             "p.write_text('x' * (n + 1)); sys.exit(3 if n < 2 else 0)")
    started = time.monotonic()
    assert supervisor.supervise([sys.executable, "-c", child, str(runs)]) == 0
    assert runs.read_text() == "xxx"
    assert time.monotonic() - started < 0.5 + 5  # restarts: at once, then after 0.5 s
