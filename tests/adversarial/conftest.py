"""The adversarial suite runs against the same real appliance, broker and cgroups as the integration tests."""

from tests.integration.conftest import *  # noqa: F401,F403
