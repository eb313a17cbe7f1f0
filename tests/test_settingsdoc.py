"""docs/configuration.md is exactly what ``nexus settings`` prints, so it cannot drift."""

from __future__ import annotations

from pathlib import Path

from nexus.settingsdoc import markdown

DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_the_configuration_reference_is_current() -> None:
    assert DOCS.read_text() == markdown(), "run: .venv/bin/nexus settings > docs/configuration.md"


def test_every_setting_is_explained() -> None:
    undocumented = [line for line in markdown().splitlines() if line.endswith("|  |")]
    assert undocumented == []
