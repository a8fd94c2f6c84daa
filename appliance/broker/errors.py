"""The one error the embedded broker raises."""


class BrokerError(RuntimeError):
    """The embedded broker could not be started, stopped or used; the message says why and shows its log."""
