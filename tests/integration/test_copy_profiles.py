"""keep copy --to NAME: the destination named by a profile of the config file, over real keep serve clusters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from keepstore import KeepClient, LocalStore
from keepstore.cli import main
from keepstore.datasets import DatasetWriter, Manifest, open_dataset
from keepstore.errors import ConfigError, KeepError
from keepstore.profiles import Profile, load_profiles, profile
from keepstore.testing import KeepCluster

FILES = {"a.txt": b"alpha " * 2000, "sub/b.bin": bytes(range(256)) * 40}
PROFILE_TOKEN = "profile-token-0123456789abcdef"  # the archive cluster's token, only in the token file
SIGNING_KEY = "k" * 32


def write(store: LocalStore):
    writer = DatasetWriter(store, block_size=4096)
    for name, data in FILES.items():
        writer.add_bytes(name, data)
    return writer.finish()


def config(text: str) -> Path:
    """Write the default config file ($XDG_CONFIG_HOME/keepstore/config.yml, set by conftest)."""
    import os

    path = Path(os.environ["XDG_CONFIG_HOME"]) / "keepstore" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def local(tmp_path: Path, monkeypatch) -> LocalStore:
    store = LocalStore(tmp_path / "local", fsync=False)
    monkeypatch.setenv("KEEP_LOCAL_STORE", str(store.root))
    return store


@pytest.fixture
def archive(tmp_path: Path):
    """Two servers that sign for the caller's token and refuse unsigned reads."""
    with KeepCluster(2, tmp_path / "archive", token=PROFILE_TOKEN, signing_key=SIGNING_KEY,
                     require_signatures=True) as cluster:
        yield cluster


def test_copy_to_a_profile_naming_a_two_server_cluster_reads_back_by_the_printed_locator(
        local, archive, tmp_path, capsys):
    source = write(local)
    token_file = tmp_path / "archive.token"
    token_file.write_text(PROFILE_TOKEN + "\n")
    config(f"profiles:\n  archive:\n    services: [{archive.urls[0]}, {archive.urls[1]}]\n"
           f"    token_file: {token_file}\n    copies: 2\n")

    code, out, err = run(capsys, "copy", source.locator, "--to", "archive", "--no-progress")

    assert code == 0, err
    locator = out.strip()
    assert "+A" in locator  # signed by the archive for the token file's token
    blocks = [b for b in Manifest.parse(local.get(source.locator)).blocks() if b.size]
    assert f"sent {len(blocks)} of {len(blocks)} blocks" in err
    with KeepClient(services=archive.urls, token=PROFILE_TOKEN, copies=2) as kc:
        reader = open_dataset(kc, locator)
        assert {name: reader.read_bytes(name) for name in FILES} == FILES
        assert Manifest.parse(kc.get(locator)).portable_data_hash() == source.portable_data_hash
        for block in Manifest.parse(kc.get(locator)).blocks():
            assert len(archive.holders(block)) == 2  # the profile's copies: 2
    with KeepClient(services=archive.urls, token="some-other-token-0123", retries=0) as other, \
            pytest.raises(KeepError):
        other.get(locator)  # the signature is the profile token's: the token file was what was sent


def test_copies_and_to_token_file_on_the_command_line_beat_the_profile(local, archive, tmp_path, capsys):
    source = write(local)
    token_file = tmp_path / "given.token"
    token_file.write_text(PROFILE_TOKEN)
    config(f"profiles:\n  archive:\n    services: {archive.services}\n    copies: 2\n")  # no token in it

    code, out, err = run(capsys, "copy", source.locator, "--to", "archive", "--copies", "1",
                         "--to-token-file", str(token_file), "--json")

    assert code == 0, err
    locator = json.loads(out)["locator"]
    with KeepClient(services=archive.urls, token=PROFILE_TOKEN, copies=1) as kc:
        assert open_dataset(kc, locator).read_bytes("a.txt") == FILES["a.txt"]
        assert {len(archive.holders(b)) for b in Manifest.parse(kc.get(locator)).blocks()} == {1}


def test_a_local_store_profile_receives_the_dataset(local, tmp_path, capsys):
    source = write(local)
    scratch = tmp_path / "scratch-blocks"
    config(f"copies: 1\nprofiles:\n  scratch:\n    local_store: {scratch}\n")

    code, out, err = run(capsys, "copy", source.locator, "--to", "scratch", "--json")

    assert code == 0, err
    report = json.loads(out)
    dest = LocalStore(scratch)
    assert report["sent"] == report["blocks"] > 0
    reader = open_dataset(dest, report["locator"])
    assert {name: reader.read_bytes(name) for name in FILES} == FILES
    code, out, err = run(capsys, "copy", source.locator, "--to", "scratch", "--json")
    assert code == 0 and json.loads(out)["sent"] == 0  # a re-run sends nothing
    (tmp_path / "t").write_text(PROFILE_TOKEN)
    code, out, err = run(capsys, "copy", source.locator, "--to", "scratch", "--to-token-file", str(tmp_path / "t"))
    assert code == 1 and "profile 'scratch': a local_store profile takes no token" in err


def test_an_unknown_profile_lists_the_known_ones_and_sends_nothing(local, tmp_path, capsys):
    source = write(local)
    path = config(f"profiles:\n  scratch:\n    local_store: {tmp_path / 's'}\n  archive:\n"
                  "    services: http://127.0.0.1:25107\n")

    code, out, err = run(capsys, "copy", source.locator, "--to", "archiv")

    assert code == 1 and out == ""
    assert f"no profile 'archiv' in config file {path} (known: archive, scratch)" in err
    assert not (tmp_path / "s").exists()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md").read_text()
    shown = "keep: error: no profile 'archiv' in config file /home/ada/.config/keepstore/config.yml"
    assert shown + " (known: archive, scratch)\n" in docs  # the documented line is the real one
    assert err == shown.replace("/home/ada/.config/keepstore/config.yml", str(path)) + " (known: archive, scratch)\n"


def test_no_config_file_or_no_profiles_says_so(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"no profile 'x': config file .*config.yml does not exist"):
        profile("x", env)
    (tmp_path / "keepstore").mkdir()
    (tmp_path / "keepstore" / "config.yml").write_text("copies: 2\n")
    with pytest.raises(ConfigError, match=r"no profile 'x' in config file .* \(it has no profiles: mapping\)"):
        profile("x", env)
    assert dict(load_profiles(env)) == {}


def test_a_bad_profile_key_names_the_file_line_and_key(local, tmp_path, capsys):
    source = write(local)
    path = config("copies: 2\nprofiles:\n  archive:\n    services: [http://127.0.0.1:25107]\n"
                  "    copeis: 2\n")

    code, out, err = run(capsys, "copy", source.locator, "--to", "archive")

    assert code == 1 and out == ""
    assert (f"config file {path} line 5, profile 'archive', key 'copeis': unknown profile setting "
            "(known: copies, local_store, services, token, token_file)") in err


@pytest.mark.parametrize(("body", "line", "message"), [
    ("    services: [ftp://x]\n", 4, r"profile 'p', key 'services': 'ftp://x' is not an http:// or https:// service URL"),
    ("    local_store: /srv\n    copies: 2\n", 3, r"profile 'p': a local_store profile is one copy"),
    ("    services: http://127.0.0.1:1\n    copies: 0\n", 5, r"profile 'p', key 'copies': expected a positive integer"),
    ("    copies: 2\n", 3, r"profile 'p': set one of services .* or local_store"),
    ("    services: http://127.0.0.1:1\n    token: abcdefgh-token\n    token_file: /t\n", 3,
     r"profile 'p': set token or token_file, not both"),
])
def test_invalid_profiles_are_config_errors_naming_the_line(tmp_path, body, line, message):
    path = tmp_path / "config.yml"
    path.write_text("copies: 2\nprofiles:\n  p:\n" + body)
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))} line {line}, {message}"):
        load_profiles({}, path)


def test_a_profiles_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("copies: 2\nprofiles: [archive]\n")
    with pytest.raises(ConfigError, match=r"line 2, key 'profiles': expected a mapping of profile names"):
        load_profiles({}, path)
    path.write_text("profiles:\n  archive: http://127.0.0.1:25107\n")
    with pytest.raises(ConfigError, match=r"line 2, profile 'archive': expected a mapping of copies"):
        load_profiles({}, path)


def test_a_token_never_appears_in_errors_or_reprs(tmp_path, capsys, local):
    secret = "v2/zzzzz-gj3su-000000000000000/verysecretprofiletoken"
    path = tmp_path / "config.yml"
    path.write_text(f"profiles:\n  a:\n    services: [http://127.0.0.1:1]\n    token: {secret}\n"
                    f"  b:\n    services: {secret}\n")  # the token pasted into the wrong setting
    with pytest.raises(ConfigError) as caught:
        load_profiles({}, path)
    assert "line 6, profile 'b', key 'services'" in str(caught.value)
    assert "verysecret" not in str(caught.value) and caught.value.__cause__ is None

    path.write_text(f"profiles:\n  a:\n    services: [http://127.0.0.1:1]\n    token: {secret}\n")
    found = load_profiles({}, path)["a"]
    assert found.token == secret and "verysecret" not in repr(found)
    token_file = tmp_path / "short.token"
    token_file.write_text("short\n")
    bad = Profile("c", f"config file {path} line 9, profile 'c'", services=("http://127.0.0.1:1",),
                  token_file=str(token_file))
    with pytest.raises(ConfigError, match=r"line 9, profile 'c', key 'token_file': the token file .* too short"):
        bad.open()
    with pytest.raises(ConfigError, match=r"key 'token_file': cannot read the token file .*missing.token"):
        Profile("c", "config file x line 9, profile 'c'", services=("http://127.0.0.1:1",),
                token_file=str(tmp_path / "missing.token")).open()


def test_settings_accept_a_file_with_profiles(tmp_path):
    from keepstore import Settings

    path = tmp_path / "config.yml"
    path.write_text("copies: 3\nprofiles:\n  s:\n    local_store: /srv/s\n")
    assert Settings.from_env({}, path).copies == 3  # profiles: is not an unknown setting
    path.write_text("copies: 3\nprofile: {}\n")
    with pytest.raises(ConfigError, match=r"key 'profile': unknown setting \(known: .*profiles"):
        Settings.from_env({}, path)


def test_to_is_exclusive_with_the_other_destinations(local, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["copy", "x", "--to", "a", "--to-local", "/tmp/nowhere"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_configuration_md_profiles_example_is_a_valid_profiles_section(tmp_path):
    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    section = docs.read_text().split("## Profiles", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "config.yml"
    path.write_text(example.group(1))
    found = load_profiles({}, path)
    assert set(found) == {"archive", "scratch"}
    assert found["archive"].copies == 2 and found["archive"].token_file == "/etc/keep/archive.token"
    assert found["scratch"].local_store == "/srv/scratch-blocks"


def test_relative_profile_paths_are_beside_the_config_file_whatever_the_working_directory(
        local, archive, tmp_path, capsys, monkeypatch):
    source = write(local)
    path = config(f"profiles:\n  archive:\n    services: [{archive.urls[0]}, {archive.urls[1]}]\n"
                  "    token_file: archive.token\n    copies: 2\n  scratch:\n    local_store: scratch-blocks\n")
    (path.parent / "archive.token").write_text(PROFILE_TOKEN + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "archive.token").write_text("a-wrong-token-in-the-working-directory\n")
    monkeypatch.chdir(elsewhere)

    assert profile("scratch").local_store == str(path.parent / "scratch-blocks")
    code, out, err = run(capsys, "copy", source.locator, "--to", "archive", "--no-progress")
    assert code == 0, err  # the token beside the config file was sent, not the working directory's
    code, out, err = run(capsys, "copy", source.locator, "--to", "scratch", "--no-progress")
    assert code == 0, err
    copied = LocalStore(path.parent / "scratch-blocks")
    assert Manifest.parse(copied.get(out.strip())).portable_data_hash() == source.portable_data_hash
    assert not (elsewhere / "scratch-blocks").exists()
