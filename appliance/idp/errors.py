"""The one error the local identity provider raises."""


class IdpError(RuntimeError):
    """The local Keycloak could not be prepared, started, stopped or asked; the message says why (and shows its log)."""
