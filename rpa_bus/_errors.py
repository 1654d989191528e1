"""One exception tree for the whole bus.

::

    BusError
     ├── InvalidInput (also ValueError): the caller passed something the contract refuses
     │    ├── InvalidSessionId
     │    ├── InvalidEventType
     │    ├── InvalidEvent        (bad field, data not JSON-serialisable, too large)
     │    ├── InvalidStreamName
     │    └── InvalidOffset
     ├── ConfigError: a setting is malformed
     │    └── ConfigMismatch      (this part disagrees with the deployment's P:config)
     ├── Unavailable: Redis could not be reached within the time bound
     └── Forbidden: a token does not grant what was asked

Third-party errors (redis-py, websockets, PyJWT) are translated into these once, at the
boundary where they are caught, with ``raise ... from exc``.
"""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error rpa-bus raises on purpose."""


class InvalidInput(BusError, ValueError):
    """The caller passed something the contract refuses; nothing was written."""


class InvalidSessionId(InvalidInput):
    """A session id outside ``[A-Za-z0-9_.-]{1,128}``."""


class InvalidEventType(InvalidInput):
    """An event type that is neither built in nor a valid custom name."""


class InvalidEvent(InvalidInput):
    """An event field with a wrong type or value, or data that is not JSON-serialisable."""


class InvalidStreamName(InvalidInput):
    """A client-facing stream name that is not ``session:SID``, ``sessions`` or ``monitor:HOST``."""


class InvalidOffset(InvalidInput):
    """A stream offset that is not a Redis stream id, ``0`` or ``$``."""


class ConfigError(BusError):
    """A setting is malformed (bad number, out of range, unknown URL form)."""


class ConfigMismatch(ConfigError):
    """This part's settings disagree with the deployment-wide ones stored in ``P:config``."""


class Unavailable(BusError):
    """Redis could not be reached, or did not answer, within the time bound."""


class Forbidden(BusError):
    """A token is missing, invalid, expired, or does not grant the stream asked for."""
