"""Hand-built requests (kio) a hostile or unusual client sends; prints one JSON answer.

Usage: raw_client.py MODE HOST PORT [ARGS]
  metadata-v0           : Metadata v0 with an empty topic list ("all topics" in v0)
  metadata-v1-all       : Metadata v1 with a null topic list
  dtp-all               : DescribeTopicPartitions v0 with an empty topic list ("all")
  metadata-ops TOPIC    : Metadata v12 naming TOPIC with include_topic_authorized_operations
  metadata-by-id ID... : Metadata v12 naming topics by id only; prints {id: [name, error]}
  list-groups           : ListGroups v4
  offset-commit GROUP TOPIC : a simple-consumer OffsetCommit v8 of offset 1 for TOPIC partition 0
  offset-fetch-all GROUP    : OffsetFetch v7 with null topics (all of the group's)
  alter-quotas CLIENT_A CLIENT_B : AlterClientQuotas v1 for two client ids; prints each entry's answer
  reassign TOPIC        : AlterPartitionReassignments v0 of partitions 0 and 1; prints every error
  scram USER_A USER_B   : AlterUserScramCredentials v0 deleting USER_A's and upserting USER_B's credential
  zstd-bomb TOPIC MIB   : Produce v9 of one record whose value is MIB MiB of zeros, zstd-compressed to a few KB
  hostile-batch TOPIC KIND : Produce v9 of a v2 batch that is bad-crc, varint-overflow (a record length of 11
                        bytes of 0xff, CRC right) or huge-count (2^31-1 records declared for one, CRC right),
                        then Metadata v12 for TOPIC on the same connection; prints both answers
  heartbeat-regex GROUP REGEX : KIP-848 heartbeats with subscribed_topic_regex until an assignment
                                arrives (or 15 s); prints assigned topic ids and the ids Metadata names
"""

import datetime
import io
import json
import socket
import struct
import sys
import time
import uuid

from kio.serial import entity_reader, entity_writer

_correlation = [0]


def exchange(sock, entity):
    cls = type(entity)
    _correlation[0] += 1
    out = io.BytesIO()
    out.write(struct.pack(">hhih", cls.__api_key__, cls.__version__, _correlation[0], 3) + b"adv")
    if cls.__flexible__:
        out.write(b"\0")
    entity_writer(cls)(out, entity)
    body = out.getvalue()
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", recv(sock, 4))[0]
    data = recv(sock, size)
    response_cls = response_class(cls)
    offset = 4
    if response_cls.__flexible__ and cls.__api_key__ != 18:
        offset += 1  # empty tagged fields of the response header
    return entity_reader(response_cls)(data, offset)[0]


def response_class(request_cls):
    from kio.index import load_response_schema
    return load_response_schema(request_cls.__api_key__, request_cls.__version__)


def recv(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the proxy")
        data += chunk
    return data


def metadata_all(sock, version_topics):
    version, topics = version_topics
    if version == 0:
        from kio.schema.metadata.v0.request import MetadataRequest
        return exchange(sock, MetadataRequest(topics=topics))
    from kio.schema.metadata.v1.request import MetadataRequest
    return exchange(sock, MetadataRequest(topics=topics))


def all_ids(sock):
    from kio.schema.metadata.v12.request import MetadataRequest
    r = exchange(sock, MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                       include_topic_authorized_operations=False))
    return {str(t.topic_id): str(t.name) for t in r.topics}


def zstd_bomb(size: int) -> bytes:
    """A v2 batch of one record whose value is `size` zero bytes, compressed as a stream (never held whole)."""
    import zstandard
    from crc32c import crc32c
    from kafka.record.default_records import DefaultRecordBase
    from kafka.record.util import encode_varint

    def varint(n):
        out = bytearray()
        encode_varint(n, out.append)
        return bytes(out)

    body = b"\0" + varint(0) + varint(0) + varint(-1) + varint(size)  # attributes, ts and offset deltas, no key
    tail = varint(0)  # no headers
    length = len(body) + size + len(tail)
    z = zstandard.ZstdCompressor().compressobj()
    packed = z.compress(varint(length) + body)
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        packed += z.compress(chunk)
    packed += z.compress(tail) + z.flush()
    header = DefaultRecordBase.HEADER_STRUCT
    batch = bytearray(header.size + len(packed))
    header.pack_into(batch, 0, 0, len(batch) - 12, 0, 2, 0, 4, 0, 1_700_000_000_000, 1_700_000_000_000,
                     -1, -1, -1, 1)
    batch[header.size:] = packed
    struct.pack_into(">I", batch, 17, crc32c(memoryview(batch)[21:]))
    return bytes(batch)


def hostile_batch(kind: str) -> bytes:
    """A v2 batch of one plain record, made hostile as `kind` says."""
    from crc32c import crc32c
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=1_700_000_000_000, key=None, value=b"a plain value", headers=[])
    batch = bytearray(builder.build())
    if kind == "bad-crc":
        batch[-1] ^= 0xFF
        return bytes(batch)
    if kind == "varint-overflow":
        batch = batch[:61] + b"\xff" * 11 + b"\x01"
        struct.pack_into(">i", batch, 8, len(batch) - 12)
    elif kind == "huge-count":
        struct.pack_into(">i", batch, 57, (1 << 31) - 1)
    else:
        raise SystemExit(f"unknown hostile batch {kind!r}")
    struct.pack_into(">I", batch, 17, crc32c(memoryview(batch)[21:]))
    return bytes(batch)


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[4:]
    sock = socket.create_connection((host, port), timeout=20)
    if mode == "metadata-v0":
        r = metadata_all(sock, (0, ()))
        print(json.dumps({"topics": sorted(str(t.name) for t in r.topics)}))
    elif mode == "metadata-v1-all":
        r = metadata_all(sock, (1, None))
        print(json.dumps({"topics": sorted(str(t.name) for t in r.topics)}))
    elif mode == "dtp-all":
        from kio.schema.describe_topic_partitions.v0.request import DescribeTopicPartitionsRequest
        r = exchange(sock, DescribeTopicPartitionsRequest(topics=(), response_partition_limit=2000, cursor=None))
        print(json.dumps({"topics": sorted(str(t.name) for t in r.topics),
                          "ops": {str(t.name): int(t.topic_authorized_operations) for t in r.topics}}))
    elif mode == "metadata-ops":
        from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
        r = exchange(sock, MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name=args[0]),),
                                           allow_auto_topic_creation=False, include_topic_authorized_operations=True))
        print(json.dumps({str(t.name): {"error": int(t.error_code), "ops": int(t.topic_authorized_operations)}
                          for t in r.topics}))
    elif mode == "metadata-by-id":
        from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
        r = exchange(sock, MetadataRequest(
            topics=tuple(MetadataRequestTopic(topic_id=uuid.UUID(i), name=None) for i in args),
            allow_auto_topic_creation=False, include_topic_authorized_operations=False))
        print(json.dumps({str(t.topic_id): [t.name, int(t.error_code)] for t in r.topics}))
    elif mode == "list-groups":
        from kio.schema.list_groups.v4.request import ListGroupsRequest
        r = exchange(sock, ListGroupsRequest(states_filter=()))
        print(json.dumps({"error": int(r.error_code), "groups": sorted(str(g.group_id) for g in r.groups)}))
    elif mode == "offset-commit":
        from kio.schema.offset_commit.v8.request import (OffsetCommitRequest, OffsetCommitRequestPartition,
                                                         OffsetCommitRequestTopic)
        r = exchange(sock, OffsetCommitRequest(
            group_id=args[0], generation_id_or_member_epoch=-1, member_id="", group_instance_id=None,
            topics=(OffsetCommitRequestTopic(name=args[1], partitions=(OffsetCommitRequestPartition(
                partition_index=0, committed_offset=1, committed_leader_epoch=-1, committed_metadata=""),)),)))
        print(json.dumps({str(t.name): int(t.partitions[0].error_code) for t in r.topics}))
    elif mode == "offset-fetch-all":
        from kio.schema.offset_fetch.v7.request import OffsetFetchRequest
        r = exchange(sock, OffsetFetchRequest(group_id=args[0], topics=None, require_stable=False))
        print(json.dumps({"error": int(r.error_code), "topics": sorted(str(t.name) for t in r.topics)}))
    elif mode == "alter-quotas":
        from kio.schema.alter_client_quotas.v1.request import (AlterClientQuotasRequest, EntityData, EntryData,
                                                               OpData)
        from kio.static.primitive import f64
        r = exchange(sock, AlterClientQuotasRequest(entries=tuple(EntryData(
            entity=(EntityData(entity_type="client-id", entity_name=c),),
            ops=(OpData(key="producer_byte_rate", value=f64(1024.0), remove=False),)) for c in args),
            validate_only=False))
        print(json.dumps({"entries": [{"entity": [str(e.entity_name) for e in entry.entity],
                                       "error": int(entry.error_code), "message": entry.error_message}
                                      for entry in r.entries]}))
    elif mode == "reassign":
        from kio.schema.alter_partition_reassignments.v0.request import (AlterPartitionReassignmentsRequest,
                                                                         ReassignablePartition, ReassignableTopic)
        r = exchange(sock, AlterPartitionReassignmentsRequest(
            timeout=datetime.timedelta(seconds=10), topics=(ReassignableTopic(name=args[0], partitions=tuple(
                ReassignablePartition(partition_index=i, replicas=(1,)) for i in (0, 1))),)))
        print(json.dumps({"error": int(r.error_code), "message": r.error_message,
                          "partitions": [[str(t.name), int(p.partition_index), int(p.error_code), p.error_message]
                                         for t in r.responses for p in t.partitions]}))
    elif mode == "scram":
        from kio.schema.alter_user_scram_credentials.v0.request import (AlterUserScramCredentialsRequest,
                                                                        ScramCredentialDeletion,
                                                                        ScramCredentialUpsertion)
        r = exchange(sock, AlterUserScramCredentialsRequest(
            deletions=(ScramCredentialDeletion(name=args[0], mechanism=2),),
            upsertions=(ScramCredentialUpsertion(name=args[1], mechanism=2, iterations=8192, salt=b"salt" * 4,
                                                 salted_password=b"p" * 64),)))
        print(json.dumps({"results": [[str(x.user), int(x.error_code), x.error_message] for x in r.results]}))
    elif mode == "zstd-bomb":
        from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
        records = zstd_bomb(int(args[1]) << 20)
        r = exchange(sock, ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=30),
                                          topic_data=(TopicProduceData(name=args[0], partition_data=(
                                              PartitionProduceData(index=0, records=records),)),)))
        p = r.responses[0].partition_responses[0]
        print(json.dumps({"wire_bytes": len(records), "error": int(p.error_code), "message": p.error_message}))
    elif mode == "hostile-batch":
        from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
        from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
        r = exchange(sock, ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=30),
                                          topic_data=(TopicProduceData(name=args[0], partition_data=(
                                              PartitionProduceData(index=0, records=hostile_batch(args[1])),)),)))
        p = r.responses[0].partition_responses[0]
        m = exchange(sock, MetadataRequest(topics=(MetadataRequestTopic(topic_id=uuid.UUID(int=0), name=args[0]),),
                                           allow_auto_topic_creation=False, include_topic_authorized_operations=False))
        print(json.dumps({"error": int(p.error_code), "message": p.error_message,
                          "metadata_error": int(m.topics[0].error_code)}))
    elif mode == "heartbeat-regex":
        from kio.schema.consumer_group_heartbeat.v1.request import ConsumerGroupHeartbeatRequest
        all_ids(sock)  # as a consumer does first: metadata, from which the proxy learns topic ids
        member, epoch, assigned, errors = str(uuid.uuid4()), 0, None, []
        deadline = time.monotonic() + 15
        first = True
        while time.monotonic() < deadline:
            r = exchange(sock, ConsumerGroupHeartbeatRequest(
                group_id=args[0], member_id=member, member_epoch=epoch, instance_id=None, rack_id=None,
                rebalance_timeout=datetime.timedelta(seconds=30), subscribed_topic_names=None,
                subscribed_topic_regex=args[1] if first else None, server_assignor=None,
                topic_partitions=() if first else None))
            first = False
            if int(r.error_code):
                errors.append(int(r.error_code))
                break
            epoch = int(r.member_epoch)
            if r.assignment is not None and r.assignment.topic_partitions:
                assigned = [str(tp.topic_id) for tp in r.assignment.topic_partitions]
                break
            time.sleep(0.5)
        print(json.dumps({"assigned": assigned, "errors": errors, "describable_ids": all_ids(sock)}))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


main()
