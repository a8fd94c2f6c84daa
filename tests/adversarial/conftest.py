"""The adversarial suite runs against the same real kernel, broker and appliance as the integration tests."""

from tests.integration.conftest import *  # noqa: F401,F403
