"""The generated results file: sections are replaced in place and other sections survive."""

from __future__ import annotations

from pathlib import Path

from certstudy.analysis.reruns import write_section


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    write_section(path, "a", "first A\n")
    write_section(path, "b", "first B\n")
    write_section(path, "a", "second A\n")
    text = path.read_text()
    assert text.startswith("# Results")
    assert "second A" in text and "first A" not in text and "first B" in text
    assert text.index("<!-- begin: a -->") < text.index("<!-- begin: b -->")
    assert text.count("<!-- begin: a -->") == 1 and not list(tmp_path.glob("*.tmp"))
