"""The webhook sender's pure parts: the endpoints file, the address policy, signing, the
retry classification, the ``webhook-id`` and the CLI's file commands."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from rpa_bus import ConfigError
from workers import (
    Endpoint,
    add_endpoint,
    load_endpoints,
    new_secret,
    parse_endpoints,
    refusal,
    remove_endpoint,
    sign_headers,
    webhook_id,
)
from workers._deliver import classify, parse_retry_after
from workers._outbox import payload

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RPA_BUS = str(Path(sys.executable).parent / "rpa-bus")

GOOD = f"""
[endpoints.ops]
url = "https://hooks.example.com/rpa"
secret = "{SECRET}"
streams = ["session:*", "monitor:*"]
events = ["failed", "alert"]
rate_per_s = 5
"""


def test_a_good_file_reads_back() -> None:
    (ep,) = parse_endpoints(GOOD)
    assert ep.name == "ops"
    assert ep.rate_per_s == 5.0
    assert ep.matches("session:q-1", "failed")
    assert ep.matches("monitor:h1", "alert")
    assert not ep.matches("session:q-1", "progress")
    assert not ep.matches("sessions", "failed")
    assert SECRET not in repr(ep)
    assert "secret" not in ep.public()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "colour = 'red'\n", "unknown key(s) colour"),
        (GOOD.replace("https://hooks.example.com/rpa", "hooks.example.com"), "must be https://"),
        (GOOD.replace("https://", "http://"), "set allow_http = true"),
        (GOOD.replace("https://hooks.example.com/rpa", "https://u:p@h.example/"), "credentials"),
        (GOOD.replace(f'secret = "{SECRET}"\n', ""), "secret is missing"),
        (GOOD.replace(SECRET, "hunter2"), "must be a string starting with 'whsec_'"),
        (GOOD.replace(SECRET, "whsec_c2hvcnQ="), "24 to 64 bytes"),
        (GOOD.replace(SECRET, "whsec_!!notbase64!!"), "not valid base64"),
        (GOOD.replace('"failed"', '"Failed!"'), "bad event type"),
        (GOOD.replace("rate_per_s = 5", "rate_per_s = -1"), "rate_per_s"),
        (GOOD + "[other]\n", "unknown top-level key(s) other"),
        ("[endpoints.ops\n", "not valid TOML"),
    ],
)
def test_a_bad_file_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_endpoints(text)
    assert "hunter2" not in str(err.value)  # a secret is never echoed


def test_add_and_remove_rewrite_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "webhooks.toml"
    first = Endpoint(name="a", url="https://a.example/h", secret=new_secret())
    second = Endpoint(
        name="b", url="http://b.example/h", secret=new_secret(), allow_http=True,
        streams=("session:quote-*",), events=("finished", "failed"), rate_per_s=2.5,
    )  # fmt: skip
    add_endpoint(path, first)
    add_endpoint(path, second)
    assert load_endpoints(path) == [first, second]
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        add_endpoint(path, first)
    remove_endpoint(path, "a")
    assert load_endpoints(path) == [second]
    with pytest.raises(ConfigError, match="no endpoint 'a'"):
        remove_endpoint(path, "a")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
        "169.254.169.254", "169.254.1.1", "fe80::1", "fc00::1", "fd12:3456::1", "0.0.0.0",
        "::", "100.64.0.1", "224.0.0.1", "240.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "fd00:ec2::254", "192.0.2.1", "198.18.0.1",
    ],
)  # fmt: skip
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_metadata_is_named() -> None:
    assert "metadata" in (refusal("169.254.169.254") or "")


def test_signature_verifies_and_a_tampered_body_does_not() -> None:
    body = payload("failed", "session:q", "e1", "1-0", b'{"type":"failed","ts":"x"}', ts="x")
    headers = sign_headers(Webhook(SECRET), "msg_1", body, now=datetime.now(UTC))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["data"]["event"]["type"] == "failed"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"failed", b"finished"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    stale = sign_headers(Webhook(SECRET), "msg_1", body, now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, stale)


def test_webhook_id_is_stable_and_distinct() -> None:
    one = webhook_id("ops", "session:q", "e1", "1-0")
    assert one == webhook_id("ops", "session:q", "e1", "1-0")
    assert one.startswith("msg_")
    others = {
        webhook_id("ops2", "session:q", "e1", "1-0"),
        webhook_id("ops", "session:r", "e1", "1-0"),
        webhook_id("ops", "session:q", "e2", "1-0"),
        webhook_id("ops", "session:q", "e1", "1-1"),
    }
    assert one not in others
    assert len(others) == 4


def test_body_keeps_the_envelope_as_written() -> None:
    envelope = b'{"type":"progress","ts":"2026-11-27T00:00:00.000Z","step":3}'
    body = orjson.loads(
        payload("progress", "session:q", "e1", "5-0", envelope, ts="2026-11-27T00:00:00.000Z")
    )
    assert body == {
        "type": "progress",
        "timestamp": "2026-11-27T00:00:00.000Z",
        "data": {
            "stream": "session:q",
            "id": "5-0",
            "epoch": "e1",
            "event": orjson.loads(envelope),
        },
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, (True, True)), (204, (True, True)), (500, (False, False)), (503, (False, False)),
     (429, (False, False)), (408, (False, False)), (409, (False, False)), (400, (False, True)),
     (401, (False, True)), (404, (False, True)), (410, (False, True)), (301, (False, True))],
)  # fmt: skip
def test_status_classification(status: int, expected: tuple[bool, bool]) -> None:
    assert classify(status) == expected


def test_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("999999") == 3600.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RPA_BUS, "webhooks", *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_cli_add_list_remove_never_shows_the_secret(tmp_path: Path) -> None:
    env = {"RPA_BUS_WEBHOOKS_FILE": str(tmp_path / "w.toml")}
    added = _cli("add", "ops", "--url", "https://hooks.example.com/x", "--event", "failed", env=env)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.split("secret (shown once; give it to the receiver): ")[1].strip()
    assert load_endpoints(tmp_path / "w.toml")[0].secret == secret
    listed = _cli("list", env=env)
    assert "ops" in listed.stdout
    assert "hooks.example.com" in listed.stdout
    as_json = _cli("list", "--json", env=env)
    assert secret not in listed.stdout + as_json.stdout
    assert orjson.loads(as_json.stdout)[0]["events"] == ["failed"]
    assert _cli("remove", "ops", env=env).returncode == 0
    assert load_endpoints(tmp_path / "w.toml") == []
    bad = _cli("add", "x", "--url", "http://plain.example/", env=env)
    assert bad.returncode == 2
    assert "allow_http" in bad.stderr
