"""Adversarial tests: the integration fixtures (real kernel, real broker, real `appliance serve`), reused.

The steering and crash tests here (test_steering_*.py, test_crash_*.py) play
the attacker on the gateway host: an unprivileged local user, a process in an
unenrolled cgroup, a workload in its own network namespace. Each failed on
753e6e2 and passes now. They are integration tests: marked so, and run under
the shared lock.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import *  # noqa: F401,F403 - the fixtures, shared with tests/integration
from tests.integration.conftest import ApplianceProcess  # noqa: F401

_INTEGRATION_FILES = ("test_steering_", "test_crash_")


def pytest_collection_modifyitems(items):
    for item in items:
        path = item.path
        if path.parent.name == "adversarial" and path.name.startswith(_INTEGRATION_FILES):
            item.add_marker(pytest.mark.integration)
