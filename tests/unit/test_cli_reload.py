"""``schooner run --reload``: which files are watched and which changes are noticed.

Modification times are set with ``os.utime``, so no test waits for the clock.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schooner.cli.reload import changed_files, snapshot

T0_NS = 1_700_000_000_000_000_000


def touch(path: Path, mtime_ns: int = T0_NS, text: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return str(path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in [
        "app.py",
        "serve.yaml",
        "other.yml",
        "data.json",
        "pkg/__init__.py",
        "pkg/sub/model.py",
        "README.md",
        "notes.txt",
        "pkg/model.pyc",
        "pkg/__pycache__/model.cpython-311.py",
        ".git/hooks/pre-commit.py",
        ".venv/lib/site.py",
        "venv/lib/site.py",
        "env/x.py",
        "node_modules/x/index.json",
        "lib/site-packages/dep.py",
        ".hidden/secret.py",
        "pkg/.cache/cached.yaml",
    ]:
        touch(tmp_path / name)
    return tmp_path


def test_snapshot_picks_watched_files_and_skips_environments(project: Path) -> None:
    seen = snapshot([project])
    assert sorted(os.path.relpath(p, project) for p in seen) == [
        "app.py",
        "data.json",
        "other.yml",
        "pkg/__init__.py",
        "pkg/sub/model.py",
        "serve.yaml",
    ]
    assert set(seen.values()) == {T0_NS}


def test_snapshot_of_a_file_root_watches_that_file(tmp_path: Path) -> None:
    config = touch(tmp_path / "serve.yaml", T0_NS + 5)
    odd = touch(tmp_path / "Procfile", T0_NS + 6)  # named explicitly: watched whatever its suffix
    assert snapshot([Path(config), Path(odd)]) == {config: T0_NS + 5, odd: T0_NS + 6}


def test_snapshot_of_several_roots_and_a_missing_one(tmp_path: Path) -> None:
    a = touch(tmp_path / "a" / "one.py")
    b = touch(tmp_path / "b" / "two.py")
    assert snapshot([tmp_path / "a", tmp_path / "b", tmp_path / "missing"]) == {
        a: T0_NS,
        b: T0_NS,
    }


def test_no_change_reports_nothing(project: Path) -> None:
    assert changed_files(snapshot([project]), snapshot([project])) == []


def test_changed_files_reports_added_removed_and_modified(project: Path) -> None:
    before = snapshot([project])
    modified = project / "pkg" / "sub" / "model.py"
    os.utime(modified, ns=(T0_NS + 1_000, T0_NS + 1_000))
    (project / "serve.yaml").unlink()
    added = touch(project / "pkg" / "new.py", T0_NS + 2_000)
    os.utime(project / "README.md", ns=(T0_NS + 3_000, T0_NS + 3_000))  # not watched
    touch(project / ".venv" / "lib" / "new.py", T0_NS + 4_000)  # not watched
    after = snapshot([project])
    assert changed_files(before, after) == sorted(
        [str(modified), str(project / "serve.yaml"), added]
    )


def test_an_older_mtime_counts_as_a_change(tmp_path: Path) -> None:
    path = touch(tmp_path / "app.py", T0_NS)
    before = snapshot([tmp_path])
    os.utime(path, ns=(T0_NS - 1, T0_NS - 1))  # e.g. a file restored from version control
    assert changed_files(before, snapshot([tmp_path])) == [path]


def test_changed_files_works_on_plain_dicts() -> None:
    before = {"a.py": 1.0, "b.py": 2.0, "c.py": 3.0}
    after = {"b.py": 2.0, "c.py": 4.0, "d.py": 5.0}
    assert changed_files(before, after) == ["a.py", "c.py", "d.py"]
