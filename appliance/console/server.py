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


CONCURRENT_REQUESTS = 256


def serve(config: Config, app) -> None:
    import uvicorn

    settings = config.console
    host, port = settings.listen
    tls = {} if settings.tls is None else {"ssl_certfile": str(settings.tls.cert),
                                           "ssl_keyfile": str(settings.tls.key)}
    # Bounded: a flood of connections gets 503s beyond the limit, an idle one is closed after 5 s, and a stop
    # waits at most 5 s for open connections (a slow client cannot keep the console from stopping).
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True, proxy_headers=False,
                server_header=False, limit_concurrency=CONCURRENT_REQUESTS, timeout_keep_alive=5,
                timeout_graceful_shutdown=5, **tls)
