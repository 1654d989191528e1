"""The OpenAPI 3.1 description of the relay's ``/v1/`` doors, served at ``/v1/openapi.json``
and fuzzed against the running handlers (tests/test_api_fuzz.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay._settings import ApiLimits

SID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds."}}


def _reads(**extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "400": _error(
            "Bad input (`bad_request`, `invalid_stream`, `invalid_offset`), more events "
            "in one POST than the limit, or (SSE) more `stream=` than the relay allows "
            "(`too_many_subscriptions`)."
        ),
        "401": _error("`forbidden`: no token, or an invalid or expired one (with a secret)."),
        "403": _error("`forbidden`: the token does not grant it, or Host/Origin not allowed."),
        "429": _error(
            "`rate_limited`: past this client address's request rate.", headers=_RETRY_AFTER
        ),
        **extra,
        "503": _error("`unavailable`: Redis is down; try again.", headers=_RETRY_AFTER),
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def openapi_spec(limits: ApiLimits) -> dict[str, Any]:
    """The description, with this relay's limits filled in."""
    offset = {"type": "string", "pattern": ID_PATTERN}
    sid_param = {
        "name": "sid",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": SID_PATTERN},
        "description": "Session id: 1 to 128 characters from A-Z a-z 0-9 _ . -",
    }
    session_state = {
        "type": "object",
        "required": [
            "session",
            "status",
            "step",
            "total",
            "percent",
            "eta_s",
            "message",
            "error",
            "started",
            "updated",
            "first",
            "last",
            "epoch",
            "job",
            "eta_runs",
        ],
        "properties": {
            "session": {"type": "string"},
            "status": _nullable({"enum": ["running", "finished", "failed"]}),
            "step": _nullable({"type": "integer"}),
            "total": _nullable({"type": "integer"}),
            "percent": _nullable({"type": "number"}),
            "eta_s": _nullable({"type": "number"}),
            "message": _nullable({"type": "string"}),
            "error": _nullable({"type": "string"}),
            "started": _nullable({"type": "string"}),
            "updated": _nullable({"type": "string"}),
            "first": _nullable({"type": "string"}),
            "last": _nullable({"type": "string"}),
            "epoch": _nullable({"type": "string"}),
            "job": _nullable({"type": "string"}),
            "eta_runs": _nullable({"type": "integer", "minimum": 0}),
        },
    }
    job_summary = {
        "type": "object",
        "required": [
            "job",
            "runs",
            "runs_today",
            "succeeded",
            "failed",
            "success_rate",
            "median_s",
            "p90_s",
            "slowest_step",
        ],
        "properties": {
            "job": {"type": "string"},
            "runs": {"type": "integer", "minimum": 0},
            "runs_today": {"type": "integer", "minimum": 0},
            "succeeded": {"type": "integer", "minimum": 0},
            "failed": {"type": "integer", "minimum": 0},
            "success_rate": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "median_s": _nullable({"type": "number", "minimum": 0}),
            "p90_s": _nullable({"type": "number", "minimum": 0}),
            "slowest_step": _nullable(
                {
                    "type": "object",
                    "required": ["step", "name", "median_s"],
                    "properties": {
                        "step": {"type": "integer"},
                        "name": _nullable({"type": "string"}),
                        "median_s": {"type": "number"},
                    },
                }
            ),
            "profile": {
                "type": "object",
                "description": "`GET /v1/jobs/{job}` only: the learned step profile "
                "(`runs`, `typical_s` step -> seconds, `run_spread`, `step_spread`).",
                "required": ["v", "runs", "typical_s", "run_spread", "step_spread"],
                "properties": {
                    "v": {"const": 1},
                    "runs": {"type": "integer", "minimum": 0},
                    "typical_s": {
                        "type": "object",
                        "additionalProperties": {"type": "number", "minimum": 0},
                    },
                    "run_spread": {"type": "number"},
                    "step_spread": {"type": "number"},
                },
            },
        },
    }
    no_archive = _error(
        "`not_found`: this relay has no archive (RPA_BUS_ARCHIVE_URL), or (one job) the "
        "archive holds no run of it."
    )
    envelope_in = {
        "type": "object",
        "description": "An event envelope (docs/protocol.md); `ts` is filled in if absent.",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "examples": ["progress"]},
            "ts": {"type": "string", "examples": ["2026-11-22T10:00:00.123Z"]},
            "session": {"type": "string"},
            "step": {"type": "integer", "minimum": 0},
            "total": {"type": "integer", "minimum": 1},
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "eta_s": {"type": "number", "minimum": 0},
            "message": {"type": "string"},
            "error": {"type": "string"},
            "job": {"type": "string", "pattern": SID_PATTERN},
            "level": {"enum": ["debug", "info", "warning", "error"]},
            "phase": {"enum": ["start", "end"]},
            "attempt": {"type": "integer", "minimum": 1},
            "outcome": {"enum": ["ok", "failed", "retried"]},
            "duration_s": {"type": "number", "minimum": 0},
            "eta_runs": {"type": "integer", "minimum": 0},
            "artifact": {
                "type": "object",
                "required": ["kind"],
                "properties": {
                    "kind": {"type": "string", "pattern": "^[a-z][a-z0-9_.-]{0,63}$"},
                    "url": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "path": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "name": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "mime": {"type": "string", "minLength": 1, "maxLength": 2048},
                },
                "additionalProperties": False,
            },
            "data": {},
        },
        "additionalProperties": False,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rpa-bus relay HTTP API",
            "version": "1",
            "description": "History, sessions, publish and Server-Sent Events on the relay's "
            'port. Errors are `{"error": {"code", "message"}}` with the WebSocket '
            "error codes (plus `not_found`, `too_large`, `method_not_allowed`). See docs/http.md.",
        },
        "security": [{}, {"bearer": []}, {"token": []}],
        "paths": {
            "/v1/streams/{stream}/events": {
                "get": {
                    "operationId": "history",
                    "summary": "One page of a stream's history.",
                    "parameters": [
                        {
                            "name": "stream",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "`session:SID`, `sessions` or `monitor:HOST`.",
                        },
                        _query("after", offset, "Exclusive lower bound (an entry id)."),
                        _query("before", offset, "Exclusive upper bound (an entry id)."),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": limits.page_max},
                            f"Events per page (default {limits.page_default}).",
                        ),
                        _query("order", {"enum": ["asc", "desc"]}, "Oldest (asc) or newest first."),
                        _query("token", {"type": "string"}, "A token, where no header can be set."),
                    ],
                    "responses": {
                        "200": {
                            "description": "A page; `next` feeds `after` (asc) or `before` "
                            "(desc) of the following page, null at the end.",
                            "content": {"application/json": {"schema": _ref("Page")}},
                        },
                        **_reads(),
                    },
                }
            },
            "/v1/sessions": {
                "get": {
                    "operationId": "sessions",
                    "summary": "Sessions, newest first, each with its folded state.",
                    "parameters": [
                        _query(
                            "status",
                            {"enum": ["running", "finished", "failed"]},
                            "Only sessions with this status.",
                        ),
                        _query(
                            "q",
                            {"type": "string", "maxLength": 256},
                            "Case-insensitive substring of the id or of any of the session's "
                            "messages and errors (only the last ones without an archive).",
                        ),
                        _query("since", offset, "Only sessions started at or after this id/ms."),
                        _query(
                            "until",
                            offset,
                            "Only sessions started at or before this id/ms (archived ones: "
                            "updated at or before).",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": limits.sessions_max},
                            f"Sessions per page (default {limits.sessions_default}).",
                        ),
                        _query(
                            "cursor",
                            {"type": "string", "maxLength": 1024},
                            "`next` of the previous page (opaque: a stream id while Redis's "
                            "sessions last, then the archive's).",
                        ),
                        _query("token", {"type": "string"}, "A token, where no header can be set."),
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of sessions; `next` is the cursor for "
                            "older ones, null at the end.",
                            "content": {"application/json": {"schema": _ref("SessionsPage")}},
                        },
                        **_reads(),
                    },
                }
            },
            "/v1/sessions/{sid}": {
                "get": {
                    "operationId": "session",
                    "summary": "One session's folded state, in one request.",
                    "parameters": [
                        sid_param,
                        _query("token", {"type": "string"}, "A token, where no header can be set."),
                    ],
                    "responses": {
                        "200": {
                            "description": "The session's state.",
                            "content": {"application/json": {"schema": _ref("SessionState")}},
                        },
                        **_reads(**{"404": _error("`not_found`: no such session, or it expired.")}),
                    },
                }
            },
            "/v1/jobs": {
                "get": {
                    "operationId": "jobs",
                    "summary": "Job summaries from the archive: runs, success rate, median "
                    "and p90 duration, the slowest step. Needs a token granting `sessions`.",
                    "parameters": [
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": limits.jobs_max},
                            f"Jobs at most, by name (default {limits.jobs_default}).",
                        ),
                        _query("token", {"type": "string"}, "A token, where no header can be set."),
                    ],
                    "responses": {
                        "200": {
                            "description": "Every job with archived runs, by name.",
                            "content": {"application/json": {"schema": _ref("JobsList")}},
                        },
                        **_reads(**{"404": no_archive}),
                    },
                }
            },
            "/v1/jobs/{job}": {
                "get": {
                    "operationId": "job",
                    "summary": "One job's summary with its learned step profile.",
                    "parameters": [
                        {
                            "name": "job",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": SID_PATTERN},
                            "description": "Job name: 1 to 128 characters from A-Z a-z 0-9 _ . -",
                        },
                        _query("token", {"type": "string"}, "A token, where no header can be set."),
                    ],
                    "responses": {
                        "200": {
                            "description": "The job's summary and `profile`.",
                            "content": {"application/json": {"schema": _ref("JobSummary")}},
                        },
                        **_reads(**{"404": no_archive}),
                    },
                }
            },
            "/v1/sessions/{sid}/events": {
                "post": {
                    "operationId": "publish",
                    "summary": "Append one event or a list of them to a session.",
                    "parameters": [
                        sid_param,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 255,
                                "pattern": "^[\\x20-\\x7e]+$",
                            },
                            "description": "A retried request with the same key and body "
                            "appends nothing twice and answers the first attempt's ids; the "
                            "same key with another body is refused (422).",
                        },
                        _query("token", {"type": "string"}, "A token, where no header can be set."),
                    ],
                    "requestBody": {
                        "required": True,
                        "description": f"At most {limits.max_body_bytes} bytes and "
                        f"{limits.max_events_per_post} events.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "anyOf": [
                                        _ref("EnvelopeIn"),
                                        {
                                            "type": "array",
                                            "items": _ref("EnvelopeIn"),
                                            "minItems": 1,
                                            "maxItems": limits.max_events_per_post,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Appended (or, with `replayed`, appended by an "
                            "earlier attempt with the same Idempotency-Key).",
                            "headers": {
                                "Idempotent-Replayed": {
                                    "schema": {"type": "string"},
                                    "description": "`true` on a replay.",
                                }
                            },
                            "content": {"application/json": {"schema": _ref("Published")}},
                        },
                        **_reads(
                            **{
                                "413": _error("`too_large`: body larger than the limit."),
                                "422": _error(
                                    "`bad_request`: Idempotency-Key reused with another body."
                                ),
                                "429": _error("`rate_limited`.", headers=_RETRY_AFTER),
                            }
                        ),
                    },
                }
            },
            "/v1/sse": {
                "get": {
                    "operationId": "sse",
                    "summary": "Server-Sent Events: live and replayed events of one or more "
                    "streams (docs/protocol.md).",
                    "parameters": [
                        {
                            "name": "stream",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "array", "items": {"type": "string"}},
                            "style": "form",
                            "explode": True,
                        },
                        _query("from", {"type": "string"}, "Exclusive start id, `0` or `$`."),
                        _query("token", {"type": "string"}, "EventSource cannot set headers."),
                        _query(
                            "last_event_id",
                            {"type": "string"},
                            "Where each stream starts, in the format of the `id:` this "
                            "door sends (`STREAM=LAST_ID[@EPOCH]` joined by `;`), for a "
                            "fresh request; names only streams of the request. "
                            "`Last-Event-ID` wins when both are sent.",
                        ),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Sent by EventSource on reconnect: resumes every "
                            "stream of the connection exactly.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "`event:` is the WebSocket frame's type "
                            "(subscribed, event, live, gap, reset, unavailable, error); "
                            "`data:` is that frame's JSON.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_reads(
                            **{
                                "429": _error(
                                    "`rate_limited`: this address holds as many WebSocket "
                                    "and SSE connections as the relay allows."
                                )
                            }
                        ),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This description.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "token": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {
                                    "enum": [
                                        "bad_request",
                                        "invalid_stream",
                                        "invalid_offset",
                                        "forbidden",
                                        "too_many_subscriptions",
                                        "rate_limited",
                                        "unavailable",
                                        "not_found",
                                        "too_large",
                                        "method_not_allowed",
                                    ]
                                },
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["id", "data"],
                    "properties": {
                        "id": {"type": "string"},
                        "data": _nullable({"type": "object"}),
                    },
                },
                "Page": {
                    "type": "object",
                    "required": ["stream", "epoch", "first", "last", "events", "next"],
                    "properties": {
                        "stream": {"type": "string"},
                        "epoch": _nullable({"type": "string"}),
                        "first": _nullable({"type": "string"}),
                        "last": _nullable({"type": "string"}),
                        "events": {"type": "array", "items": _ref("Event")},
                        "next": _nullable({"type": "string"}),
                    },
                },
                "SessionState": session_state,
                "SessionsPage": {
                    "type": "object",
                    "required": ["sessions", "next"],
                    "properties": {
                        "sessions": {"type": "array", "items": _ref("SessionState")},
                        "next": _nullable({"type": "string"}),
                    },
                },
                "Published": {
                    "type": "object",
                    "required": ["stream", "ids", "replayed"],
                    "properties": {
                        "stream": {"type": "string"},
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "replayed": {"type": "boolean"},
                    },
                },
                "EnvelopeIn": envelope_in,
                "JobSummary": job_summary,
                "JobsList": {
                    "type": "object",
                    "required": ["jobs"],
                    "properties": {"jobs": {"type": "array", "items": _ref("JobSummary")}},
                },
            },
        },
    }
