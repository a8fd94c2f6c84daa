"""The one place that knows which request fields mean "every topic" (or every user, every partition).

Kafka's schemas spell "all" differently per API and version; a filter that
reads a list as "these names" when the broker reads it as "everything" leaks
what the workload may not see. Every filter asks here.

- Metadata v0: an empty `topics` list means all topics; v1+: null means all, empty means none.
- DescribeTopicPartitions: an empty `topics` list means all.
- OffsetFetch v2–7: null `topics` means all of the group's; v8+: the same per entry of `groups`.
- ConsumerGroupHeartbeat v1+: a `subscribed_topic_regex` lets the broker pick the topics.
- ElectLeaders, ListPartitionReassignments, DescribeLogDirs: null means every partition;
  DescribeUserScramCredentials: null `users` means every user. (Cluster-wide APIs: the whole
  request is decided on the cluster, so "all" needs no filtering there.)
"""

from __future__ import annotations

from typing import Any

METADATA = 3
OFFSET_FETCH = 9
DESCRIBE_TOPIC_PARTITIONS = 75
CONSUMER_GROUP_HEARTBEAT = 68


def metadata_asks_every_topic(version: int, topics: Any) -> bool:
    return topics is None or (version == 0 and len(topics) == 0)


def metadata_no_topics(version: int) -> tuple | None:
    """A `topics` value that asks for none, at this version; None when the version cannot say "none"
    (v0: the empty list means all)."""
    return () if version >= 1 else None


def asks_every_topic(api_key: int, version: int, request: Any) -> bool:
    """Whether the request as a whole asks for every topic the broker has (or every one of a group's)."""
    if api_key == METADATA:
        return metadata_asks_every_topic(version, request.topics)
    if api_key == DESCRIBE_TOPIC_PARTITIONS:
        return len(request.topics) == 0
    if api_key == OFFSET_FETCH:
        if hasattr(request, "groups"):
            return any(group_asks_every_topic(g) for g in request.groups)
        return request.topics is None
    if api_key == CONSUMER_GROUP_HEARTBEAT:
        return getattr(request, "subscribed_topic_regex", None) is not None
    return False


def group_asks_every_topic(group: Any) -> bool:
    """An OffsetFetch v8+ `groups` entry with null `topics`: every topic the group has offsets for."""
    return group.topics is None
