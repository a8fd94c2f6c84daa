"""The integration fixtures live in tests/integration/fixtures.py, loaded once for the whole suite by
tests/conftest.py. The helpers and constants tests import are re-exported here; fixtures are not (a
fixture defined in two modules is two fixtures, each with its own broker and appliance)."""

from tests.integration.fixtures import (  # noqa: F401
    BROKER4, BROKER6, BROKER_NETNS, CLIENTS, NETNS, NETNS_HOST, NETNS_PEER, POLICY, PY, REPO, STATE, VETH_HOST, VETH_PEER,
    WORKLOAD_PARENT, CONTAINER_STATE,
    ApplianceProcess, Cgroup, audit, cli, enrol_cgroup, enrolled, eventually, java_argv, make_veth_netns,
    policy_extended, remove_veth_netns, traffic_of, traffic_until,
)
