"""Is a Kafka listener answering? One ApiVersions round-trip, optionally inside a network namespace.

A TCP connect alone proves little (the socket server accepts before the node
has loaded its metadata); an ApiVersions answer with error code NONE means the
request path is up. On a SASL listener ApiVersions is allowed before the
handshake, so the probe needs no credentials. Codec: kio.

With `netns`, the socket is made inside that network namespace (netns.py)
and the rest of the probe runs on the caller's thread.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.api_versions.v3.response import ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v2.header import RequestHeader
from kio.schema.response_header.v0.header import ResponseHeader
from kio.serial import entity_writer
from kio.static.primitive import i32

from appliance.broker.netns import run_in
from appliance.kafka.codec import DecodeError, decode_entity
from appliance.config import BrokerAddress

_CORRELATION_ID = 0x5EED
_MAX_RESPONSE = 1 << 20


class ProbeError(OSError):
    """The listener did not answer ApiVersions correctly; the message says what happened."""


def connect(address: BrokerAddress, *, netns: str | None = None, timeout: float = 2.0) -> socket.socket:
    """A TCP connection to `address`, made from inside network namespace `netns` if given."""
    return run_in(netns, lambda: socket.create_connection((address.host, address.port), timeout=timeout))


def _request_frame() -> bytes:
    body = io.BytesIO()
    entity_writer(RequestHeader)(
        body,
        RequestHeader(
            request_api_key=ApiVersionsRequest.__api_key__,
            request_api_version=ApiVersionsRequest.__version__,
            correlation_id=i32(_CORRELATION_ID),
            client_id="appliance-probe",
        ),
    )
    entity_writer(ApiVersionsRequest)(
        body, ApiVersionsRequest(client_software_name="appliance-probe", client_software_version="1")
    )
    data = body.getvalue()
    return struct.pack(">i", len(data)) + data


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ProbeError(f"connection closed after {len(chunks)} of {n} bytes")
        chunks += chunk
    return bytes(chunks)


def api_versions(address: BrokerAddress, *, netns: str | None = None, timeout: float = 2.0) -> ApiVersionsResponse:
    """Send ApiVersions v3 to `address` and return the decoded answer; raise ProbeError or OSError if none."""
    with connect(address, netns=netns, timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_request_frame())
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        if not 0 < size <= _MAX_RESPONSE:
            raise ProbeError(f"{address} answered with a frame of {size} bytes; not a Kafka ApiVersions response")
        frame = _recv_exactly(sock, size)
    try:  # through the codec's bounds check: a broker's counts are not trusted either
        header = decode_entity(ResponseHeader, frame, 0, "ApiVersions response header")
        response = decode_entity(ApiVersionsResponse, frame, 4, "ApiVersions v3 response")
    except DecodeError as e:
        raise ProbeError(f"{address} answered something that is not an ApiVersions v3 response: {e}") from None
    if header.correlation_id != _CORRELATION_ID:
        raise ProbeError(f"{address} answered correlation id {header.correlation_id}, expected {_CORRELATION_ID}")
    if response.error_code != ErrorCode.none:
        raise ProbeError(f"{address} answered ApiVersions with error {response.error_code.name}")
    return response


def answers(address: BrokerAddress, *, netns: str | None = None, timeout: float = 2.0) -> bool:
    """True if `address` completes an ApiVersions round-trip with no error."""
    try:
        api_versions(address, netns=netns, timeout=timeout)
    except OSError:
        return False
    return True


def answers_from_cgroup(addresses, *, cgroup_dir: Path, netns: str | None = None, timeout: float = 1.0) -> bool:
    """Whether every address answers, probed by a child process inside `cgroup_dir`.

    Once the appliance steers these addresses, a probe from an unenrolled
    cgroup is refused in the kernel (as it should be); the broker's own cgroup
    is exempt, so the probe runs there.
    """
    target = Path(cgroup_dir) / "cgroup.procs"
    argv = [sys.executable, "-m", "appliance.broker.probe", "--timeout", str(timeout)]
    if netns:
        argv += ["--netns", netns]
    argv += [str(a) for a in addresses]
    try:
        done = subprocess.run(argv, preexec_fn=lambda: target.write_text(str(os.getpid())),
                              capture_output=True, timeout=timeout * len(argv) + 10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Exit 0 when every Kafka listener answers ApiVersions.")
    parser.add_argument("--netns")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("addresses", nargs="+")
    options = parser.parse_args()
    ok = all(answers(BrokerAddress.parse(a), netns=options.netns, timeout=options.timeout) for a in options.addresses)
    sys.exit(0 if ok else 1)
