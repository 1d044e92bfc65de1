"""Checkpoint stores: the contract every store keeps, and opening stores by URI.

:class:`CheckpointContract` holds the contract tests; a subclass supplies a
``store_uri`` fixture (a fresh, empty location per test). The file store and an
in-memory ``custom://`` store run them here; the Redis and S3 stores run them in
``tests/integration/test_checkpoint_servers.py`` against real servers.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from schooner.checkpoint import CheckpointStore, FileStore, open_store
from schooner.exceptions import ServeConfigError

OpenStore = Callable[..., CheckpointStore]

#: Keys that would break a naive store: separators, dots, escapes, globs, non-ASCII.
AWKWARD_KEYS = [
    "apps/default/deployments/Model",
    "..",
    ".",
    "../escaped",
    "../../../../tmp/escaped",
    "/absolute",
    "a//b/",
    "%2F",
    "%",
    ":colon:",
    "glob*?[x]\\",
    "with space",
    "naïve-ключ-鍵",
    ".hidden",
    "-",
]


class MemoryStore:
    """A store kept in memory, shared by every instance on the same location
    (the part of the URI after the class path) and namespace, like a server."""

    _data: ClassVar[dict[tuple[str, str], dict[str, bytes]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, location: str, *, namespace: str) -> None:
        self.location = location
        with self._lock:
            self._items = self._data.setdefault((location, namespace), {})

    def get(self, key: str) -> bytes | None:
        _check(key)
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, value: bytes) -> None:
        _check(key)
        if not isinstance(value, bytes):
            raise TypeError("values are bytes")
        with self._lock:
            self._items[key] = value

    def delete(self, key: str) -> None:
        _check(key)
        with self._lock:
            self._items.pop(key, None)

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._items if k.startswith(prefix))

    def close(self) -> None:
        pass


def _check(key: str) -> None:
    if not isinstance(key, str):
        raise TypeError("keys are str")
    if not key:
        raise ValueError("keys are not empty")


class NotAStore:
    """Has some of the methods, not all."""

    def __init__(self, location: str, *, namespace: str) -> None:
        pass

    def get(self, key: str) -> bytes | None:
        return None

    def put(self, key: str, value: bytes) -> None:
        pass


class CheckpointContract:
    """What every :class:`CheckpointStore` must do. Subclasses provide ``store_uri``."""

    @pytest.fixture
    def opened(self, store_uri: str) -> Iterator[OpenStore]:
        """Open ``store_uri`` on a namespace; every store opened is closed afterwards."""
        stores: list[CheckpointStore] = []

        def open_(namespace: str = "schooner") -> CheckpointStore:
            store = open_store(store_uri, namespace=namespace)
            stores.append(store)
            return store

        yield open_
        for store in stores:
            store.close()

    @pytest.fixture
    def store(self, opened: OpenStore) -> CheckpointStore:
        return opened()

    def test_missing_key_is_none(self, store: CheckpointStore) -> None:
        assert store.get("nothing") is None
        assert store.keys() == []

    def test_put_get_overwrite(self, store: CheckpointStore) -> None:
        store.put("k", b"one")
        assert store.get("k") == b"one"
        store.put("k", b"two, longer than one")
        assert store.get("k") == b"two, longer than one"
        store.put("k", b"3")
        assert store.get("k") == b"3"
        assert store.keys() == ["k"]

    def test_binary_and_empty_values(self, store: CheckpointStore) -> None:
        every_byte = bytes(range(256)) * 3
        store.put("binary", every_byte)
        store.put("empty", b"")
        big = os.urandom(1 << 20)
        store.put("big", big)
        assert store.get("binary") == every_byte
        assert store.get("empty") == b""
        assert store.get("big") == big

    def test_delete(self, store: CheckpointStore) -> None:
        store.put("a", b"1")
        store.put("b", b"2")
        store.delete("a")
        assert store.get("a") is None
        assert store.keys() == ["b"]
        store.delete("a")  # already gone: no error
        store.delete("never-was")

    def test_keys_sorted_and_prefix(self, store: CheckpointStore) -> None:
        for key in ["b/2", "a", "b/1", "b", "c/x", "ba"]:
            store.put(key, key.encode())
        assert store.keys() == ["a", "b", "b/1", "b/2", "ba", "c/x"]
        assert store.keys("b") == ["b", "b/1", "b/2", "ba"]
        assert store.keys("b/") == ["b/1", "b/2"]
        assert store.keys("zzz") == []
        assert store.keys("") == store.keys()

    def test_awkward_keys_round_trip(self, store: CheckpointStore) -> None:
        for key in AWKWARD_KEYS:
            store.put(key, key.encode())
        for key in AWKWARD_KEYS:
            assert store.get(key) == key.encode(), key
        assert store.keys() == sorted(AWKWARD_KEYS)
        # Prefixes with glob and escape characters are literal.
        assert store.keys("glob*") == ["glob*?[x]\\"]
        assert store.keys("glob") == ["glob*?[x]\\"]
        assert store.keys("%") == ["%", "%2F"]
        assert store.keys("*") == []
        assert store.keys("..") == ["..", "../../../../tmp/escaped", "../escaped"]
        for key in AWKWARD_KEYS:
            store.delete(key)
        assert store.keys() == []

    def test_bad_keys_and_values(self, store: CheckpointStore) -> None:
        with pytest.raises(ValueError):
            store.put("", b"x")
        with pytest.raises(TypeError):
            store.put("k", "not bytes")  # type: ignore[arg-type]
        assert store.keys() == []

    def test_namespaces_isolate(self, opened: OpenStore) -> None:
        a, a_b, b = opened("a"), opened("a.b"), opened("b")
        a.put("b:x", b"in a")
        a.put("shared", b"a")
        b.put("shared", b"b")
        a_b.put("x", b"in a.b")
        assert a.keys() == ["b:x", "shared"]
        assert b.keys() == ["shared"]
        assert a_b.keys() == ["x"]
        assert (a.get("shared"), b.get("shared")) == (b"a", b"b")
        b.delete("shared")
        assert a.get("shared") == b"a"

    def test_visible_to_a_store_opened_later(self, opened: OpenStore) -> None:
        first = opened()
        first.put("apps/x", b"state")
        first.close()
        second = opened()
        assert second.get("apps/x") == b"state"
        assert second.keys() == ["apps/x"]

    def test_close_twice(self, opened: OpenStore) -> None:
        store = opened()
        store.close()
        store.close()

    def test_readers_never_see_torn_values(self, store: CheckpointStore) -> None:
        values = [bytes([i]) * 200_000 for i in range(1, 4)]
        store.put("k", values[0])
        seen: list[bytes | None] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                seen.append(store.get("k"))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(30):
                store.put("k", values[i % len(values)])
        finally:
            stop.set()
            reader.join(10)
        assert seen
        assert all(value in values for value in seen), "a reader saw a torn value"


class TestFileStore(CheckpointContract):
    @pytest.fixture
    def store_uri(self, tmp_path: Path) -> str:
        return (tmp_path / "checkpoints").as_uri()

    def test_plain_absolute_path(self, tmp_path: Path) -> None:
        store = open_store(str(tmp_path), namespace="ns")
        store.put("k", b"v")
        assert (tmp_path / "ns" / "k").read_bytes() == b"v"

    def test_keys_cannot_leave_the_directory(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        store = open_store(root.as_uri(), namespace="ns")
        for key in AWKWARD_KEYS:
            store.put(key, b"x")
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert len(files) == len(AWKWARD_KEYS)
        assert all(p.parent == root / "ns" for p in files), files
        assert not any(p.name.startswith(".") for p in files)

    def test_failed_put_keeps_the_old_value(
        self, store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store.put("k", b"old")

        def crash(src: object, dst: object) -> None:
            raise OSError("disk on fire")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk on fire"):
            store.put("k", b"new")
        monkeypatch.undo()
        assert store.get("k") == b"old"
        assert store.keys() == ["k"]
        assert isinstance(store, FileStore)
        assert sorted(p.name for p in store.directory.iterdir()) == ["k"]  # no temp file left

    def test_leftover_temp_files_are_not_keys(self, store: CheckpointStore) -> None:
        assert isinstance(store, FileStore)
        (store.directory / ".tmp-abc123").write_bytes(b"half written")
        store.put("k", b"v")
        assert store.keys() == ["k"]

    def test_key_too_long(self, store: CheckpointStore) -> None:
        with pytest.raises(ValueError, match="too long"):
            store.put("x" * 300, b"v")


class TestCustomStore(CheckpointContract):
    @pytest.fixture
    def store_uri(self) -> str:
        return f"custom://test_checkpoint.MemoryStore/{uuid.uuid4()}"

    def test_argument_is_the_rest_of_the_uri(self) -> None:
        store = open_store("custom://test_checkpoint.MemoryStore/host:1/path?q=1")
        assert isinstance(store, MemoryStore)
        assert store.location == "host:1/path?q=1"
        empty = open_store("custom://test_checkpoint.MemoryStore")
        assert isinstance(empty, MemoryStore)
        assert empty.location == ""


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("relative/dir", "neither a URI nor an absolute path"),
        ("", "neither a URI nor an absolute path"),
        ("file://relative/dir", "three slashes"),
        ("s3://", "the bucket is missing"),
        ("s3:///prefix", "the bucket is missing"),
        ("redis:///0", "the host is missing"),
        ("redis://localhost:port/0", "the port is not a number"),
        ("redis://localhost:6379/zero", "the database 'zero' is not a number"),
        ("custom://NoDots/x", "is not a class path"),
        ("custom://", "is not a class path"),
        ("custom://no_such_module_xyz.Store/x", "cannot import module 'no_such_module_xyz'"),
        ("custom://test_checkpoint.NoSuchClass/x", "has no attribute 'NoSuchClass'"),
        ("custom://test_checkpoint.AWKWARD_KEYS/x", "is a list, not a class"),
        ("custom://test_checkpoint.NotAStore/x", "it lacks delete, keys, close"),
    ],
)
def test_uri_errors(uri: str, problem: str) -> None:
    with pytest.raises(ServeConfigError) as info:
        open_store(uri)
    message = str(info.value)
    assert repr(uri) in message
    assert problem in message
    assert "Example of a valid one" in message


def test_file_uri_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ServeConfigError, match=r"cannot use .* as a checkpoint directory"):
        open_store((tmp_path / "f").as_uri())


@pytest.mark.parametrize("namespace", ["", "a/b", "a:b", "..", ".hidden", "sp ace"])
def test_bad_namespaces(tmp_path: Path, namespace: str) -> None:
    with pytest.raises(ServeConfigError, match="namespace"):
        open_store(str(tmp_path), namespace=namespace)


@pytest.mark.parametrize(
    ("uri", "package", "module"),
    [
        ("redis://localhost:6379/0", "redis", "schooner.checkpoint.redis_store"),
        ("s3://bucket/prefix", "boto3", "schooner.checkpoint.s3"),
    ],
)
def test_missing_optional_package(
    monkeypatch: pytest.MonkeyPatch, uri: str, package: str, module: str
) -> None:
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, package, None)  # makes `import <package>` fail
    with pytest.raises(ServeConfigError) as info:
        open_store(uri)
    assert "pip install 'schooner[checkpoint]'" in str(info.value)
    assert repr(package) in str(info.value)


def test_error_in_a_custom_module_is_not_hidden(tmp_path: Path) -> None:
    (tmp_path / "broken_store_mod.py").write_text("import no_such_dependency_xyz\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
            open_store("custom://broken_store_mod.Store/x")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_store_mod", None)
