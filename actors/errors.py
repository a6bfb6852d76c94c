"""Errors of the actor runtime. Root: ``ActorError``."""

__all__ = ["ActorError", "ControlServerError", "InboxFull", "MediaUnavailable", "RefundRefused", "SupervisorClosed",
           "TelegramRefused"]


class ActorError(Exception):
    """Root of the actor runtime's errors."""


class SupervisorClosed(ActorError):
    """``tell`` after shutdown began: the event was not accepted."""


class InboxFull(ActorError):
    """A chat's bounded inbox stayed full past the send timeout (back-pressure)."""


class MediaUnavailable(ActorError):
    """A file could not be downloaded (deleted, too big for the transport, network failure)."""


class TelegramRefused(ActorError):
    """Telegram answered the login with an error (a bad bot token, API id or hash): not retried."""


class ControlServerError(ActorError):
    """The control server cannot listen (the port is taken, the address is not this machine's), or
    the CLI cannot run an operation through it (``actors.remote.RemoteError``)."""


class RefundRefused(ActorError):
    """Telegram refused to refund a payment (unknown charge, already refunded, not a Stars payment).
    ``already``: the charge was refunded before (a second /admin refund)."""

    def __init__(self, message: str, *, already: bool = False) -> None:
        super().__init__(message)
        self.already = already
