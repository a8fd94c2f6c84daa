"""Adversarial tests: the integration fixtures (real kernel, real broker, real `appliance serve`), shared.

The steering and crash tests here (test_steering_*.py, test_crash_*.py) play
the attacker on the gateway host: an unprivileged local user, a process in an
unenrolled cgroup, a workload in its own network namespace. Each failed on
753e6e2 and passes now. They are integration tests: marked so, and run under
the shared lock.

Sharing, not copying, the session fixtures: `from tests.integration.conftest
import *` would register a second definition of each, and with both
directories in one run pytest would start a second broker and a second
`appliance serve` on the same ports, state directory and status file (two
serves then write one status file, and tests see the wrong pid). So each
session fixture here runs the one defined in tests/integration/conftest.py
when that conftest is loaded (its cached value then serves both
directories), and a private copy of it when only this directory runs.
"""

from __future__ import annotations

import pytest

import tests.integration.conftest as integration
from tests.integration.conftest import enroll, make_cgroup  # noqa: F401 - function-scoped: copies are harmless

_SESSION = ("prerequisites", "config_path", "config", "broker", "appliance", "direct", "sasl_args")
_INTEGRATION_FILES = ("test_steering_", "test_crash_")


def _twin(request: pytest.FixtureRequest, name: str, func):
    """tests/integration/conftest.py's definition of fixture `name`, if pytest loaded that conftest.

    Reads pytest's fixture registry (pytest 9's `_arg2node2fixturedefs`); a
    pytest without it fails here loudly rather than starting a second serve.
    """
    registry = request._fixturemanager._arg2node2fixturedefs
    defs = [d for node_defs in registry.get(name, {}).values() for d in node_defs]
    return next((d for d in defs if d.func is func), None)


def _shared(name: str):
    func = getattr(integration, name)._get_wrapped_function()
    own = pytest.fixture(scope="session", name=f"adversarial_own_{name}")(func)

    @pytest.fixture(scope="session", name=name)
    def shared(request):
        twin = _twin(request, name, func)
        if twin is not None:
            return twin.execute(request)
        return request.getfixturevalue(f"adversarial_own_{name}")

    return own, shared


for _name in _SESSION:
    globals()[f"_own_{_name}"], globals()[f"_shared_{_name}"] = _shared(_name)


def pytest_collection_modifyitems(items):
    for item in items:
        path = item.path
        if path.parent.name == "adversarial" and path.name.startswith(_INTEGRATION_FILES):
            item.add_marker(pytest.mark.integration)
