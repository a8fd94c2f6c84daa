"""Starting the console: read its secret files, build the application, serve it with uvicorn (the I/O).

The client secret must be a root-only file (identity/private_file.py's
checks: no symlink, owned by root, mode 0600); the cookie-signing key is a
root-only file in the state directory, made on first start. The sessions
themselves are held in the process (sessions.py), so a restart logs everyone
out. TLS is uvicorn's, from the configured cert and key.
"""

from __future__ import annotations

from appliance.config import Config
from appliance.identity.private_file import read_private_file
from appliance.identity.provider_http import ProviderError
from appliance.secret_file import SecretError, load_or_create

SESSION_KEY_BYTES = 32


class ConsoleStartError(RuntimeError):
    """The console cannot start; the message names the setting or file and the fix."""


def read_client_secret(config: Config) -> str:
    path = config.console.client_secret_file
    assert path is not None
    data = read_private_file(path, owner_uid=0, max_bytes=4096, name="console's client secret file (console."
                             "client_secret_file)", readable="the client secret", error=ConsoleStartError)
    secret = data.decode("utf-8", "replace").strip()
    if not secret or "\n" in secret:
        raise ConsoleStartError(f"{path}: the console's client secret file must hold the secret alone, on one line")
    return secret


def prepare(config: Config, *, check_provider: bool = False):
    """The ASGI application for `config`, or ConsoleStartError saying what is missing."""
    settings = config.console
    if not settings.enabled:
        raise ConsoleStartError(f"{config.source}: the console is off: set console.enabled to true (with issuer, "
                                "client_id, client_secret_file and redirect_uri; see docs/console.md)")
    from appliance.console.app import make_app
    from appliance.console.provider import ConsoleProvider
    from appliance.console.state import ConsoleState

    secret = read_client_secret(config)
    for what, path in (("console.tls: key 'cert'", settings.tls and settings.tls.cert),
                       ("console.tls: key 'key'", settings.tls and settings.tls.key)):
        if path and not path.is_file():
            raise ConsoleStartError(f"{path}: {what} names no file")
    if settings.tls is not None:
        read_private_file(settings.tls.key, owner_uid=0, max_bytes=1 << 16, name="console's TLS key "
                          "(console.tls.key)", readable="the private key", error=ConsoleStartError)
    try:
        key = load_or_create(config.console_session_key, SESSION_KEY_BYTES, "the console's session key",
                             f"remove {config.console_session_key} and start again (everyone logs in again)")
    except SecretError as e:
        raise ConsoleStartError(str(e)) from None
    provider = ConsoleProvider(settings.issuer, settings.client_id, secret, settings.redirect_uri,
                               ca_file=settings.ca_file)
    if check_provider:
        try:
            provider.endpoints()
        except ProviderError as e:
            raise ConsoleStartError(f"console.issuer: {e}") from None
    return make_app(config, ConsoleState(config), provider, key)


# How long a connection may take to send a request's head, from when it connects or its previous answer was
# sent. uvicorn has no such deadline: a connection that sends half a header (slowloris) is kept for ever, and
# any local user can open enough of them to take every file descriptor the console has (the console listens on
# loopback, so every local user reaches it). The body has its own deadline (app.py's BoundedBody).
HEAD_TIMEOUT_S = 10.0


def protocol_class():
    """uvicorn's h11 protocol with a deadline for each request's head."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.cycle is None or self.cycle.response_complete:  # no request head has come since
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a whole head came: the request is the application's now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadline


def raise_open_files_limit() -> None:
    """Let the console keep as many connections as the hard limit allows (systemd's soft default is 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
        except (ValueError, OSError):
            pass


def serve(config: Config, app) -> None:
    import uvicorn

    settings = config.console
    host, port = settings.listen
    tls = {} if settings.tls is None else {"ssl_certfile": str(settings.tls.cert),
                                           "ssl_keyfile": str(settings.tls.key)}
    raise_open_files_limit()
    # A stop waits at most 5 s for open connections: a slow client cannot keep the console from stopping.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True, proxy_headers=False,
                server_header=False, http=protocol_class(), timeout_keep_alive=5, timeout_graceful_shutdown=5,
                **tls)
