"""Configuration: Timeout and Retry policies, and Settings from arguments, environment and file."""

from __future__ import annotations

import dataclasses
import math
import pickle
import traceback
from pathlib import Path

import pytest

from keepstore.config import Retry, Settings, Timeout, default_config_path
from keepstore.errors import ConfigError, KeepError
from keepstore.settings import Origin, Source

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
PLAIN_TOKEN = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"


# -- Timeout -------------------------------------------------------------------------------------


def test_timeout_defaults_match_arvados() -> None:
    t = Timeout()
    assert (t.connect, t.read, t.min_bandwidth) == (2.0, 256.0, 32768)


@pytest.mark.parametrize(
    "kwargs",
    [dict(connect=0), dict(connect=-1), dict(read=0), dict(connect=math.nan), dict(read=math.inf),
     dict(connect="2"), dict(connect=True), dict(min_bandwidth=0), dict(min_bandwidth=1.5),
     dict(max_connect=0)],
)
def test_timeout_rejects_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        Timeout(**kwargs)
    assert isinstance(info.value, ValueError)
    assert next(iter(kwargs)) in str(info.value)


def test_timeout_from_value_accepts_numbers_tuples_and_timeouts() -> None:
    assert Timeout.from_value(None) == Timeout()
    assert Timeout.from_value(5) == Timeout(connect=5.0, read=5.0)
    assert Timeout.from_value((3, 30, 1000)) == Timeout(connect=3, read=30, min_bandwidth=1000)
    assert Timeout.from_value((3,)) == Timeout(connect=3)
    t = Timeout(connect=1)
    assert Timeout.from_value(t) is t
    for bad in ("5", (1, 2, 3, 4), (), True):
        with pytest.raises(ConfigError):
            Timeout.from_value(bad)  # type: ignore[arg-type]


def test_timeout_connect_doubles_each_round_up_to_the_cap() -> None:
    t = Timeout(connect=2, max_connect=20)
    assert [t.for_round(n).connect for n in range(6)] == [2, 4, 8, 16, 20, 20]
    assert t.for_round(3).read == t.read


def test_timeout_is_immutable_and_prints_its_limits() -> None:
    t = Timeout()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.connect = 5  # type: ignore[misc]
    assert str(t) == "connect=2s read=256s min_bandwidth=32768B/s"


# -- Retry ---------------------------------------------------------------------------------------


def test_increment_returns_a_new_policy_and_leaves_the_old_one() -> None:
    r0 = Retry(total=3)
    r1 = r0.increment(OSError("x"))
    assert (r0.attempt, r1.attempt, r1.remaining) == (0, 1, 2)


def test_increment_raises_the_passed_error_once_exhausted() -> None:
    error = ConnectionError("service down")
    retry = Retry(total=2)
    retry = retry.increment(error).increment(error)
    with pytest.raises(ConnectionError) as info:
        retry.increment(error)
    assert info.value is error


def test_zero_retries_raises_at_the_first_failure() -> None:
    with pytest.raises(TimeoutError):
        Retry(total=0).increment(TimeoutError("slow"))
    with pytest.raises(KeepError, match="retries"):
        Retry(total=0).increment()


def test_backoff_is_zero_before_the_first_retry() -> None:
    assert Retry().backoff(rng=lambda lo, hi: hi) == 0.0


def test_backoff_is_full_jitter_between_zero_and_a_doubling_ceiling() -> None:
    calls: list[tuple[float, float]] = []

    def rng(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return hi

    retry = Retry(total=20)
    waits = []
    for _ in range(10):
        retry = retry.increment(OSError())
        waits.append(retry.backoff(rng=rng))
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert all(lo == 0.0 for lo, _ in calls)
    assert retry.backoff(rng=lambda lo, hi: lo) == 0.0


def test_first_wait_is_at_most_half_a_second_and_every_wait_at_most_thirty() -> None:
    first = Retry().increment(OSError())
    assert all(0.0 <= first.backoff() <= 0.5 for _ in range(200))
    for attempt in (1, 5, 10, 100, 5000):
        r = Retry(total=10_000, attempt=attempt)
        assert 0.0 <= r.backoff() <= 30.0
        assert r.backoff(rng=lambda lo, hi: hi) <= 30.0


def test_retry_after_is_honoured_and_capped() -> None:
    retry = Retry().increment(OSError(), retry_after=5)
    assert retry.backoff(rng=lambda lo, hi: 0.0) == 5
    assert Retry().increment(OSError(), retry_after=3600).backoff(rng=lambda lo, hi: 0.0) == 30.0
    assert Retry().increment(OSError(), retry_after=0.1).backoff(rng=lambda lo, hi: hi) == 0.5
    # Retry-After is per response: the next round without one forgets it.
    assert retry.increment(OSError()).backoff(rng=lambda lo, hi: 0.0) == 0.0


def test_sleep_uses_the_injected_sleeper() -> None:
    slept: list[float] = []
    retry = Retry().increment(OSError(), retry_after=2)
    waited = retry.sleep(slept.append)
    assert slept == [waited] and 2 <= waited <= 30
    assert Retry().sleep(slept.append) == 0.0 and len(slept) == 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(total=-1), dict(total=1.5), dict(total=True), dict(backoff_initial=-1),
     dict(backoff_initial=60, backoff_max=30), dict(backoff_max="30"), dict(backoff_initial=math.nan)],
)
def test_retry_rejects_invalid_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Retry(**kwargs)


def test_retry_from_value() -> None:
    assert Retry.from_value(None) == Retry()
    assert Retry.from_value(3).total == 3
    r = Retry(total=1)
    assert Retry.from_value(r) is r
    with pytest.raises(ConfigError):
        Retry.from_value("3")  # type: ignore[arg-type]


# -- Settings ------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def write_config(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "keepstore" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_give_a_local_store_under_xdg_data_home(env: dict[str, str]) -> None:
    s = Settings.from_env(env)
    assert s.mode == "local"
    assert s.store_path == str(Path(env["XDG_DATA_HOME"]) / "keepstore" / "blocks")
    assert (s.services, s.token, s.copies, s.retries, s.timeout) == ((), None, 2, 10, Timeout())
    assert s.config_path is None and dict(s.sources) == {}


def test_data_home_falls_back_to_home(env: dict[str, str]) -> None:
    del env["XDG_DATA_HOME"]
    assert Settings.from_env(env).store_path == str(Path(env["HOME"]) / ".local/share/keepstore/blocks")


def test_config_path_is_under_xdg_config_home(env: dict[str, str]) -> None:
    assert default_config_path(env) == Path(env["XDG_CONFIG_HOME"]) / "keepstore" / "config.yml"
    del env["XDG_CONFIG_HOME"]
    assert default_config_path(env) == Path(env["HOME"]) / ".config" / "keepstore" / "config.yml"


@pytest.mark.parametrize(
    "name, value, field, expected",
    [
        ("KEEP_SERVICES", "http://127.0.0.1:1 http://127.0.0.1:2/", "services",
         ("http://127.0.0.1:1", "http://127.0.0.1:2/")),
        ("ARVADOS_KEEP_SERVICES", "http://127.0.0.1:3", "services", ("http://127.0.0.1:3",)),
        ("ARVADOS_KEEP_PROXY", "https://127.0.0.1:4/", "services", ("https://127.0.0.1:4/",)),
        ("KEEP_TOKEN", TOKEN, "token", TOKEN),
        ("ARVADOS_API_TOKEN", TOKEN, "token", TOKEN),
        ("KEEP_LOCAL_STORE", "/srv/blocks", "local_store", "/srv/blocks"),
        ("KEEP_CACHE_DIR", "/srv/cache", "cache_dir", "/srv/cache"),
        ("ARVADOS_API_HOST", "zzzzz.example.com", "api_host", "zzzzz.example.com"),
        ("ARVADOS_API_HOST_INSECURE", "true", "insecure", True),
        ("ARVADOS_API_HOST_INSECURE", "0", "insecure", False),
    ],
)
def test_every_environment_name_is_read(env: dict[str, str], name: str, value: str, field: str, expected: object) -> None:
    env[name] = value
    s = Settings.from_env(env)
    assert getattr(s, field) == expected
    assert str(s.sources[field]) == f"environment {name}"
    assert s.sources[field] == Origin(Source.ENVIRONMENT, name)


def test_arvados_keep_proxy_marks_the_services_as_a_proxy(env: dict[str, str]) -> None:
    env["ARVADOS_KEEP_PROXY"] = "https://127.0.0.1:4/"
    assert Settings.from_env(env).proxy is True
    assert Settings.from_env({**env, "KEEP_SERVICES": "http://127.0.0.1:1"}).services == ("http://127.0.0.1:1",)


def test_keep_names_beat_arvados_names(env: dict[str, str]) -> None:
    env.update(KEEP_TOKEN="keep-token", ARVADOS_API_TOKEN="arvados-token",
               KEEP_SERVICES="http://127.0.0.1:1", ARVADOS_KEEP_SERVICES="http://127.0.0.1:2")
    s = Settings.from_env(env)
    assert (s.token, s.services) == ("keep-token", ("http://127.0.0.1:1",))


def test_empty_environment_values_are_ignored(env: dict[str, str]) -> None:
    env.update(KEEP_SERVICES="", KEEP_TOKEN=" ", KEEP_LOCAL_STORE="")
    s = Settings.from_env(env)
    assert (s.services, s.token, s.local_store, s.mode) == ((), None, None, "local")


def test_mode_follows_what_is_configured(env: dict[str, str]) -> None:
    assert Settings.from_env({**env, "ARVADOS_API_HOST": "h.example"}).mode == "api"
    assert Settings.from_env({**env, "ARVADOS_API_HOST": "h.example", "KEEP_SERVICES": "http://127.0.0.1:1"}).mode == "services"


def test_config_file_values_are_read(env: dict[str, str]) -> None:
    path = write_config(env, f"""\
services:
  - http://127.0.0.1:25107
  - http://127.0.0.1:25108
token: {TOKEN}
local_store: /srv/blocks
cache_dir: /srv/cache
cache_max_bytes: 1000
copies: 3
retries: 4
threads: 2
timeout: {{connect: 1, read: 60, min_bandwidth: 1024}}
ca_file: /etc/ssl/ca.pem
insecure: true
api_host: zzzzz.example.com
""")
    s = Settings.from_env(env)
    assert s.services == ("http://127.0.0.1:25107", "http://127.0.0.1:25108")
    assert (s.token, s.local_store, s.cache_dir, s.cache_max_bytes) == (TOKEN, "/srv/blocks", "/srv/cache", 1000)
    assert (s.copies, s.retries, s.threads, s.ca_file, s.insecure) == (3, 4, 2, "/etc/ssl/ca.pem", True)
    assert s.timeout == Timeout(connect=1, read=60, min_bandwidth=1024)
    assert s.api_host == "zzzzz.example.com"
    assert s.config_path == str(path)
    assert str(s.sources["copies"]) == f"file {path}"
    assert s.sources["copies"].source is Source.FILE


def test_services_in_the_file_may_be_one_string(env: dict[str, str]) -> None:
    write_config(env, "services: http://127.0.0.1:1 http://127.0.0.1:2\n")
    assert Settings.from_env(env).services == ("http://127.0.0.1:1", "http://127.0.0.1:2")


def test_empty_config_file_is_fine(env: dict[str, str]) -> None:
    write_config(env, "# nothing yet\n")
    assert Settings.from_env(env).mode == "local"


def test_precedence_is_arguments_then_environment_then_file_then_defaults(env: dict[str, str]) -> None:
    write_config(env, "token: file-token\nlocal_store: /file\ncache_dir: /file-cache\ncopies: 3\n"
                      "services: [http://127.0.0.1:3]\n")
    env.update(KEEP_TOKEN="env-token", KEEP_LOCAL_STORE="/env", KEEP_SERVICES="http://127.0.0.1:2")
    s = Settings.from_env(env, token="arg-token", services="http://127.0.0.1:1")
    assert (s.token, str(s.sources["token"])) == ("arg-token", "argument")
    assert s.services == ("http://127.0.0.1:1",)
    assert (s.local_store, str(s.sources["local_store"])) == ("/env", "environment KEEP_LOCAL_STORE")
    assert s.cache_dir == "/file-cache" and s.copies == 3
    assert s.retries == 10  # default
    assert Settings.from_env(env).services == ("http://127.0.0.1:2",)


def test_arvados_keep_proxy_beats_services_from_the_file(env: dict[str, str]) -> None:
    write_config(env, "services: [http://127.0.0.1:3]\n")
    env["ARVADOS_KEEP_PROXY"] = "http://127.0.0.1:9"
    assert Settings.from_env(env).services == ("http://127.0.0.1:9",)


def test_none_arguments_do_not_override(env: dict[str, str]) -> None:
    env["KEEP_TOKEN"] = "env-token"
    assert Settings.from_env(env, token=None).token == "env-token"


def test_arguments_are_converted(env: dict[str, str]) -> None:
    s = Settings.from_env(env, services="http://127.0.0.1:1 http://127.0.0.1:2", timeout=7)
    assert s.services == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert s.timeout == Timeout(connect=7, read=7)


def test_unknown_argument_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="tokne"):
        Settings.from_env(env, tokne="x")


def test_explicit_config_path_and_keep_config(env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "other.yml"
    other.write_text("copies: 5\n")
    assert Settings.from_env(env, config_path=other).copies == 5
    assert Settings.from_env({**env, "KEEP_CONFIG": str(other)}).copies == 5
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_env(env, config_path=tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match=r"missing\.yml"):
        Settings.from_env({**env, "KEEP_CONFIG": str(tmp_path / "missing.yml")})


@pytest.mark.parametrize("name, value", [("KEEP_SERVICES", "127.0.0.1:25107"), ("KEEP_SERVICES", "ftp://h/"),
                                         ("ARVADOS_KEEP_PROXY", "proxy"), ("ARVADOS_API_HOST_INSECURE", "maybe")])
def test_invalid_environment_values_are_config_errors_naming_the_variable(env: dict[str, str], name: str, value: str) -> None:
    env[name] = value
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("copies: 2\nretries: 3\ncopeis: 4\n", 3, "copeis"),  # unknown key
        ("copies: 2\nretries: many\n", 2, "retries"),  # wrong type
        ("copies: 0\n", 1, "copies"),
        ("insecure: 'yes'\n", 1, "insecure"),
        ("services: [http://127.0.0.1:1, 25107]\n", 1, "services"),
        ("services: [127.0.0.1:25107]\n", 1, "services"),
        ("\n\ntimeout: {connect: -1}\n", 3, "timeout"),
        ("timeout: {conect: 1}\n", 1, "timeout"),
        ("timeout: 5\n", 1, "timeout"),
    ],
)
def test_invalid_file_names_the_file_line_and_key(env: dict[str, str], text: str, line: int, key: str) -> None:
    path = write_config(env, text)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}" in message
    assert repr(key) in message


@pytest.mark.parametrize(
    "text, line",
    [("copies: 2\nretries: [1, 2\n", 3), ("copies: 2\n  retries: 3\n", 2), ("copies: 1\ncopies: 2\n", 2),
     ("copies: 'x\n", 2), ("\tcopies: 2\n", 1)],
)
def test_bad_yaml_names_the_file_and_line(env: dict[str, str], text: str, line: int) -> None:
    path = write_config(env, text)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(path) in str(info.value)
    assert f"line {line}" in str(info.value)
    assert "invalid YAML" in str(info.value)


def test_top_level_must_be_a_mapping(env: dict[str, str]) -> None:
    path = write_config(env, "- copies\n- 2\n")
    with pytest.raises(ConfigError, match="mapping") as info:
        Settings.from_env(env)
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_config_error(env: dict[str, str]) -> None:
    path = write_config(env, "")
    path.write_bytes(b"copies: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env(env)


# -- the token stays secret ----------------------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN, PLAIN_TOKEN])
def test_token_never_appears_in_repr_or_str_of_settings(env: dict[str, str], token: str) -> None:
    env["KEEP_TOKEN"] = token
    s = Settings.from_env(env)
    assert s.token == token
    for text in (repr(s), str(s), repr(s.sources), str(pickle.loads(pickle.dumps(s)))):
        assert token not in text
    assert "token='***'" in repr(s)


@pytest.mark.parametrize(
    "text",
    [
        "token: [{t}]\n",  # wrong type around the token
        "token: {t}\ncopies: [1]\n",  # an error elsewhere in a file that holds the token
        "token: {t}\nbogus: {t}\n",  # the token under an unknown key
        "token: {t}: oops\n",  # bad YAML on the token's line
        "token: '{t}\n",  # unterminated quote around the token
        "token: {t}\nservices: [{t}]\n",  # the token where a URL should be
        "services: [{t}]\ntoken: {t}\n",
        "token: {{a: {t}}}\n",
    ],
)
@pytest.mark.parametrize("token", [TOKEN, PLAIN_TOKEN])
def test_token_never_appears_in_a_config_error(env: dict[str, str], text: str, token: str) -> None:
    write_config(env, text.format(t=token))
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert token not in str(info.value) and token not in repr(info.value)
    assert token not in "".join(traceback.format_exception(info.value))
    secret = token.rsplit("/", 1)[-1]
    assert secret not in str(info.value)


def test_default_cache_dir_is_under_xdg_cache_home(env: dict[str, str]) -> None:
    s = Settings.from_env(env)
    assert s.default_cache_dir(env) == str(Path(env["XDG_CACHE_HOME"]) / "keepstore" / "blocks")
    assert Settings.from_env({**env, "KEEP_CACHE_DIR": "/c"}).default_cache_dir(env) == "/c"


@pytest.mark.parametrize("token", [TOKEN, PLAIN_TOKEN])
@pytest.mark.parametrize("token_name", ["KEEP_TOKEN", "ARVADOS_API_TOKEN", "argument"])
def test_token_pasted_into_the_services_variable_is_not_quoted(env: dict[str, str], token: str, token_name: str) -> None:
    env["KEEP_SERVICES"] = token
    kwargs = {}
    if token_name == "argument":
        kwargs["token"] = token
    else:
        env[token_name] = token
    with pytest.raises(ConfigError, match="KEEP_SERVICES") as info:
        Settings.from_env(env, **kwargs)
    assert token not in str(info.value)
    # Nor in a traceback: no error shown as a cause or context quotes it either.
    assert token not in "".join(traceback.format_exception(info.value))


def test_the_examples_in_docs_configuration_md_run() -> None:
    import doctest

    path = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_an_argument_naming_where_blocks_live_beats_a_service_list_from_the_environment(tmp_path) -> None:
    """Regression: from_env(api_host=...) was ignored when KEEP_SERVICES was set."""
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "none"),
           "KEEP_SERVICES": "http://127.0.0.1:25107", "ARVADOS_API_HOST": "zzzzz.example.com"}
    assert Settings.from_env(env).mode == "services"
    by_api = Settings.from_env(env, api_host="yyyyy.example.com")
    assert by_api.mode == "api" and by_api.api_host == "yyyyy.example.com"
    local = Settings.from_env(env, local_store=str(tmp_path / "blocks"))
    assert local.mode == "local" and local.store_path == str(tmp_path / "blocks")
    both = Settings.from_env(env, api_host="yyyyy.example.com", services="http://127.0.0.1:1")
    assert both.mode == "services"
