"""The documentation holds together: links, images, benchmark commands, RESULTS.md's shape.

(Every code block of README.md and docs/*.md is run by tests/test_readme.py.) These checks only
read files, so they are fast:

* every relative link and image in README.md, docs/*.md, CHANGELOG.md, benchmarks/RESULTS.md and
  benchmarks/history/*.md names a file that exists, and a ``#anchor`` names a heading of it;
* the README stays short, shows its picture, and quotes the demo's scores in one marked place;
* every ``benchmarks/*.py`` the docs name exists, with the options they use;
* benchmarks/RESULTS.md has, per benchmark, a table with its machine and date and the history file
  it comes from; benchmarks/history/README.md lists every history file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HISTORY = ROOT / "benchmarks" / "history"
LINKED = [README, *DOCS, ROOT / "CHANGELOG.md", RESULTS, *sorted(HISTORY.glob("*.md"))]

FENCE = re.compile(r"^[ \t]*(?:```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?(?:src|href)=\"([^\"]+)\"")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def _prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    out, in_fence = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            out.append(line)
    return out


def _slugs(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    seen: dict[str, int] = {}
    for line in _prose(path):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


def _targets(path: Path) -> list[str]:
    out = []
    for line in _prose(path):
        line = re.sub(r"``[^`]*``|`[^`]*`", "", line)  # code spans are not links
        out += LINK.findall(line) + HTML_SRC.findall(line)
    return out


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_exist(path):
    assert path.is_file()
    for target in _targets(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked (offline)
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        assert dest.exists(), f"{path.relative_to(ROOT)}: link to missing {target}"
        assert ROOT in dest.parents or dest == ROOT, f"{path.relative_to(ROOT)}: {target} leaves the repo"
        if anchor:
            assert dest.suffix == ".md", f"{path.relative_to(ROOT)}: anchor into a non-Markdown file"
            assert anchor in _slugs(dest), f"{path.relative_to(ROOT)}: no heading #{anchor} in {dest.name}"


def test_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _targets(README) if not t.startswith("#")}
    for page in DOCS:
        assert page.resolve() in linked, f"README does not link {page.relative_to(ROOT)}"
    for other in (ROOT / "CHANGELOG.md", RESULTS):
        assert other.resolve() in linked


def test_readme_shows_the_demo_picture():
    images = [t for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text())]
    assert images == ["docs/images/demo_result.png"]
    png = ROOT / images[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 150_000


def test_demo_scores_are_quoted_once_and_marked():
    # the demo's test / segmentation scores change with the scoring code: one marked sentence to update
    marker = "<!-- demo-numbers -->"
    counts = {p.relative_to(ROOT): p.read_text().count(marker) for p in (README, *DOCS)}
    assert counts[Path("README.md")] == 1 and sum(counts.values()) == 1, counts
    lines = README.read_text().splitlines()
    sentence = lines[lines.index(marker) + 1]
    assert "test Dice" in sentence and "HD95" in sentence
    for page in DOCS:  # nowhere else in the docs
        assert not re.search(r"test Dice (of )?0\.\d", page.read_text()), page.name


def _benchmark_commands(path: Path) -> list[list[str]]:
    """`python benchmarks/x.py --opt ...` commands in code spans and tables of a page."""
    out = []
    for line in _prose(path):
        for span in re.findall(r"`([^`]+)`", line):
            words = span.split()
            for i, word in enumerate(words):
                if re.fullmatch(r"benchmarks/\w+\.py", word) and i and words[i - 1] == "python":
                    out.append(words[i:])
    return out


@pytest.mark.parametrize("path", [README, *DOCS, RESULTS], ids=lambda p: str(p.relative_to(ROOT)))
def test_named_benchmark_scripts_and_options_exist(path):
    for script in set(re.findall(r"benchmarks/\w+\.py", "\n".join(_prose(path)))):
        assert (ROOT / script).is_file(), f"{path.name} names missing {script}"
    for argv in _benchmark_commands(path):
        source = (ROOT / argv[0]).read_text()
        for opt in (w for w in argv[1:] if w.startswith("--")):
            assert f'"{opt}"' in source, f"{path.name}: {argv[0]} has no option {opt}"


def _sections(path: Path) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in _prose(path):
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def test_results_has_one_dated_table_per_benchmark():
    sections = _sections(RESULTS)
    expected = (
        "Selective scan",
        "Model forward and backward",
        "Fused cross-scan",
        "3-D model",
        "Segment a volume",
        "HD95",
        "Data pipelines",
        "Training throughput",
        "Demo ablation",
        "2-D against 3-D",
        "GPU",
    )
    for start in expected:
        assert any(h.startswith(start) for h in sections), f"RESULTS.md has no section {start!r}"
    for heading, body in sections.items():
        assert re.search(r"^\|.*\|\s*$", body, re.M), f"RESULTS.md {heading!r}: no table"
        assert DATE.search(body), f"RESULTS.md {heading!r}: no date"
        assert re.search(r"2-core CPU|16-core Xeon|H100", body), f"RESULTS.md {heading!r}: no machine"
        assert re.search(r"\]\(history/[\w.-]+\.md", body), f"RESULTS.md {heading!r}: no history source"


def test_results_headings_named_in_the_code_exist():
    # e.g. configs/demo.yaml: 'Measured numbers: benchmarks/RESULTS.md, "Demo ablation".'
    headings = list(_sections(RESULTS))
    for path in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("vmunet/**/*.py"), *ROOT.glob("vmunet/**/*.yaml")]:
        text = re.sub(r"\s+", " ", path.read_text())
        for name in re.findall(r"benchmarks/RESULTS\.md, \"([^\"]+)\"", text):
            assert any(h.startswith(name) for h in headings), f"{path.relative_to(ROOT)} names {name!r}"


def test_history_index_lists_every_file():
    index = HISTORY / "README.md"
    listed = {t.partition("#")[0] for t in _targets(index)}
    files = {p.name for p in HISTORY.glob("*.md")} - {"README.md"}
    assert files and files <= listed, files - listed
    for name in files:
        assert DATE.match(name), f"history file {name} is not named by its date"
