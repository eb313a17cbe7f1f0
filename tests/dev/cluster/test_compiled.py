"""The compiled emulator is used only while its sources are the ones it was built from."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import logging
import sys
from pathlib import Path

import pytest

from nexus_dev.cluster import compiled


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the package's folder: two compiled modules' sources, no stamp yet;
    ``sys.meta_path`` as without a build, restored afterwards."""
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n")
    monkeypatch.setattr(compiled, "HERE", tmp_path)
    monkeypatch.setattr(compiled, "STAMP", tmp_path / "compiled.json")
    monkeypatch.setattr(compiled, "MODULES", ("alpha", "beta"))
    finders = [f for f in sys.meta_path if not isinstance(f, compiled._Sources)]
    monkeypatch.setattr(sys, "meta_path", finders)  # as if this process had found no build
    return tmp_path


def _stamp(folder: Path) -> None:
    digests = {
        name: hashlib.sha256((folder / f"{name}.py").read_bytes()).hexdigest()
        for name in ("alpha", "beta")
    }
    (folder / "compiled.json").write_text(json.dumps(digests))


def _sources_first() -> bool:
    return any(isinstance(finder, compiled._Sources) for finder in sys.meta_path)


def test_nothing_changes_without_a_build(package: Path) -> None:
    compiled.use_sources_if_changed()
    assert not _sources_first()


def test_a_build_of_these_very_sources_is_used(package: Path) -> None:
    _stamp(package)
    compiled.use_sources_if_changed()
    assert not _sources_first()


def test_one_changed_source_sends_every_compiled_module_to_its_source(
    package: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _stamp(package)
    (package / "beta.py").write_text("NAME = 'beta, edited'\n")
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        compiled.use_sources_if_changed()
    assert isinstance(sys.meta_path[0], compiled._Sources)
    assert "beta changed since the local cluster was compiled" in caplog.text
    finder = sys.meta_path[0]
    for name in ("alpha", "beta"):  # the unchanged one too: compiled modules call each other
        spec = finder.find_spec(f"{compiled.PACKAGE}.{name}", None)
        assert spec is not None and spec.origin == str(package / f"{name}.py")
        assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert finder.find_spec(f"{compiled.PACKAGE}.gamma", None) is None
    assert finder.find_spec("alpha", None) is None
    name = f"{compiled.PACKAGE}.beta"
    try:
        module = importlib.import_module(name)
        assert module.NAME == "beta, edited"
        assert module.__file__ == str(package / "beta.py")
    finally:
        sys.modules.pop(name, None)


def test_an_unreadable_stamp_counts_as_changed(package: Path) -> None:
    (package / "compiled.json").write_text("{not json")
    compiled.use_sources_if_changed()
    assert _sources_first()
