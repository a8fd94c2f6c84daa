"""Hand-made Kafka requests (encoded with kio) for protocol-level checks no ordinary client makes.

Usage: raw_kafka.py MODE HOST PORT [ARGS]
  produce2 HOST PORT TOPIC_A TOPIC_B : one Produce v9 (acks=all) naming both topics; prints each topic's error code
  unmapped HOST PORT                 : one DescribeQuorum v1 (an API outside the appliance's table); prints the answer
"""

import datetime
import io
import json
import socket
import struct
import sys

from kafka.record.default_records import DefaultRecordBatchBuilder
from kio.schema.describe_quorum.v1.request import DescribeQuorumRequest
from kio.schema.describe_quorum.v1.response import DescribeQuorumResponse
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v9.response import ProduceResponse
from kio.serial import entity_reader, entity_writer


def batch(value: bytes) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=None, key=None, value=value, headers=[])
    return bytes(builder.build())


def exchange(sock, entity, correlation_id: int) -> bytes:
    cls = type(entity)
    out = io.BytesIO()
    out.write(struct.pack(">hhih", cls.__api_key__, cls.__version__, correlation_id, 3) + b"raw")
    if cls.__flexible__:
        out.write(b"\0")
    entity_writer(cls)(out, entity)
    body = out.getvalue()
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", recv_exactly(sock, 4))[0]
    return recv_exactly(sock, size)


def recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.create_connection((host, port), timeout=15)
if mode == "produce2":
    topics = sys.argv[4:6]
    request = ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10), topic_data=tuple(
        TopicProduceData(name=t, partition_data=(PartitionProduceData(index=0, records=batch(f"to {t}".encode())),))
        for t in topics))
    reply = exchange(sock, request, 1)
    response, _ = entity_reader(ProduceResponse)(reply, 5)  # correlation id, then tagged fields
    print(json.dumps({t.name: int(t.partition_responses[0].error_code.value) for t in response.responses}))
elif mode == "unmapped":
    reply = exchange(sock, DescribeQuorumRequest(topics=()), 2)
    response, _ = entity_reader(DescribeQuorumResponse)(reply, 5)
    print(json.dumps({"error_code": int(response.error_code.value)}))
