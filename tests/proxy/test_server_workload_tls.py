"""The shell terminating a workload's TLS: real handshakes on loopback, a stand-in broker that records what the
session forwards, and the audit each case leaves (no kernel, no broker, no serve)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from appliance.audit.records import Event, SessionClosed
from appliance.broker.credentials import ClientCertificateOnly
from appliance.identity.enrollment import Enrollment
from appliance.proxy.original_dst import OriginalDestination
from appliance.proxy.server import ProxyServer
from appliance.proxy.workload_tls import CaFiles, WorkloadTls, load_or_create
from tests.proxy.test_server_budget import LIMITS
from tests.proxy.test_session import ALLOW_ALL, metadata, metadata_response


class Harness:
    def __init__(self, tmp_path: Path, mode: str = "terminate") -> None:
        self.files = CaFiles.under(tmp_path)
        authority, _ = load_or_create(self.files, time.time())
        self.audited: list = []
        self.received = bytearray()
        self.mode = mode
        self.answer_metadata = False

    async def __aenter__(self) -> Harness:
        loop = asyncio.get_running_loop()
        harness = self

        class Broker(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                harness.received += data
                if harness.answer_metadata and len(harness.received) >= 12:  # answer a Metadata by its correlation id
                    self.transport.write(metadata_response(int.from_bytes(harness.received[8:12], "big")))

        self.broker = await loop.create_server(Broker, "127.0.0.1", 0)
        broker_port = self.broker.sockets[0].getsockname()[1]

        def lookup(sock):
            peer = sock.getpeername()
            return OriginalDestination("127.0.0.1", broker_port, peer[0], peer[1], 7, 7, os.getpid(), os.getpid(),
                                       0, 0, "test")

        enrollment = Enrollment("payments", (), "/payments", 7, 0.0, workload_tls=self.mode)
        authority, _ = load_or_create(self.files, time.time())
        self.proxy = ProxyServer(
            hosts=("127.0.0.1",), port=0, lookup=lookup, identity_of=lambda cgroup_id: enrollment,
            credentials=ClientCertificateOnly(Path("/nonexistent")), policy=lambda: ALLOW_ALL,
            audit=self.audited.append, max_frame_bytes=1 << 20, limits=LIMITS, max_request_bytes=1 << 20,
            max_sessions=10, max_sessions_per_workload=10, release_memory=lambda: None,
            workload_tls=WorkloadTls(authority))
        self.proxy.netns_names = {}
        await self.proxy.start()
        self.port = self.proxy.listening_sockets()[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.proxy.stop()
        self.broker.close()

    def trusting(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.files.cert))

    def closes(self) -> list[str]:
        return [r.close_reason for r in self.audited if isinstance(r, SessionClosed)]

    async def closed(self, count: int = 1) -> list[str]:
        for _ in range(200):
            if len(self.closes()) >= count:
                return self.closes()
            await asyncio.sleep(0.02)
        raise AssertionError(f"no session close audited: {self.audited}")

    async def forwarded(self, count: int) -> bytes:
        """What the stand-in broker has received, once it is at least `count` bytes (or after 4 s)."""
        for _ in range(200):
            if len(self.received) >= count:
                break
            await asyncio.sleep(0.02)
        return bytes(self.received)


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def loop_kind(request):
    """serve runs on uvloop; each test runs on both loops."""
    return request.param


_LOOP = {"kind": "asyncio"}


@pytest.fixture(autouse=True)
def _remember(loop_kind):
    _LOOP["kind"] = loop_kind


def run(coro):
    if _LOOP["kind"] == "uvloop":
        import uvloop

        return uvloop.run(asyncio.wait_for(coro, 20))
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_trusting_client_handshakes_and_its_kafka_reaches_the_broker_and_the_termination_is_audited(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=h.trusting(),
                                                           server_hostname="127.0.0.1")
            request = metadata()
            writer.write(request)
            await writer.drain()
            assert (await h.forwarded(6))[4:6] == b"\x00\x03"  # a Metadata request, in plaintext to the broker
            (tls,) = [r for r in h.audited if isinstance(r, Event) and r.kind == "workload-tls"]
            detail = json.loads(tls.detail)
            assert detail["version"] in ("TLSv1.2", "TLSv1.3") and detail["cipher"]
            assert detail["names"] == ["127.0.0.1"] and tls.identity == "payments"
            assert "terminated by the appliance" in tls.message
            writer.close()
            assert (await h.closed())[0].startswith("client closed the connection")
    run(main())


def test_the_brokers_answer_reaches_the_terminated_client_inside_its_tls(tmp_path):
    """The session's answers go to the TLS transport made at the handshake, not to the accepted socket's
    plaintext one, which was closed before it read a byte."""
    async def main():
        async with Harness(tmp_path) as h:
            h.answer_metadata = True
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=h.trusting(),
                                                           server_hostname="127.0.0.1")
            writer.write(metadata(correlation_id=77))
            await writer.drain()
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5), "big")
            answer = await asyncio.wait_for(reader.readexactly(size), 5)
            assert answer[:4] == (77).to_bytes(4, "big")  # the Metadata answer, decrypted by the client
            writer.close()
    run(main())


def test_a_plaintext_client_on_a_terminate_enrolment_is_closed_with_an_audited_reason(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            writer.write(metadata())
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left hanging
            reason = (await h.closed())[0]
            assert reason.startswith("workload sent plaintext, not a TLS handshake, but its enrolment terminates "
                                     "TLS"), reason
            assert not h.received
    run(main())


def test_a_client_that_does_not_trust_the_ca_fails_verification_and_the_refusal_is_audited(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection("127.0.0.1", h.port, ssl=ssl.create_default_context(),
                                              server_hostname="127.0.0.1")
            reason = (await h.closed())[0]
            # The client's alert (unknown CA), or its close when it drops the socket before the alert is read.
            assert reason.startswith(("workload refused the appliance's certificate for 127.0.0.1:",
                                      "workload closed the connection in the TLS handshake with 127.0.0.1:")), reason
            assert "appliance workload-ca" in reason
    run(main())


def _handshake(sock: socket.socket, context: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.MemoryBIO]:
    """A client handshake over a connected blocking socket through memory BIOs; the TLS object and what it
    still has to send (the handshake's last flight), for the caller to write raw, as it likes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    while True:
        try:
            tls.do_handshake()
            return tls, outgoing
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))


def _tls_then(port: int, cafile: str, after: bytes) -> bytes:
    """Handshake over a blocking socket through memory BIOs, then write `after` raw; what the proxy sent back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    _, outgoing = _handshake(sock, ssl.create_default_context(cafile=cafile))
    sock.sendall(outgoing.read() + after)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return got


def test_garbage_after_the_handshake_and_a_huge_handshake_record_close_that_session_only(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=h.trusting(),
                                                           server_hostname="127.0.0.1")  # stays up throughout
            garbage = bytes((0x17, 0x03, 0x03, 0x00, 0x40)) + os.urandom(0x40)
            await loop.run_in_executor(None, _tls_then, h.port, str(h.files.cert), garbage)
            reasons = await h.closed()
            assert reasons[0].startswith("workload's TLS connection failed"), reasons
            # A ClientHello claiming 16 MiB: OpenSSL refuses it from its header, without waiting for the bytes.
            huge = bytes((0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff)) + b"\x03\x03" + b"\0" * 0x3ffa

            def send_huge() -> bytes:
                with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
                    s.sendall(huge)
                    try:
                        return s.recv(100)
                    except ConnectionResetError:
                        return b""
            await loop.run_in_executor(None, send_huge)
            reasons = await h.closed(2)
            assert reasons[1].startswith("workload TLS handshake with 127.0.0.1:") and "EXCESSIVE_MESSAGE_SIZE" in \
                reasons[1], reasons
            assert len(h.proxy.live) == 1  # the first client's session goes on
            request = metadata()
            writer.write(request)
            await writer.drain()
            assert len(await h.forwarded(6)) >= 6
            writer.close()
    run(main())


def test_a_refuse_enrolment_keeps_the_plaintext_path_and_refuses_tls_as_before(tmp_path):
    async def main():
        async with Harness(tmp_path, mode="refuse") as h:
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await asyncio.open_connection("127.0.0.1", h.port, ssl=h.trusting(), server_hostname="127.0.0.1")
            reason = (await h.closed())[0]
            assert reason.startswith("workload started a TLS handshake") and "--workload-tls terminate" in reason
            assert not [r for r in h.audited if isinstance(r, Event) and r.kind == "workload-tls"]
    run(main())


def _key_update_flood(port: int, cafile: str, limit_bytes: int) -> tuple[int, socket.socket]:
    """A TLS 1.3 client that asks for a KeyUpdate over and over (each obliges the server to answer with its
    own) and never reads; how many bytes it got written before its writes stalled (or `limit_bytes`), and
    its socket, still open.

    Python's ssl has no KeyUpdate call: the client's SSL* is taken from the SSLObject (CPython keeps it right
    after the socket weakref) and driven through libssl, checked to be a TLS 1.3 connection first."""
    import ctypes

    libssl = ctypes.CDLL("libssl.so.3")
    libssl.SSL_do_handshake.argtypes = libssl.SSL_version.argtypes = [ctypes.c_void_p]
    libssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # what the proxy writes backs up at once
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    tls, outgoing = _handshake(sock, context)
    sock.sendall(outgoing.read())
    ssl_ptr = ctypes.c_void_p.from_address(id(tls._sslobj) + 2 * ctypes.sizeof(ctypes.c_void_p) + 8).value
    assert libssl.SSL_version(ssl_ptr) == 0x0304, "not the SSL* of a TLS 1.3 connection"
    sock.settimeout(1.0)
    sent = 0
    try:
        while sent < limit_bytes:
            for _ in range(200):
                assert libssl.SSL_key_update(ssl_ptr, 1) == 1  # SSL_KEY_UPDATE_REQUESTED
                libssl.SSL_do_handshake(ssl_ptr)
            batch = outgoing.read()
            sock.sendall(batch)
            sent += len(batch)
    except TimeoutError:  # the proxy stopped reading
        pass
    return sent, sock


def test_a_client_flooding_key_update_requests_without_reading_is_stopped_being_read_not_buffered(tmp_path):
    """Each KeyUpdate(update_requested) makes the proxy's TLS write one back, without the session seeing a
    byte: a client that sends them and never reads grew the proxy's write buffer to it without bound (23 MB
    for 27 MB sent), outside every session budget. Reading it now stops while it does not read."""
    async def main():
        async with Harness(tmp_path) as h:
            loop = asyncio.get_running_loop()
            for listening in h.proxy.listening_sockets():  # accepted sockets inherit it: little kernel buffering
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sent, sock = await loop.run_in_executor(None, _key_update_flood, h.port, str(h.files.cert), 8 << 20)
            await asyncio.sleep(0.5)  # whatever the proxy still reads of it
            (conn,) = h.proxy.live.values()
            held = conn.client.get_write_buffer_size()
            sock.close()
            assert held < 2 << 20, f"{held} bytes held for the client after it sent {sent}"
            assert "client-busy" in conn.client_reading.reasons
    run(main())
