"""One filter per Kafka API family, each declaring the API keys it handles and returning a typed result.

The shape is Kroxylicious's: a filter sees a request of an API it declared
(`api_keys`), decodes it only if it needs to, and returns one of the results
in `results` (Forward, Rewritten, Answer, Close), with the step that turns the
broker's response into the workload's (`results.Then`). One filter instance
per connection (the enforcer builds them), so a filter may keep what it
learnt on that connection (the Produce shapes, the partitions to drop from a
fetch session).

- `produce`: Produce (the fast path by shape, masking on the way in);
- `fetch`: Fetch, decided and masked on the response;
- `metadata`: Metadata, DescribeTopicPartitions, DescribeCluster;
- `groups`: ListGroups, ListTransactions, OffsetFetch, ConsumerGroupHeartbeat,
  DescribeGroups and ConsumerGroupDescribe;
- `table`: every other API the permission table describes fully.

Shared pieces: `scope` (the one place that knows which fields mean "all"),
`refusals` (answers the way Kafka's authorizer gives them), `operations`
(authorized-operations bit fields), `context` (principal, policy, topic ids).
Protocol facts every filter relies on are in docs/policy.md ("How requests are
filtered").
"""

from __future__ import annotations

from appliance.policy.filters.context import Context
from appliance.policy.filters.fetch import FetchFilter
from appliance.policy.filters.groups import DescribeGroupsFilter, HeartbeatFilter, ListingFilter, OffsetFetchFilter
from appliance.policy.filters.metadata import DescribeClusterFilter, DescribeTopicPartitionsFilter, MetadataFilter
from appliance.policy.filters.produce import ProduceFilter

# Filters for API families with more to decide than the permission table says; the rest use `table`.
FAMILIES = (ProduceFilter, FetchFilter, MetadataFilter, DescribeTopicPartitionsFilter, DescribeClusterFilter,
            ListingFilter, OffsetFetchFilter, HeartbeatFilter, DescribeGroupsFilter)


def build(ctx: Context) -> dict[int, object]:
    """api key -> the filter instance (for one connection) that handles it."""
    out: dict[int, object] = {}
    for family in FAMILIES:
        instance = family(ctx)
        for key in family.api_keys:
            assert key not in out, f"api key {key} is claimed by two filters"
            out[key] = instance
    return out


__all__ = ["Context", "FAMILIES", "build"]
