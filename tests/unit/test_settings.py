"""cdp/settings.py: durations, the TOML file, environment overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp.errors import SettingsError
from cdp.settings import Settings, format_duration, load_settings, parse_duration_ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("5s", 5_000),
        ("2m", 120_000),
        ("24h", 86_400_000),
        ("7d", 604_800_000),
        ("1.5s", 1_500),
        (" 10s ", 10_000),
        ("10", 10_000),  # a bare number is seconds
        ("0.25", 250),
        (3, 3_000),
        (0.5, 500),
    ],
)
def test_parse_duration(text, ms):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["5x", "", "s", "five seconds", "-5s", "5 s s", "1e3", True])
def test_parse_duration_rejects_nonsense_naming_the_key(text):
    with pytest.raises(SettingsError, match="window-size"):
        parse_duration_ms(text, "window-size")


@pytest.mark.parametrize("ms", [500, 5_000, 120_000, 86_400_000, 604_800_000, 1_500, 90_000])
def test_format_duration_round_trips(ms):
    assert parse_duration_ms(format_duration(ms)) == ms


def test_defaults_without_file_or_environment():
    assert load_settings(env={}) == Settings()
    s = Settings()
    assert (s.window_size_ms, s.grace_period_ms, s.dedup_ttl_ms) == (5_000, 120_000, 600_000)
    assert (s.ticker_interval_ms, s.max_future_skew_ms, s.partitions) == (1_000, 300_000, 16)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdp.toml"
    path.write_text(text)
    return path


def test_toml_at_top_level(tmp_path):
    path = write(tmp_path, 'window-size = "10s"\npartitions = 8\nclock = "redis"\n')
    s = load_settings(path, env={})
    assert (s.window_size_ms, s.partitions, s.clock) == (10_000, 8, "redis")
    assert s.grace_period_ms == Settings().grace_period_ms  # the rest stays default


def test_toml_under_a_cdp_section(tmp_path):
    path = write(tmp_path, '[cdp]\ngrace-period = "3m"\ndedup-ttl = "15m"\nwindow-size = 2\n')
    s = load_settings(path, env={})
    assert (s.grace_period_ms, s.dedup_ttl_ms, s.window_size_ms) == (180_000, 900_000, 2_000)


def test_config_file_named_by_cdp_config(tmp_path):
    path = write(tmp_path, "partitions = 4\n")
    assert load_settings(env={"CDP_CONFIG": str(path)}).partitions == 4


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, 'window-size = "10s"\npartitions = 8\n')
    s = load_settings(path, env={"CDP_WINDOW_SIZE": "7s", "CDP_REDIS_URL": "redis://h:1/2"})
    assert s.window_size_ms == 7_000
    assert s.partitions == 8  # from the file
    assert s.redis_url == "redis://h:1/2"


def test_empty_environment_values_are_ignored(tmp_path):
    path = write(tmp_path, 'window-size = "10s"\n')
    assert load_settings(path, env={"CDP_WINDOW_SIZE": ""}).window_size_ms == 10_000


def test_keyword_overrides_win_over_everything(tmp_path):
    path = write(tmp_path, "partitions = 8\n")
    assert load_settings(path, env={"CDP_PARTITIONS": "4"}, partitions=2).partitions == 2


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("CDP_WINDOW_SIZE", "soon", "window-size"),
        ("CDP_WINDOW_SIZE", "0s", "window-size"),
        ("CDP_GRACE_PERIOD", "-1s", "grace-period"),
        ("CDP_DEDUP_TTL", "10 minutes", "dedup-ttl"),
        ("CDP_PARTITIONS", "abc", "partitions"),
        ("CDP_PARTITIONS", "0", "partitions"),
        ("CDP_PARTITIONS", "-3", "partitions"),
        ("CDP_PARTITIONS", "1.5", "partitions"),
        ("CDP_BATCH_SIZE", "many", "batch-size"),
        ("CDP_CLOCK", "wall", "clock"),
        ("CDP_LOG_LEVEL", "loud", "log-level"),
        ("CDP_LOG_FORMAT", "xml", "log-format"),
        ("CDP_MERGE_DIFFERENT_USERS", "maybe", "merge-different-users"),
    ],
)
def test_bad_environment_value_names_the_key(variable, value, key):
    with pytest.raises(SettingsError, match=key):
        load_settings(env={variable: value})


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('window-size = "soon"', "window-size"),
        ("window-size = -5", "window-size"),
        ("partitions = 1.5", "partitions"),
        ("partitions = true", "partitions"),
        ('partitions = "lots"', "partitions"),
        ("clock = 5", "clock"),
        ('clock = "wall"', "clock"),
        ("merge-different-users = 3", "merge-different-users"),
    ],
)
def test_bad_toml_value_names_the_key(tmp_path, line, key):
    with pytest.raises(SettingsError, match=key):
        load_settings(write(tmp_path, line + "\n"), env={})


@pytest.mark.parametrize(
    "line",
    ['window-size = ["5s"]', "window-size = 1979-05-27"],
    ids=["array", "date"],
)
def test_non_string_toml_duration_names_the_key(tmp_path, line):
    with pytest.raises(SettingsError, match="window-size"):
        load_settings(write(tmp_path, line + "\n"), env={})


def test_inline_table_for_a_known_key_is_rejected(tmp_path):
    with pytest.raises(SettingsError, match="window-size"):
        load_settings(write(tmp_path, "window-size = { seconds = 5 }\n"), env={})


@pytest.mark.parametrize(
    "text",
    ['windowsize = "5s"\n', '[cdp]\nwindow_size = "5s"\n', 'window-size = "5s"\nshards = 3\n'],
)
def test_unknown_key_in_toml_is_rejected(tmp_path, text):
    unknown = text.split("\n")[-2].split(" =")[0]
    with pytest.raises(SettingsError, match=f"{unknown}: unknown setting"):
        load_settings(write(tmp_path, text), env={})


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_invalid_toml(tmp_path):
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(write(tmp_path, "window-size = \n"), env={})


def test_window_plus_grace_must_fit_in_the_counter_window():
    with pytest.raises(SettingsError, match="grace-period"):
        load_settings(env={"CDP_GRACE_PERIOD": "24h"})
    # Just fitting is fine.
    s = load_settings(env={"CDP_GRACE_PERIOD": "86395s"})
    assert s.grace_period_ms + s.window_size_ms == s.counter_window_ms


def test_boolean_settings_accept_the_usual_spellings(tmp_path):
    assert load_settings(env={"CDP_MERGE_DIFFERENT_USERS": "yes"}).merge_different_users
    assert not load_settings(env={"CDP_MERGE_DIFFERENT_USERS": "off"}).merge_different_users
    path = write(tmp_path, "merge-different-users = true\n")
    assert load_settings(path, env={}).merge_different_users


def test_blocked_identifiers_extend_the_built_in_placeholders():
    s = load_settings(env={"CDP_BLOCKED_IDENTIFIERS": " Guest , n/a,"})
    assert {"guest", "n/a", "null", "undefined"} <= s.blocked_values
    assert "" in s.blocked_values
    assert "guest" not in Settings().blocked_values


def test_redis_appendfsync_is_everysec_unless_always():
    assert load_settings(env={}).redis_appendfsync == "everysec"
    assert load_settings(env={"CDP_REDIS_APPENDFSYNC": "Always"}).redis_appendfsync == "always"
    with pytest.raises(SettingsError, match="redis-appendfsync"):
        load_settings(env={"CDP_REDIS_APPENDFSYNC": "no"})


def test_api_processes_default_is_one_per_core_of_the_affinity_mask() -> None:
    import os

    assert load_settings(env={}).api_processes == 0
    assert load_settings(env={}).api_process_count == len(os.sched_getaffinity(0))
    assert load_settings(env={"CDP_API_PROCESSES": "3"}).api_process_count == 3
    with pytest.raises(SettingsError, match="api-processes: must not be negative"):
        load_settings(env={"CDP_API_PROCESSES": "-1"})


def test_event_loop_is_uvloop_when_installed_unless_asyncio_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    import uvloop

    from cdp.api.server import loop_factory

    assert loop_factory(load_settings(env={})) is uvloop.new_event_loop
    assert loop_factory(load_settings(env={"CDP_EVENT_LOOP": "uvloop"})) is uvloop.new_event_loop
    assert loop_factory(load_settings(env={"CDP_EVENT_LOOP": "asyncio"})) is None
    with pytest.raises(SettingsError, match="event-loop: 'trio' is not one of"):
        load_settings(env={"CDP_EVENT_LOOP": "trio"})
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory(load_settings(env={})) is None
    with pytest.raises(SettingsError, match="event-loop: uvloop is not installed"):
        loop_factory(load_settings(env={"CDP_EVENT_LOOP": "uvloop"}))


def test_apply_protocol_is_auto_unless_batch_or_profile(tmp_path):
    assert Settings().apply_protocol == "auto"
    assert load_settings(env={"CDP_APPLY_PROTOCOL": "profile"}).apply_protocol == "profile"
    path = write(tmp_path, 'apply-protocol = "batch"\n')
    assert load_settings(path, env={}).apply_protocol == "batch"
    with pytest.raises(SettingsError, match="apply-protocol"):
        load_settings(env={"CDP_APPLY_PROTOCOL": "cluster"})
