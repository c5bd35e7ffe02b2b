"""The front door and the docs site stay honest: a short README, links that lead somewhere, every module named.

Fast and without MkDocs (CI's ``mkdocs build --strict`` checks the rendered site; these run in any checkout):
``README.md`` is at most 300 lines and still shows ``python -m src.train``; every relative link in
``README.md`` and ``docs/*.md`` points at a file that exists and, with ``#anchor``, at one of its headings;
``mkdocs.yml``'s nav lists every page of ``docs/`` once; ``docs/architecture.md`` names every module under
``src/``; every console line ``Run folder: ...`` the pages quote is the line the code prints for that folder.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 300
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...
# a quoted console line "Run folder: <run>  (TensorBoard: ...)", in a code block or inline
RUN_FOLDER_LINE = re.compile(r"Run folder: (?P<run>[^\s`]+)  \(TensorBoard: [^)`\n]*\)")


def prose(markdown: str) -> str:
    """``markdown`` without fenced code blocks and inline code, where a ``[x](y)`` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """The anchor of a heading as Python-Markdown's toc extension makes it (MkDocs; GitHub agrees on ours)."""
    text = re.sub(r"[`*]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def broken_links(page: Path) -> list[str]:
    """Every relative link of ``page`` whose file, or heading, does not exist, as ``target (why)``."""
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {shown(file)})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {shown(file)})")
    return broken


def test_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= README_MAX_LINES, f"README.md has {n_lines} lines: move reference material into docs/"
    assert "python -m src.train" in text
    assert "pip install -e ." in text and 'pip install -e ".[dev]"' in text
    for page in PAGES:  # its table of contents reaches every page of the site
        assert f"(docs/{page.name}" in text, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    assert not broken_links(page)


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The `samples.npz` file\n")
    page.write_text(
        "# Page\n\n[ok](other.md#the-samplesnpz-file) [same](#page) [web](https://example.org/x)\n"
        "`[code](missing.md)`\n\n```\n[fenced](missing.md)\n```\n\n"
        "[gone](missing.md) [no heading](other.md#nowhere)\n"
    )
    assert [b.split(" ")[0] for b in broken_links(page)] == ["missing.md", "other.md#nowhere"]


def test_mkdocs_nav_lists_every_page_once() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    nav = [next(iter(entry.values())) for entry in config["nav"]]
    assert sorted(nav) == sorted(p.name for p in PAGES) and len(set(nav)) == len(nav), nav


def test_architecture_page_names_every_module() -> None:
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*.py") if "__pycache__" not in p.parts
    )
    assert modules
    missing = [m for m in modules if f"`{m}`" not in page]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"


def quoted_run_folder_lines(page: Path) -> list[tuple[str, str]]:
    """``(run folder, whole line)`` of every ``Run folder:`` console line ``page`` quotes with a real path
    (placeholders such as ``<run>`` or ``...`` are left out)."""
    return [
        (m["run"], m[0])
        for m in RUN_FOLDER_LINE.finditer(page.read_text(encoding="utf-8"))
        if "<" not in m["run"] and "..." not in m["run"]
    ]


def test_quoted_run_folder_lines_are_what_the_console_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lossdiag.app.console import run_folder_line

    monkeypatch.chdir(tmp_path)  # the pages quote paths relative to the folder the command ran in
    quoted = {page: quoted_run_folder_lines(page) for page in [README, *PAGES]}
    quoting = {page.name for page, lines in quoted.items() if lines}
    assert {"README.md", "getting-started.md", "files.md", "sweeps.md", "diagnosis.md"} <= quoting
    for run in {run for lines in quoted.values() for run, _ in lines}:  # runs with a TensorBoard logger
        (tmp_path / run).mkdir(parents=True, exist_ok=True)
        (tmp_path / run / "events.out.tfevents.0").touch()
    stale = [
        f"{shown(page)}: {line}"
        for page, lines in quoted.items()
        for run, line in lines
        if line != run_folder_line(tmp_path / run)
    ]
    assert not stale, "quoted Run folder: lines the console no longer prints:\n" + "\n".join(stale)
    # a run without TensorBoard event files (no TensorBoard logger) is not offered a TensorBoard command
    (tmp_path / "plain").mkdir()
    assert run_folder_line(tmp_path / "plain") == "Run folder: plain"
