"""Unit tests of the monitor's pure parts: alert hysteresis and settings. No server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor import Alert, AlertBook, MonitorSettings, Rule, rules_of
from monitor._alerts import from_stored, stored
from rpa_bus import ConfigError, Settings

CPU = Rule("cpu", 80.0, "warning", margin=4.0, fire_after=2, resolve_after=2)


def states(alerts: list[Alert]) -> list[str]:
    return [a.state for a in alerts]


def feed(book: AlertBook, metric: str, values: list[float], subject: str = "") -> list[str]:
    out: list[str] = []
    for v in values:
        out += states(book.observe(metric, {subject: v}))
    return out


def test_fires_after_k_samples_above_and_resolves_after_k_below_the_margin() -> None:
    book = AlertBook.of([CPU])
    assert feed(book, "cpu", [90.0]) == []  # one sample above is not enough
    assert feed(book, "cpu", [91.0]) == ["firing"]
    assert book.is_firing("cpu")
    assert feed(book, "cpu", [79.0, 77.0, 90.0, 70.0]) == []  # 79 and 77 are inside the band
    assert feed(book, "cpu", [70.0]) == ["resolved"]
    assert not book.is_firing("cpu")


def test_alert_payload() -> None:
    book = AlertBook.of([CPU, Rule("disk", 90.0, "critical")])
    [alert] = book.observe("disk", {"/data": 95.5})
    assert alert.data() == {
        "metric": "disk",
        "value": 95.5,
        "threshold": 90.0,
        "severity": "critical",
        "state": "firing",
        "mount": "/data",
    }
    assert "/data" in alert.message()
    feed(book, "cpu", [85.0, 85.0])
    book.observe("cpu", {"": 10.0})
    [alert] = book.observe("cpu", {"": 12.5})
    assert alert.data() == {
        "metric": "cpu",
        "value": 12.5,
        "threshold": 80.0,
        "severity": "warning",
        "state": "resolved",
    }
    assert Alert("stalled", "s1", 130.0, 120.0, "warning", "firing").data()["session"] == "s1"
    assert Alert("relay_lag", "r1", 2e3, 1e3, "warning", "firing").data()["relay"] == "r1"


def test_value_hovering_at_the_threshold_does_not_flap() -> None:
    book = AlertBook.of([CPU])
    hover = [79.0, 81.0, 79.5, 80.9, 78.0, 80.1, 80.0] * 20
    assert feed(book, "cpu", hover) == []  # never two in a row above 80
    feed(book, "cpu", [85.0, 85.0])
    assert feed(book, "cpu", hover) == []  # firing, and it stays so: never below 76


def test_subjects_are_independent_and_a_vanished_subject_resolves() -> None:
    book = AlertBook.of([Rule("stalled", 120.0, "warning")])
    assert states(book.observe("stalled", {"a": 130.0, "b": 10.0})) == ["firing"]
    assert book.is_firing("stalled", "a")
    assert not book.is_firing("stalled", "b")
    [gone] = book.observe("stalled", {"b": 11.0})  # "a" ended
    assert (gone.subject, gone.state, gone.value) == ("a", "resolved", 130.0)
    assert book.observe("stalled", {}) == []  # "b" was not firing: nothing to say
    assert book.observe("unknown", {"": 1.0}) == []


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        Rule("cpu", 80.0, "warning", margin=-1.0)
    with pytest.raises(ValueError, match="fire_after"):
        Rule("cpu", 80.0, "warning", fire_after=0)


@given(
    st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), max_size=200),
    st.integers(1, 4),
    st.floats(min_value=0, max_value=30),
)
def test_transitions_alternate_and_follow_the_rule(
    values: list[float], k: int, margin: float
) -> None:
    rule = Rule("x", 80.0, "warning", margin=margin, fire_after=k, resolve_after=k)
    book = AlertBook.of([rule])
    firing = False
    for i, v in enumerate(values):
        for alert in book.observe("x", {"": v}):
            assert alert.state == ("resolved" if firing else "firing")
            window = values[max(0, i - k + 1) : i + 1]
            assert len(window) == k
            if alert.state == "firing":
                assert all(w > rule.threshold for w in window)
            else:
                assert all(w < rule.threshold - margin for w in window)
            firing = not firing
        assert book.is_firing("x") == firing


@given(st.lists(st.floats(min_value=76.0, max_value=80.0), min_size=1, max_size=100))
def test_values_inside_the_band_never_change_the_state(values: list[float]) -> None:
    for start_firing in (False, True):
        book = AlertBook.of([CPU])
        if start_firing:
            feed(book, "cpu", [99.0, 99.0])
        assert feed(book, "cpu", values) == []
        assert book.is_firing("cpu") == start_firing


def test_settings_defaults_and_rules() -> None:
    s = MonitorSettings.from_env({}, host_name="web-1")
    assert (s.interval_s, s.stall_after_s, s.window_s) == (5.0, 120.0, 86400.0)
    rules = {r.metric: r for r in rules_of(s)}
    assert (rules["cpu"].threshold, rules["cpu"].severity) == (80.0, "warning")
    assert (rules["memory"].threshold, rules["memory"].severity) == (85.0, "critical")
    assert (rules["disk"].threshold, rules["disk"].severity) == (90.0, "critical")
    assert (rules["relay_lag"].threshold, rules["relay_lag"].severity) == (1000.0, "warning")
    assert rules["stalled"].threshold == 120.0
    assert (rules["archive_lag"].threshold, rules["archive_lag"].severity) == (
        100_000.0,
        "warning",
    )
    assert s.archive_lag_interval_s == 30.0
    assert rules["cpu"].resolve_below == pytest.approx(76.0)


def test_settings_from_env_and_overrides() -> None:
    env = {
        "RPA_BUS_MONITOR_HOST": "db-2",
        "RPA_BUS_MONITOR_INTERVAL_S": "2.5",
        "RPA_BUS_MONITOR_CPU_WARN": "70",
        "RPA_BUS_MONITOR_MEMORY_CRIT": "95",
        "RPA_BUS_MONITOR_DISK_CRIT": "99",
        "RPA_BUS_MONITOR_RELAY_LAG_WARN": "50",
        "RPA_BUS_MONITOR_STALL_AFTER_S": "30",
        "RPA_BUS_MONITOR_WINDOW_S": "3600",
        "RPA_BUS_MONITOR_ALERT_SAMPLES": "3",
        "RPA_BUS_MONITOR_ALERT_MARGIN": "0.1",
        "RPA_BUS_PREFIX": "ops",
    }
    s = MonitorSettings.from_env(env, cpu_warn=None, disk_crit=97.0)
    assert s.host_name == "db-2"
    assert s.bus.prefix == "ops"
    assert (s.interval_s, s.cpu_warn, s.memory_crit, s.disk_crit) == (2.5, 70.0, 95.0, 97.0)
    assert (s.relay_lag_warn, s.stall_after_s, s.window_s) == (50.0, 30.0, 3600.0)
    assert (s.alert_samples, s.alert_margin) == (3, 0.1)
    with pytest.raises(ConfigError, match="RPA_BUS_MONITOR_INTERVAL_S"):
        MonitorSettings.from_env({"RPA_BUS_MONITOR_INTERVAL_S": "often"}, host_name="h")


@pytest.mark.parametrize("bad", ["", "web 1", "a/b", "x" * 129, "héllo"])
def test_bad_host_names_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid host name .*--host-name"):
        MonitorSettings(host_name=bad, bus=Settings())
    if bad:  # an empty variable counts as unset
        with pytest.raises(ConfigError, match="--host-name"):
            MonitorSettings.from_env({"RPA_BUS_MONITOR_HOST": bad})


REPLICAS = Rule("replicas", 1, "critical", fire_after=2, resolve_after=2, below=True)


def test_a_below_rule_fires_under_its_floor_and_resolves_at_it() -> None:
    """``replicas``: fewer online replicas than min_replicas fires (after the same
    hysteresis as every rule); as many as required resolves."""
    book = AlertBook.of([REPLICAS])
    assert feed(book, "replicas", [0], "m:1") == []
    [alert] = book.observe("replicas", {"m:1": 0}, at="2026-11-27T03:00:00.000Z")
    assert alert.data() == {
        "metric": "replicas",
        "value": 0,
        "threshold": 1,
        "severity": "critical",
        "state": "firing",
        "master": "m:1",
    }
    assert alert.message() == "replicas m:1 0 < 1 (critical)"
    assert alert.since == "2026-11-27T03:00:00.000Z"
    assert feed(book, "replicas", [1, 0, 2], "m:1") == []  # 1, then 0: not two in a row
    assert feed(book, "replicas", [1], "m:1") == ["resolved"]
    assert feed(book, "replicas", [3, 1], "m:1") == []


def test_firing_alerts_survive_storage_and_restore_without_a_new_event() -> None:
    book = AlertBook.of([CPU, Rule("disk", 90.0, "critical")])
    book.observe("disk", {"/data": 95.5, "/": 10.0}, at="T1")
    feed(book, "cpu", [95.0, 96.0])
    fields = dict(stored(a) for a in book.current())
    assert set(fields) == {"disk:/data", "cpu:"}

    again = AlertBook.of([CPU, Rule("disk", 90.0, "critical")])
    restored = [from_stored(k.encode(), v) for k, v in fields.items()]
    assert all(a is not None for a in restored)
    assert again.restore(a for a in restored if a is not None) == []
    assert sorted(again.firing()) == [("cpu", ""), ("disk", "/data")]
    assert {a.subject: a.since for a in again.current()}["/data"] == "T1"
    # Still above: no second firing event; below: one resolved event.
    assert feed(again, "cpu", [97.0, 98.0]) == []
    assert feed(again, "cpu", [10.0, 10.0]) == ["resolved"]
    assert states(again.observe("disk", {"/data": 50.0})) == ["resolved"]


def test_restore_after_measuring_lets_the_measurement_decide() -> None:
    """Sampled before the stored alerts could be read (Redis was away): a subject already
    measured good resolves at once; one still bad (or in the band) keeps firing."""
    book = AlertBook.of([CPU])
    feed(book, "cpu", [10.0], "")
    old = Alert("cpu", "", 95.0, 80.0, "warning", "firing", since="T0")
    [resolved] = book.restore([old])
    assert (resolved.state, resolved.value) == ("resolved", 10.0)
    assert not book.is_firing("cpu")

    book = AlertBook.of([CPU])
    feed(book, "cpu", [78.0], "")  # inside the band: not good enough to resolve
    assert book.restore([old]) == []
    assert book.is_firing("cpu")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"nocolon", b'{"value": 1, "threshold": 1, "severity": "warning"}'),
        (b"cpu:", b"not json"),
        (b"cpu:", b'{"value": 1, "threshold": 1, "severity": "loud"}'),
        (b"cpu:", b'{"threshold": 1, "severity": "warning"}'),
        (b"\xff:", b'{"value": 1, "threshold": 1, "severity": "warning"}'),
    ],
)
def test_a_stored_alert_that_is_not_one_is_skipped(name: bytes, value: bytes) -> None:
    assert from_stored(name, value) is None


def test_replicas_rule_only_when_the_deployment_asks_for_replicas() -> None:
    none = MonitorSettings(host_name="h", bus=Settings(min_replicas=0))
    assert "replicas" not in {r.metric for r in rules_of(none)}
    two = MonitorSettings(host_name="h", bus=Settings(min_replicas=2), alert_samples=3)
    rule = {r.metric: r for r in rules_of(two)}["replicas"]
    assert (rule.threshold, rule.below, rule.fire_after, rule.severity) == (2, True, 3, "critical")
