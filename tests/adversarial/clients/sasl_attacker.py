"""A hostile workload's SASL: raw SaslHandshake / SaslAuthenticate frames (and what it pipelines behind them).

Usage: sasl_attacker.py HOST PORT < cases.json
cases.json is {"cases": [CASE, ...], "parallel": false}; each CASE opens one connection:
  {"name": str,
   "send": [STEP, ...],     all sent at once (pipelined), unless a step says "wait": true (then the answers
                            to the steps before it are read first)
   "sleep_before_read": s,  a slow reader: nothing is read for s seconds after sending
   "disconnect": true,      close right after sending, reading nothing
   "read_for": s}           read answers until the proxy closes or s seconds pass (default 8)
STEP is one of
  {"api": "handshake", "version": 1, "mechanism": "OAUTHBEARER"}
  {"api": "authenticate", "version": 2, "auth": "<text>" | "auth_hex": "<hex>"}
  {"api": "authenticate", "version": 1, "lying_length": 2147483647}   an auth_bytes length past the frame
  {"api": "metadata"} | {"api": "produce", "topic": T}
  {"api": "raw", "hex": "<hex>"}                                      bytes as they are, framed by a length
  {"api": "scram-first", "mechanism": M, "user": U, "password": P}     a SaslAuthenticate with scramp's
  {"api": "scram-final", "nonce_suffix": "x"}                           client-first / client-final (the
                                                                        final may carry a tampered nonce)
  {"api": "scram-replay", "of": "<name of an earlier case>"}           that case's client-final, replayed
Prints one JSON line: {name: {"port": local port, "answers": [{"api", "version", "error_code",
"error_message", "mechanisms", "lifetime_ms"}], "closed": bool, "closed_after_s": s | null}}
"""

import datetime
import json
import socket
import struct
import sys
import threading
import time

import scramp
from kio.index import load_response_schema
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.sasl_authenticate.v0.request import SaslAuthenticateRequest as Auth0
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest as Auth1
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest as Auth2
from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as Hs0
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest as Hs1
from kio.serial import entity_reader

from frames import header, recv_frame, request_frame

AUTH = {0: Auth0, 1: Auth1, 2: Auth2}
HANDSHAKE = {0: Hs0, 1: Hs1}
FINALS: dict[str, bytes] = {}  # case name -> the client-final it sent (for replays)


CLIENT_ID = b"attacker"


def entity_frame(entity, correlation_id: int) -> bytes:
    return request_frame(entity, correlation_id, CLIENT_ID)


class Case:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.expect: dict[int, tuple[int, int]] = {}  # correlation id -> (api key, version)
        self.correlation = 0
        self.scram = None
        self.result = {"answers": [], "closed": False, "closed_after_s": None, "port": None}

    def build(self, step: dict) -> bytes:
        self.correlation += 1
        c = self.correlation
        api = step["api"]
        if api == "handshake":
            version = step.get("version", 1)
            self.expect[c] = (17, version)
            return entity_frame(HANDSHAKE[version](mechanism=step["mechanism"]), c)
        if api in ("authenticate", "scram-first", "scram-final", "scram-replay"):
            version = step.get("version", 2)
            self.expect[c] = (36, version)
            if "lying_length" in step:
                body = header(36, version, c, version >= 2, CLIENT_ID) + struct.pack(">i", step["lying_length"]) + b"abc"
                return struct.pack(">i", len(body)) + body
            if api == "scram-first":
                self.scram = scramp.ScramClient([step["mechanism"]], step["user"], step["password"])
                data = self.scram.get_client_first().encode()
            elif api == "scram-final":
                final = self.scram.get_client_final()
                if step.get("nonce_suffix"):
                    parts = final.split(",")
                    final = ",".join(p + step["nonce_suffix"] if p.startswith("r=") else p for p in parts)
                data = final.encode()
                FINALS[self.name] = data
            elif api == "scram-replay":
                data = FINALS[step["of"]]
            else:
                data = bytes.fromhex(step["auth_hex"]) if "auth_hex" in step else step["auth"].encode()
            return entity_frame(AUTH[version](auth_bytes=data), c)
        if api == "metadata":
            self.expect[c] = (3, 12)
            return entity_frame(MetadataRequest(topics=None, allow_auto_topic_creation=False,
                                                include_topic_authorized_operations=False), c)
        if api == "produce":
            self.expect[c] = (0, 9)
            return entity_frame(ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
                                               topic_data=(TopicProduceData(name=step["topic"], partition_data=(
                                                   PartitionProduceData(index=0, records=None),)),)), c)
        if api == "raw":
            data = bytes.fromhex(step["hex"])
            return struct.pack(">i", len(data)) + data
        raise SystemExit(f"unknown step {api!r}")

    def read_one(self, sock) -> bool:
        try:
            data = recv_frame(sock)
        except (ConnectionError, OSError):
            return False
        correlation_id = struct.unpack(">i", data[:4])[0]
        api_key, version = self.expect.get(correlation_id, (None, None))
        answer = {"correlation_id": correlation_id, "api": api_key, "version": version}
        if api_key is not None:
            cls = load_response_schema(api_key, version)
            offset = 4 + (1 if cls.__flexible__ else 0)
            try:
                entity = entity_reader(cls)(data, offset)[0]
            except Exception:  # an error answer in an older version's layout (UNSUPPORTED_VERSION)
                entity = None
                answer["error_code"] = struct.unpack(">h", data[offset:offset + 2])[0]
            if entity is not None:
                answer["error_code"] = int(getattr(entity, "error_code", 0))
                answer["error_message"] = getattr(entity, "error_message", None)
                if api_key == 17:
                    answer["mechanisms"] = list(entity.mechanisms)
                if api_key == 36:
                    answer["auth_bytes"] = bytes(entity.auth_bytes).decode("utf-8", "replace")
                    lifetime = getattr(entity, "session_lifetime", None)
                    answer["lifetime_ms"] = None if lifetime is None else int(lifetime.total_seconds() * 1000)
                    if self.scram is not None and answer["error_code"] == 0 and answer["auth_bytes"].startswith("r="):
                        self.scram.set_server_first(answer["auth_bytes"])
        self.result["answers"].append(answer)
        return True

    def run(self, host: str, port: int) -> dict:
        sock = socket.create_connection((host, port), timeout=20)
        self.result["port"] = sock.getsockname()[1]
        began = time.monotonic()
        pending = b""
        waiting = 0
        for step in self.spec["send"]:
            if step.get("wait"):
                sock.sendall(pending)
                pending = b""
                for _ in range(waiting):
                    self.read_one(sock)
                waiting = 0
            pending += self.build(step)
            waiting += 1
        sock.sendall(pending)
        if self.spec.get("disconnect"):
            sock.close()
            return self.result
        time.sleep(self.spec.get("sleep_before_read", 0))
        deadline = time.monotonic() + self.spec.get("read_for", 8)
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                size_bytes = sock.recv(4, socket.MSG_PEEK)
            except socket.timeout:
                continue
            except OSError:
                size_bytes = b""
            if not size_bytes:
                self.result["closed"] = True
                self.result["closed_after_s"] = round(time.monotonic() - began, 3)
                break
            sock.settimeout(5)
            self.read_one(sock)
            sock.settimeout(0.5)
        sock.close()
        return self.result


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    spec = json.load(sys.stdin)
    cases = [Case(c) for c in spec["cases"]]
    results = {}
    if spec.get("parallel"):
        def go(case):
            try:
                results[case.name] = case.run(host, port)
            except Exception as e:  # reported, not raised: the test asserts on it
                results[case.name] = {"error": f"{type(e).__name__}: {e}"}
        threads = [threading.Thread(target=go, args=(c,)) for c in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for case in cases:
            results[case.name] = case.run(host, port)
    print(json.dumps(results))


main()
