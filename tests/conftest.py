"""The integration fixtures are a plugin of the whole suite: one broker, one appliance and one identity provider per run."""

pytest_plugins = ("tests.integration.fixtures", "tests.integration.idp_fixtures", "tests.timings")
