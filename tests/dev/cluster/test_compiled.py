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


def _stamp(folder: Path, extensions: tuple[str, ...] = ()) -> None:
    digests = {
        name: hashlib.sha256((folder / f"{name}.py").read_bytes()).hexdigest()
        for name in ("alpha", "beta")
    }
    for name in extensions:
        (folder / name).write_bytes(b"")
    record = {"modules": digests, "extensions": sorted(extensions)}
    (folder / "compiled.json").write_text(json.dumps(record))


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


_SO = ".cpython-311-x86_64-linux-gnu.so"


def test_extensions_without_their_record_are_not_used(package: Path) -> None:
    (package / f"alpha{_SO}").write_bytes(b"")
    compiled.use_sources_if_changed()
    assert _sources_first()


def test_an_extension_the_last_build_did_not_make_is_not_used(package: Path) -> None:
    """One left by a build of another version of this file (compiling other modules)."""
    _stamp(package, (f"alpha{_SO}", f"beta{_SO}"))
    (package / f"gamma{_SO}").write_bytes(b"")
    (package / "gamma.py").write_text("NAME = 'gamma'\n")
    compiled.use_sources_if_changed()
    assert _sources_first()
    finder = next(f for f in sys.meta_path if isinstance(f, compiled._Sources))
    spec = finder.find_spec(f"{compiled.PACKAGE}.gamma", None)  # not in MODULES: still
    assert spec is not None and spec.origin == str(package / "gamma.py")


def test_a_build_of_other_modules_is_not_used(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stamp(package, (f"alpha{_SO}",))
    monkeypatch.setattr(compiled, "MODULES", ("alpha",))
    (package / "beta.py").unlink()
    compiled.use_sources_if_changed()
    assert _sources_first()


def test_a_source_edited_while_it_compiles_counts_as_changed(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record holds the sources as they were when compiling began."""
    import mypyc.build
    import setuptools

    def compile_while_edited(paths: list[str], group_name: str) -> list[object]:
        (package / "beta.py").write_text("NAME = 'beta, saved meanwhile'\n")
        return []

    def made(**_: object) -> None:
        for name in ("alpha", "beta"):
            (package / f"{name}{_SO}").write_bytes(b"")

    monkeypatch.setattr(mypyc.build, "mypycify", compile_while_edited)
    monkeypatch.setattr(setuptools, "setup", made)
    monkeypatch.chdir(package)  # build() moves to its distribution's folder: restored after
    monkeypatch.setenv("MYPYPATH", "")
    compiled.build()
    assert json.loads((package / "compiled.json").read_text())["extensions"] == [
        f"alpha{_SO}",
        f"beta{_SO}",
    ]
    compiled.use_sources_if_changed()
    assert _sources_first()


def test_clean_removes_every_extension(package: Path) -> None:
    _stamp(package, (f"alpha{_SO}",))
    (package / f"routing{_SO}").write_bytes(b"")  # from a build that compiled more
    compiled.clean()
    assert not list(package.glob("*.so")) and not (package / "compiled.json").exists()


def test_a_build_with_one_of_its_extensions_gone_is_not_used(package: Path) -> None:
    """The others would call their own compiled copy of it, beside its source's."""
    _stamp(package, (f"alpha{_SO}", f"beta{_SO}"))
    (package / f"beta{_SO}").unlink()
    compiled.use_sources_if_changed()
    assert _sources_first()
