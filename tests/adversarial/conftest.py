"""The adversarial suite: attacks on the real appliance, with the integration fixtures (real kernel, broker, serve).

Every test here plays the attacker: a hostile enrolled workload, an
unprivileged local process, an unenrolled cgroup, a crashed appliance or a
hostile broker. Each failed on 753e6e2 and passes now. They are integration
tests: they need root, BPF and the broker, and fail (never skip) without them.
"""

import pytest

from tests.integration.conftest import *  # noqa: F401,F403 - the fixtures, shared with tests/integration
from tests.integration.conftest import ApplianceProcess  # noqa: F401


def pytest_collection_modifyitems(items):
    for item in items:
        if "adversarial" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
