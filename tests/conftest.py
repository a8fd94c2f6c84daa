"""The integration fixtures are a plugin of the whole suite: one broker and one appliance per run."""

pytest_plugins = ("tests.integration.fixtures",)
