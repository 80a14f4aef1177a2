"""The documentation names only what exists, and the README's commands are real.

- every relative markdown link of README.md and docs/**/*.md resolves (a file or a folder; an anchor names a
  heading of the page it points to);
- every ``docs/...`` and ``data/...`` path named in README.md, docs/**/*.md and pipeline.yaml exists, except the
  files a command writes and the code treats as absent until then (:data:`OPTIONAL`);
- every file of the experiment record (docs/experiments/) is cited by a page;
- README.md has at most 200 lines, and its set-up block holds exactly ``make demo`` and ``make test``;
- every ``datagen`` / ``train`` / ``refine`` command shown in README.md and the docs is a real command: its
  ``--help`` runs and names every option shown with it.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README] + sorted((REPO / "docs").rglob("*.md"))

#: Paths the docs and pipeline.yaml name that need not exist: weights a command writes (`train export`) and
#: that `refine` uses only when present.
OPTIONAL = {"data/iterative_weights.pt", "data/identity_weights.npz"}

CLIS = {"datagen": "datagen.cli", "train": "training.cli", "refine": "reconstruct.cli"}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
NAMED_PATH = re.compile(r"(?<![\w./-])((?:docs|data)/[\w./*-]*[\w*/])")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_relative_links_resolve():
    bad = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{_rel(page)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_named_docs_and_data_paths_exist():
    bad = []
    for source in PAGES + [REPO / "pipeline.yaml"]:
        for name in NAMED_PATH.findall(source.read_text()):
            name = name.rstrip(".")
            if name in OPTIONAL:
                continue
            found = any(REPO.glob(name)) if "*" in name else (REPO / name).exists()
            if not found:
                bad.append(f"{_rel(source)}: {name}")
    assert not bad, "paths named but missing:\n" + "\n".join(bad)


def test_every_experiment_file_is_cited():
    record = REPO / "docs" / "experiments"
    cited = set()
    for page in PAGES:
        text = page.read_text()
        for target in LINK.findall(text):
            path = target.partition("#")[0]
            if path and not re.match(r"[a-z]+:", path):
                cited.add((page.parent / path).resolve())
        for name in NAMED_PATH.findall(text):
            cited.update(p.resolve() for p in REPO.glob(name.rstrip(".")))
        for span in INLINE.findall(text):  # `folder/*-log.csv`, relative to the page
            if "*" in span and " " not in span:
                cited.update(p.resolve() for p in page.parent.glob(span))
    files = [p for p in record.rglob("*") if p.is_file() and p.suffix != ".md"]
    uncited = [_rel(p) for p in files if p.resolve() not in cited]
    assert not uncited, "files no page cites (delete them or cite them):\n" + "\n".join(sorted(uncited))


def _blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def _commands(block: str) -> list[str]:
    """The block's command lines: continuations joined, comments and blank lines dropped."""
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [c for c in (re.sub(r"(^|\s)#.*", "", line).strip() for line in lines) if c]


def test_readme_is_short_and_sets_up_with_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    setup = [b for b in _blocks(text) if "make demo" in b]
    assert len(setup) == 1, "one set-up block"
    assert _commands(setup[0]) == ["make demo", "make test"]
    makes = [c for b in _blocks(text) for c in _commands(b) if c.startswith("make")]
    assert makes == ["make demo", "make test"], "the README names no other make command"


def shown_commands() -> list[tuple[str, str, str, str]]:
    """(page, cli, subcommand, the line) for every CLI command shown in a code block or code span."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = [c for b in _blocks(text) for c in _commands(b)]
        lines += [s for s in INLINE.findall(FENCE.sub("", text))]
        for line in lines:
            words = line.split()
            if len(words) >= 2 and words[0] in CLIS and re.fullmatch(r"[a-z][a-z-]*", words[1]):
                found.append((_rel(page), words[0], words[1], line))
    return found


@lru_cache(maxsize=None)
def help_text(cli: str, sub: str | None) -> tuple[int, str]:
    import importlib

    from click.testing import CliRunner

    main = importlib.import_module(CLIS[cli]).main
    result = CliRunner().invoke(main, ([sub] if sub else []) + ["--help"])
    return result.exit_code, result.output


def test_readme_shows_each_main_command():
    clis = {cli for page, cli, _, _ in shown_commands() if page == "README.md"}
    assert clis == set(CLIS)


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_cli_help(cli):
    code, out = help_text(cli, None)
    assert code == 0 and "Commands:" in out


def test_shown_commands_and_options_exist():
    bad = []
    for page, cli, sub, line in shown_commands():
        code, out = help_text(cli, sub)
        if code != 0:
            bad.append(f"{page}: `{cli} {sub}` is not a command")
            continue
        for option in OPTION.findall(line):
            if option != "--help" and not re.search(re.escape(option) + r"(?![\w-])", out):
                bad.append(f"{page}: `{cli} {sub}` has no option {option} ({line})")
    assert not bad, "\n".join(bad)
