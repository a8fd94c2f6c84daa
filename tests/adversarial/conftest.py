"""The adversarial suite runs on the integration fixtures: real kernel, real broker, real `appliance serve`."""

from tests.integration.conftest import *  # noqa: F401,F403
