"""Settings values: unreadable YAML scalars, plain-word type errors, short tokens, impossible URLs, Source/Mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepstore.errors import ConfigError
from keepstore.settings import MIN_TOKEN_LENGTH, Mode, Origin, Settings, Source, service_urls

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"


def config_env(tmp_path: Path, text: str) -> tuple[dict[str, str], Path]:
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return {"HOME": str(tmp_path), "KEEP_CONFIG": str(path)}, path


@pytest.mark.parametrize("value", ["-_", "+_", "0x_", "-0x_", "0o_", "+0b_"])
def test_an_unreadable_number_names_the_file_line_and_key(tmp_path: Path, value: str) -> None:
    """Regression (issue 15 item 8): ruamel.yaml raised a raw IndexError for `copies: -_`."""
    env, path = config_env(tmp_path, f"token: {TOKEN}\nretries: 3\ncopies: {value}\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "'copies'" in message
    assert "secret123" not in message and info.value.__cause__ is None


def test_keep_ls_with_an_unreadable_value_reports_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    env, path = config_env(tmp_path, "copies: -_\n")
    run = subprocess.run([sys.executable, "-m", "keepstore", "ls", "acbd18db4cc2f85cedef654fccc4a4d8+3"], env={**env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "IndexError" not in run.stderr
    assert str(path) in run.stderr and "'copies'" in run.stderr


# Scalars built from the characters YAML's resolvers and constructors care about.
yaml_scalars = st.text(alphabet="-+_.:0123456789xobeEinfaINFtruyesnol~!&*%@`'\"[]{},# ", max_size=12)
yaml_keys = st.sampled_from(["copies", "retries", "threads", "cache_max_bytes", "token", "services", "timeout",
                             "insecure", "ca_file", "api_host", "local_store", "cache_dir"])
yaml_tags = st.sampled_from(["", "!!int ", "!!float ", "!!bool ", "!!str ", "!!timestamp ", "!!binary ", "!!null ",
                             "!!set ", "!!omap ", "!!map ", "!!seq ", "!foo "])
yaml_documents = st.lists(st.tuples(yaml_keys, yaml_tags, yaml_scalars), max_size=4).map(
    lambda items: "".join(f"{key}: {tag}{value}\n" for key, tag, value in items))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(text=st.one_of(yaml_documents, st.text(max_size=60)))
def test_the_yaml_loader_raises_only_config_errors(tmp_path: Path, text: str) -> None:
    env, _ = config_env(tmp_path, text)
    try:
        result = Settings.from_env(env)
    except ConfigError as exc:  # anything else (IndexError, KeyError, ...) fails the test
        assert "CommentedSeq" not in str(exc) and "CommentedMap" not in str(exc)
        return
    assert isinstance(result, Settings)


@pytest.mark.parametrize("text, words", [
    ("copies: [1, 2]\n", "got a list"),
    ("retries: {a: 1}\n", "got a mapping"),
    ("token: [a, b]\n", "got a list"),
    ("threads: true\n", "got true (a boolean)"),
    ("timeout: [1]\n", "got a list"),
])
def test_type_errors_use_plain_words(tmp_path: Path, text: str, words: str) -> None:
    env, _ = config_env(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert words in str(info.value)
    assert "Commented" not in str(info.value)


@pytest.mark.parametrize("token", ["t", "x", "abc", "1234567"])
def test_a_token_too_short_to_be_real_is_refused_without_garbling_the_message(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HOME": "/nonexistent", "KEEP_TOKEN": token})
    message = str(info.value)
    assert message.startswith("environment KEEP_TOKEN: the token is too short to be real")
    assert "***" not in message  # nothing in the message was mistaken for the token
    with pytest.raises(ConfigError, match="argument token"):
        Settings.from_env({"HOME": "/nonexistent"}, token=token)
    assert len(token) < MIN_TOKEN_LENGTH


def test_a_short_token_does_not_garble_other_errors() -> None:
    """Regression (issue 22): with KEEP_TOKEN=t the message read "environmen*** KEEP_SERVICES"."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HOME": "/nonexistent", "KEEP_TOKEN": "t", "KEEP_SERVICES": "ftp://h/"})
    assert "environmen***" not in str(info.value)


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:99999", "1-65535"), ("http://127.0.0.1:0/", "port 0"), ("http://h:port/", "1-65535"),
    ("http://:25107/", "no host"), ("https://[::1/", "unbalanced"),
])
def test_service_urls_that_can_never_work_are_config_errors(url: str, why: str) -> None:
    for environ in ({"KEEP_SERVICES": url}, {"ARVADOS_KEEP_PROXY": url}):
        with pytest.raises(ConfigError, match=next(iter(environ))) as info:
            Settings.from_env({"HOME": "/nonexistent", **environ})
        assert why in str(info.value) or "not" in str(info.value)
    with pytest.raises(ConfigError, match="argument services"):
        Settings.from_env({"HOME": "/nonexistent"}, services=[url])


def test_service_urls_is_the_one_normalisation_point() -> None:
    assert service_urls(" http://a:1  https://b/ ", "x") == ("http://a:1", "https://b/")
    assert service_urls(["http://a:1", "http://[::1]:2/"], "x") == ("http://a:1", "http://[::1]:2/")
    with pytest.raises(ConfigError, match="got a mapping"):
        service_urls({"a": 1}, "x")


def test_sources_are_origins_with_a_source_enum(tmp_path: Path) -> None:
    env, path = config_env(tmp_path, "copies: 3\nlocal_store: /f\n")
    s = Settings.from_env({**env, "KEEP_LOCAL_STORE": "/e"}, token=TOKEN)
    assert s.sources["copies"] == Origin(Source.FILE, str(path))
    assert s.sources["local_store"] == Origin(Source.ENVIRONMENT, "KEEP_LOCAL_STORE")
    assert s.sources["token"] == Origin(Source.ARGUMENT) and str(s.sources["token"]) == "argument"
    assert s.mode is Mode.LOCAL and s.mode == "local"
    proxy = Settings.from_env({"HOME": "/nonexistent", "ARVADOS_KEEP_PROXY": "https://p:1/"})
    assert proxy.mode is Mode.SERVICES and proxy.proxy
    assert proxy.sources["services"] == Origin(Source.ENVIRONMENT, "ARVADOS_KEEP_PROXY")


def test_hedging_is_on_by_default_and_set_from_each_layer(tmp_path: Path) -> None:
    base = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "none")}
    assert Settings.from_env(base).hedging is True
    assert Settings.from_env({**base, "KEEP_HEDGING": "off"}).hedging is False
    assert Settings.from_env({**base, "KEEP_HEDGING": "off"}, hedging=True).hedging is True  # argument wins
    env, _ = config_env(tmp_path, "hedging: false\n")
    settings_ = Settings.from_env(env)
    assert settings_.hedging is False and settings_.sources["hedging"].source is Source.FILE
    assert Settings.from_env({**env, "KEEP_HEDGING": "yes"}).hedging is True  # environment beats the file


@pytest.mark.parametrize(("env", "text", "argument", "wanted"), [
    ({"KEEP_HEDGING": "sometimes"}, "", None, "environment KEEP_HEDGING: expected a boolean"),
    ({}, "hedging: 0.5\n", None, "key 'hedging': expected true or false"),
    ({}, "", "no", "argument hedging: expected true or false"),
])
def test_a_hedging_value_that_is_not_a_boolean_is_a_config_error_naming_where(
        tmp_path: Path, env: dict[str, str], text: str, argument: str | None, wanted: str) -> None:
    file_env, _ = config_env(tmp_path, text)
    overrides = {"hedging": argument} if argument is not None else {}
    with pytest.raises(ConfigError, match=wanted):
        Settings.from_env({**file_env, **env}, **overrides)


def test_a_client_from_env_hedges_as_the_setting_says_unless_given_a_policy(tmp_path: Path) -> None:
    from keepstore import KeepClient
    from keepstore.client import HedgePolicy

    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "none"), "KEEP_SERVICES": "http://127.0.0.1:9",
           "KEEP_HEDGING": "0"}
    with KeepClient.from_env(env, cache=False) as kc:
        assert isinstance(kc, KeepClient) and kc.hedge_policy.enabled is False
    with KeepClient.from_env(env, cache=False, hedge=HedgePolicy(floor=0.2, initial=0.3)) as kc:
        assert isinstance(kc, KeepClient) and kc.hedge_policy == HedgePolicy(floor=0.2, initial=0.3)
    with KeepClient.from_env({**env, "KEEP_HEDGING": "1"}, cache=False) as kc:
        assert isinstance(kc, KeepClient) and kc.hedge_policy == HedgePolicy()
