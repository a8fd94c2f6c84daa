"""The adversarial suite runs against the same real kernel, broker and `appliance serve` as tests/integration."""

import pytest

from tests.integration.conftest import *  # noqa: F401,F403 - the fixtures: broker, appliance, cgroups, enrolment


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath) or "adversarial" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
