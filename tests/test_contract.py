"""Unit tests of the pure contract in rpa_bus: no server needed."""

from __future__ import annotations

import ast
import importlib
import pathlib
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rpa_bus
from rpa_bus import (
    ConfigMismatch,
    InvalidEvent,
    InvalidEventType,
    InvalidOffset,
    InvalidSessionId,
    InvalidStreamName,
    Keys,
    Settings,
    StreamId,
    StreamRef,
    decode,
    encode,
    make,
    parse_offset,
    parse_stream_name,
    state_fields,
    state_from_meta,
    validate_session_id,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
sids = st.text(alphabet=SID_ALPHABET, min_size=1, max_size=128)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_key_layout_matches_design_example() -> None:
    keys = Keys()
    assert keys.session("quote-123") == "rpa:{009}:session:quote-123"
    assert keys.meta("quote-123") == "rpa:{009}:session:quote-123:meta"
    assert keys.sessions == "rpa:sessions"
    assert keys.monitor("web-1") == "rpa:monitor:web-1"
    assert keys.config == "rpa:config"
    assert keys.relay_group("relay-1") == "rpa:relay:relay-1"


@given(sids, st.integers(1, 4096))
def test_bucket_is_crc32_mod_count_as_three_hex_digits(sid: str, buckets: int) -> None:
    key = Keys("p", buckets).session(sid)
    expected = zlib.crc32(sid.encode()) % buckets
    assert key == f"p:{{{expected:03x}}}:session:{sid}"
    assert Keys("p", buckets).meta(sid).startswith(f"p:{{{expected:03x}}}:")


def test_bucket_count_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigMismatch):
        Keys(buckets=0)
    with pytest.raises(ConfigMismatch):
        Keys(buckets=4097)


def test_config_agreement_check() -> None:
    keys = Keys(buckets=256)
    keys.check_config({})  # nobody wrote it yet
    keys.check_config({"buckets": "256"})
    with pytest.raises(ConfigMismatch, match="RPA_BUS_BUCKETS=64"):
        keys.check_config({"buckets": "64"})


@given(sids)
def test_valid_session_ids_pass_unchanged(sid: str) -> None:
    assert validate_session_id(sid) == sid


@given(st.text(min_size=1, max_size=200).filter(lambda s: any(c not in SID_ALPHABET for c in s)))
def test_session_ids_with_other_characters_are_refused(sid: str) -> None:
    with pytest.raises(InvalidSessionId, match="invalid session id"):
        validate_session_id(sid)


@pytest.mark.parametrize("sid", ["", "a" * 129, "a b", "a:b", "a{b}", "ação", None, 12])
def test_bad_session_ids_are_refused_not_sanitised(sid: object) -> None:
    with pytest.raises(InvalidSessionId):
        validate_session_id(sid)


def test_stream_names() -> None:
    assert parse_stream_name("session:quote-123") == StreamRef("session", "quote-123")
    assert parse_stream_name("sessions") == StreamRef("sessions")
    assert parse_stream_name("monitor:web-1") == StreamRef("monitor", "web-1")
    assert str(parse_stream_name("monitor:web-1")) == "monitor:web-1"
    keys = Keys()
    assert keys.key_for(parse_stream_name("session:quote-123")) == keys.session("quote-123")
    assert keys.meta_for(parse_stream_name("sessions")) is None


@pytest.mark.parametrize(
    "name", ["session:", "session:a b", "monitor:", "foo:bar", "session", "", "rpa:sessions", 5]
)
def test_bad_stream_names(name: object) -> None:
    with pytest.raises(InvalidStreamName):
        parse_stream_name(name)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_stream_id_round_trip_and_order(ms: int, seq: int) -> None:
    sid = StreamId(ms, seq)
    assert StreamId.parse(str(sid)) == sid
    assert StreamId.parse(str(sid).encode()) == sid
    assert StreamId(ms, seq) < StreamId(ms + 1, 0)


@pytest.mark.parametrize(
    "bad", ["", "-", "1-", "-1", "a-b", "1-2-3", "$x", "1.5", str(2**64) + "-0"]
)
def test_bad_stream_ids(bad: str) -> None:
    with pytest.raises(InvalidOffset):
        StreamId.parse(bad)


def test_offsets() -> None:
    assert parse_offset(None) == StreamId(0, 0)
    assert parse_offset("0") == StreamId(0, 0)
    assert parse_offset("$") is None
    assert parse_offset("5-1") == StreamId(5, 1)
    with pytest.raises(InvalidOffset):
        parse_offset(5)


# ``step`` and ``artifact`` need fields of their own (tested below).
_PLAIN_TYPES = st.sampled_from(
    sorted(rpa_bus.BUILTIN_TYPES - {"step", "artifact"})
) | st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda name: name not in ("step", "artifact")
)


@given(
    _PLAIN_TYPES,
    st.none() | st.integers(0, 1000),
    st.none() | st.text(max_size=50),
    json_values,
)
def test_envelope_round_trip(
    kind: str, step: int | None, message: str | None, data: object
) -> None:
    event = make(
        kind, step=step, total=None if step is None else step + 1, message=message, data=data
    )
    assert decode(encode(event)) == orjson.loads(orjson.dumps(event))
    assert decode(encode(event))["type"] == kind


@given(st.text(max_size=70).filter(lambda s: s not in rpa_bus.BUILTIN_TYPES))
def test_bad_type_names_are_refused(name: str) -> None:
    import re

    if re.fullmatch(r"[a-z][a-z0-9_.-]{0,63}", name):
        return  # a valid custom name
    with pytest.raises(InvalidEventType, match="invalid event type"):
        make(name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1}, "step must be >= 0"),
        ({"step": 16, "total": 15}, "beyond total"),
        ({"total": 0}, "total must be >= 1"),
        ({"percent": 101.0}, "percent"),
        ({"eta_s": float("nan")}, "eta_s"),
        ({"step": True}, "'step' must be"),
        ({"message": 5}, "'message' must be"),
    ],
)
def test_bad_fields_name_the_problem(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        make("progress", **kwargs)  # type: ignore[arg-type]


def test_non_json_data_is_refused_at_encode() -> None:
    with pytest.raises(InvalidEvent, match="not JSON-serialisable"):
        encode(make("log", data={"x": object()}))
    with pytest.raises(InvalidEvent, match="bytes encoded"):
        encode(make("log", data="x" * 2000), max_bytes=1000)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2]",
        b'{"type":"progress"}',
        b'{"type":"Bad","ts":"x"}',
        b'{"type":"log","ts":"x","zzz":1}',
    ],
)
def test_decode_refuses_non_envelopes(raw: bytes) -> None:
    with pytest.raises((InvalidEvent, InvalidEventType)):
        decode(raw)


def test_state_folding() -> None:
    started = make("started", total=15, message="go")
    assert state_fields(started)["status"] == "running"
    progress = make("progress", step=3, total=15, percent=20.0, eta_s=41.5, message="Tela 3")
    fields = state_fields(progress)
    failed = make("failed", error="ValueError: boom")
    meta = {**state_fields(started), **fields, "epoch": "e", "seq:abc": "4"}
    state = state_from_meta(meta)
    assert state["step"] == 3
    assert state["total"] == 15
    assert state["percent"] == 20.0
    assert state["eta_s"] == 41.5
    assert state["message"] == "Tela 3"
    assert state["status"] == "running"
    assert "epoch" not in state
    assert "seq:abc" not in state
    state = state_from_meta({**meta, **state_fields(failed)})
    assert state["status"] == "failed"
    assert state["error"] == "ValueError: boom"
    done = state_from_meta(
        {k.encode(): v.encode() for k, v in {**meta, **state_fields(make("finished"))}.items()}
    )
    assert done["status"] == "finished"
    assert done["percent"] == 100.0


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {"RPA_BUS_BUCKETS": "64", "RPA_BUS_PREFIX": "x", "RPA_BUS_REDIS_URL": "redis://h:1/0"}
    )
    assert (s.buckets, s.prefix, s.redis_url) == (64, "x", "redis://h:1/0")
    assert s.keys.session("a").startswith("x:{")
    assert Settings.from_env({}, maxlen=5).maxlen == 5
    with pytest.raises(rpa_bus.ConfigError, match="RPA_BUS_BUCKETS"):
        Settings.from_env({"RPA_BUS_BUCKETS": "lots"})
    with pytest.raises(rpa_bus.ConfigError, match="outside"):
        Settings.from_env({"RPA_BUS_BUCKETS": "5000"})


def test_contract_is_pure() -> None:
    """rpa_bus (outside its CLI) imports neither redis nor asyncio nor websockets."""
    for path in (ROOT / "rpa_bus").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"redis", "asyncio", "websockets"}, (path, name)
                assert not name.startswith("rpa_bus.redisio"), (path, name)


PACKAGES = ("rpa_bus", "producer", "relay", "monitor", "workers")


def test_no_module_imports_another_packages_private_module() -> None:
    """Parts meet through each other's public names (``__init__``), never a ``_private``
    module of another package: shared plumbing lives in ``rpa_bus.redisio``."""
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            own = ".".join(path.relative_to(ROOT).parent.parts)
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    parts = name.split(".")
                    private = [i for i, part in enumerate(parts) if part.startswith("_")]
                    if not private or parts[0] not in PACKAGES:
                        continue
                    home = ".".join(parts[: private[0]])
                    if home != own:
                        offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


@pytest.mark.parametrize("package", [*PACKAGES, "rpa_bus.redisio"])
def test_all_is_honest(package: str) -> None:
    """__all__ names exactly the public names (its order is ruff's RUF022 job)."""
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", [])
    assert len(exported) == len(set(exported))
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"
    public = {n for n in vars(module) if not n.startswith("_")} - {"annotations"}
    public = {n for n in public if not isinstance(getattr(module, n), type(ast))}  # not submodules
    assert public <= set(exported), (
        f"{package} exposes names not in __all__: {public - set(exported)}"
    )


def test_job_view_fields_round_trip() -> None:
    start = make("started", job="quote-robot", total=15)
    begin = make("step", step=3, total=15, phase="start", attempt=2, message="Screen 3")
    end = make("step", step=3, total=15, phase="end", outcome="retried", duration_s=4.25)
    shot = make("artifact", step=3, artifact={"kind": "screenshot", "url": "http://x/3.png"})
    warn = make("log", level="warning", message="slow page", eta_runs=12, eta_s=30.0)
    for event in (start, begin, end, shot, warn):
        assert decode(encode(event)) == event
    assert state_fields(start)["job"] == "quote-robot"
    assert state_fields(begin)["status"] == "running"
    assert state_fields(warn)["eta_runs"] == "12"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"type": "started", "job": "no spaces"}, "job must match"),
        ({"type": "log", "level": "fatal"}, "level must be one of"),
        ({"type": "step", "step": 1}, "needs 'step'"),
        ({"type": "step", "step": 1, "phase": "end"}, "needs an 'outcome'"),
        ({"type": "step", "step": 1, "phase": "start", "attempt": 0}, "attempt must be >= 1"),
        ({"type": "step", "step": 1, "phase": "end", "outcome": "meh"}, "outcome must be"),
        ({"type": "step", "step": 1, "phase": "end", "outcome": "ok", "duration_s": -1}, ">= 0"),
        ({"type": "artifact"}, "needs an 'artifact'"),
        ({"type": "artifact", "artifact": {"kind": "screenshot"}}, "'url' or a 'path'"),
        ({"type": "artifact", "artifact": {"kind": "Shot", "url": "u"}}, "artifact kind"),
        ({"type": "artifact", "artifact": {"kind": "s", "url": "u", "bytes": "x"}}, "unknown"),
        ({"type": "log", "eta_runs": -1}, "eta_runs must be"),
    ],
)
def test_bad_job_view_fields_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        rpa_bus.validate({"ts": "2026-11-27T00:00:00.000Z", **kwargs})
