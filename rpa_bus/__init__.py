"""rpa-bus: the bus contract as pure code.

Key names, the event envelope, stream ids, validation, folded session state, settings and
errors. Nothing here imports redis or asyncio, so it is unit-tested without a server and
shared by the producer, the relay and the monitor. The ``rpa_bus.cli`` subpackage is the
front door (the ``rpa-bus`` command) and is imported by nothing else.
"""

from __future__ import annotations

from rpa_bus._envelope import (
    BUILTIN_TYPES,
    JOB_NAME,
    LEVELS,
    MAX_EVENT_BYTES,
    TERMINAL_TYPES,
    Envelope,
    decode,
    encode,
    eta_of,
    is_terminal,
    make,
    now_ts,
    percent_of,
    progress,
    validate,
    validate_type,
)
from rpa_bus._errors import (
    BusError,
    ConfigError,
    ConfigMismatch,
    Forbidden,
    InvalidEvent,
    InvalidEventType,
    InvalidInput,
    InvalidOffset,
    InvalidSessionId,
    InvalidStreamName,
    Unavailable,
)
from rpa_bus._eta import Estimate, StepProfile, eta_from_pace
from rpa_bus._ids import ZERO, Offset, StreamId, parse_offset
from rpa_bus._keys import (
    ARCHIVE_FIELD,
    DEFAULT_BUCKETS,
    DEFAULT_PREFIX,
    MAX_BUCKETS,
    Keys,
    StreamRef,
    bucket_of,
    parse_stream_name,
    validate_host_name,
    validate_session_id,
)
from rpa_bus._settings import DEFAULT_REDIS_URL, EnvReader, Settings, default_spool_dir
from rpa_bus._state import STATE_FIELDS, last_fields, state_fields, state_from_meta
from rpa_bus._urls import RedisTarget, parse_redis_url

__all__ = [
    "ARCHIVE_FIELD",
    "BUILTIN_TYPES",
    "DEFAULT_BUCKETS",
    "DEFAULT_PREFIX",
    "DEFAULT_REDIS_URL",
    "JOB_NAME",
    "LEVELS",
    "MAX_BUCKETS",
    "MAX_EVENT_BYTES",
    "STATE_FIELDS",
    "TERMINAL_TYPES",
    "ZERO",
    "BusError",
    "ConfigError",
    "ConfigMismatch",
    "EnvReader",
    "Envelope",
    "Estimate",
    "Forbidden",
    "InvalidEvent",
    "InvalidEventType",
    "InvalidInput",
    "InvalidOffset",
    "InvalidSessionId",
    "InvalidStreamName",
    "Keys",
    "Offset",
    "RedisTarget",
    "Settings",
    "StepProfile",
    "StreamId",
    "StreamRef",
    "Unavailable",
    "bucket_of",
    "decode",
    "default_spool_dir",
    "encode",
    "eta_from_pace",
    "eta_of",
    "is_terminal",
    "last_fields",
    "make",
    "now_ts",
    "parse_offset",
    "parse_redis_url",
    "parse_stream_name",
    "percent_of",
    "progress",
    "state_fields",
    "state_from_meta",
    "validate",
    "validate_host_name",
    "validate_session_id",
    "validate_type",
]
