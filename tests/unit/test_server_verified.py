"""VerifiedFiles: keys of verified block files, and the bounded bytes kept for small ones."""

from __future__ import annotations

from keepstore.server.verified import FileKey, VerifiedFiles


def _key(n: int) -> FileKey:
    return (1, n, 4096, 10, 20)


def test_kept_bytes_are_served_only_under_the_key_they_were_read_with() -> None:
    files = VerifiedFiles()
    files.add("/v/a", _key(1))
    files.keep("/v/a", _key(1), b"a" * 4096)
    assert files.kept("/v/a", _key(1)) == b"a" * 4096
    assert files.kept("/v/a", (1, 1, 4096, 10, 21)) is None  # the ctime moved: changed since
    assert files.kept("/v/b", _key(1)) is None
    assert (files.hits, files.kept_hits) == (1, 1)


def test_bytes_of_a_file_not_verified_under_that_key_are_not_kept() -> None:
    files = VerifiedFiles()
    files.keep("/v/a", _key(1), b"x")  # never verified
    files.add("/v/b", _key(2))
    files.keep("/v/b", _key(3), b"y")  # verified under another key
    assert files.kept("/v/a", _key(1)) is None and files.kept("/v/b", _key(3)) is None


def test_forgetting_a_file_drops_its_kept_bytes_too() -> None:
    files = VerifiedFiles()
    files.add("/v/a", _key(1))
    files.keep("/v/a", _key(1), b"a")
    files.forget("/v/a")
    files.add("/v/a", _key(1))  # verified again under the same key: its bytes must be read again
    assert files.kept("/v/a", _key(1)) is None


def test_kept_bytes_stay_within_the_budget_dropping_the_least_recently_served() -> None:
    files = VerifiedFiles(kept_bytes=10_000)
    for n in range(3):
        files.add(f"/v/{n}", _key(n))
    files.keep("/v/0", _key(0), bytes(4096))
    files.keep("/v/1", _key(1), bytes(4096))
    assert files.kept("/v/0", _key(0)) is not None  # served: now the most recent
    files.keep("/v/2", _key(2), bytes(4096))  # 12 KiB > 10,000 bytes: one must go
    assert files.kept("/v/1", _key(1)) is None
    assert files.kept("/v/0", _key(0)) is not None and files.kept("/v/2", _key(2)) is not None
    files.keep("/v/0", _key(0), bytes(20_000))  # bigger than the whole budget: not kept, old one stays
    assert files.kept("/v/0", _key(0)) == bytes(4096)


def test_no_budget_keeps_nothing() -> None:
    files = VerifiedFiles(kept_bytes=0)
    files.add("/v/a", _key(1))
    files.keep("/v/a", _key(1), b"a")
    assert files.kept("/v/a", _key(1)) is None
