"""The documentation cannot drift from the code (issue 24).

* Every ``oneshot ...`` command shown in README.md and docs/ (fenced shell blocks and inline code; ``python -m
  oneshot ...`` and ``torchrun ... -m oneshot ...`` too) parses with the real parser, ``oneshot.cli.build_parser()``.
  Line continuations are joined and ``#`` comments dropped; placeholders are plain strings to the parser (an
  ALL-CAPS placeholder also stands for a number: ``--n N``); ``[--flag X]`` is an optional part (parsed as if given)
  and ``a|b`` inside a word means either (each is parsed). Inline code that only names a command (``oneshot
  train``) has to name one that exists.
* Every relative link and image points to an existing file (and an existing heading, for ``#anchors``: one that
  GitHub and MkDocs both generate); pages under docs/ link only inside docs/, the site's whole content; every page is
  in mkdocs.yml's nav.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from oneshot.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
SEPARATORS = {"|", "||", "&&", ";"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- reading markdown ------------------------------------------------------------------------------------------

def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """(first line number, language, code) of every fenced block."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(m.group(1)):
            body.append(lines[i])
            i += 1
        out.append((start + 1, m.group(2).lower(), "\n".join(body)))
        i += 1
    return out


def prose(text: str) -> str:
    """The text with fenced blocks blanked out (line numbers kept)."""
    lines, fenced = text.splitlines(), None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if fenced is None and m:
            fenced, lines[i] = m.group(1), ""
        elif fenced is not None:
            if line.strip().startswith(fenced):
                fenced = None
            lines[i] = ""
    return "\n".join(lines)


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line number, content) of every inline code span outside fenced blocks (a span may wrap lines)."""
    body = prose(text)
    return [(body.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split()))
            for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", body, flags=re.S)]


# -- commands --------------------------------------------------------------------------------------------------

def oneshot_args(tokens: list[str]) -> list[str] | None:
    """The arguments after the oneshot command in one simple shell command, or None if it does not run oneshot."""
    while tokens and re.match(r"^\w+=", tokens[0]):  # FOO=1 oneshot ...
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "oneshot" or tokens[0].endswith("/oneshot"):
        return tokens[1:]
    if re.fullmatch(r"(.*/)?(python[\d.]*|torchrun)", tokens[0]):
        for i in range(1, len(tokens) - 1):
            if tokens[i] == "-m" and tokens[i + 1] == "oneshot":
                return tokens[i + 2:]
    return None


def commands(code: str) -> list[tuple[int, list[str] | str]]:
    """(line offset, arguments) of every oneshot command in shell code; a line that is not valid shell gives
    (line offset, shlex's complaint) instead."""
    out, logical, first = [], "", 0
    for n, line in enumerate(code.splitlines()):
        if not logical:
            first = n
        logical += line
        if line.rstrip().endswith("\\"):
            logical = logical.rstrip()[:-1] + " "
            continue
        text, logical = logical.strip(), ""
        text = re.sub(r"^\$\s+", "", text)
        if not re.search(r"(^|[\s/;&|(])oneshot(\s|$)", text):
            continue
        try:
            tokens = shlex.split(text, comments=True)
        except ValueError as e:
            out.append((first, f"not valid shell ({e}): {text}"))
            continue
        cmd: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in SEPARATORS:
                args = oneshot_args(cmd)
                if args is not None:
                    out.append((first, args))
                cmd = []
            else:
                cmd.append(tok)
    return out


def variants(args: list[str]) -> list[list[str]]:
    """The argument lists an example stands for: brackets of optional parts dropped, ``a|b`` expanded."""
    args = [a[1:] if a.startswith("[") and a != "[" else a for a in args]
    args = [a[:-1] if a.endswith("]") and a != "]" else a for a in args]
    choices = [a.split("|") if "|" in a.strip("|") else [a] for a in args]
    return [list(c) for c in itertools.islice(itertools.product(*choices), 64)]


def _placeholder_type(convert):
    def parse(value: str):
        return value if PLACEHOLDER.fullmatch(value) else convert(value)
    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its messages
    return parse


def tolerant_parser() -> argparse.ArgumentParser:
    """The real parser, with numeric options also taking an ALL-CAPS placeholder (``--n N``), and flags spelled out
    (argparse would take ``--check`` for ``--checkpoint``; a page should not teach that)."""
    parser = build_parser()
    todo = [parser]
    while todo:
        p = todo.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if action.type in (int, float):
                action.type = _placeholder_type(action.type)
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return parser


def command_names(parser: argparse.ArgumentParser, args: list[str]) -> bool | None:
    """True when `args` only names (sub)commands that exist, False when one of them does not, None when `args` goes
    beyond naming a command (then it must parse)."""
    for a in args:
        subs = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
        if a.startswith("-") or not subs:  # a flag, or an argument of a command
            return None
        if a not in subs[0].choices:
            return False
        parser = subs[0].choices[a]
    return True


def parse_error(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """argparse's complaint about `args`, or None when they parse (``--help`` counts as parsing)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            if e.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def command_problems(page: Path, text: str, parser: argparse.ArgumentParser) -> tuple[int, list[str]]:
    """(number of commands checked, problems as 'file:line: `oneshot ...`: what argparse said') for one page."""
    found, problems = [], []
    for start, lang, code in code_blocks(text):
        if lang in SHELL_LANGS:
            found += [(start + offset, args, False) for offset, args in commands(code)]
    for line, span in inline_code(text):
        found += [(line, args, True) for _, args in commands(span)]
    name = _rel(page) if page.is_relative_to(ROOT) else str(page)
    for line, args, inline in found:
        if isinstance(args, str):
            problems.append(f"{name}:{line}: {args}")
            continue
        for v in variants(args):
            where = f"{name}:{line}: `oneshot {shlex.join(v)}`"
            named = command_names(parser, v) if inline else None
            if named is False:
                problems.append(f"{where}: no such command")
            elif named is None and (msg := parse_error(parser, v)) is not None:
                problems.append(f"{where}: {msg}")
    return len(found), problems


@pytest.fixture(scope="module")
def parser():
    return tolerant_parser()


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_commands_parse(page, parser):
    _, problems = command_problems(page, page.read_text(), parser)
    assert not problems, "commands in the docs that the real parser rejects:\n" + "\n".join(problems)


def test_the_docs_show_commands(parser):
    """The extraction finds what the pages show (a test that finds no command would pass on anything)."""
    counts = {_rel(p): command_problems(p, p.read_text(), parser)[0] for p in PAGES}
    assert counts["README.md"] >= 2 and counts["docs/cli.md"] >= 6 and counts["docs/evaluation.md"] >= 5, counts
    assert sum(counts.values()) >= 40, counts


def test_checker_catches_wrong_commands(parser, tmp_path):
    page = tmp_path / "page.md"
    text = "\n".join([
        "Intro with `oneshot data synth --out DIR --n N [--seed S]` and `oneshot reconstruct|animate`.",
        "",
        "```bash",
        "oneshot animate --checkpoint C.safetensors src.png drive.mp4 --out o.mp4 \\",
        "    --no-such-flag   # a comment",
        "FOO=1 python -m oneshot train --data D --out R --stage 3",
        "torchrun --nproc_per_node 2 -m oneshot evaluate --checkpoint C --data D --protocol self|selfie --out E",
        "oneshot data synth --out DIR --n lots && echo done | tee log",
        "```",
        "",
        "`oneshot frobnicate`, `oneshot demo --minutes 3`, `oneshot demo --min 3` and `python -m oneshot --help`.",
        "```python",
        "oneshot animate --not-shell-code",
        "```",
    ])
    n, problems = command_problems(page, text, parser)
    assert n == 10, problems
    joined = "\n".join(problems)
    assert len(problems) == 6, joined
    for expected in ("page.md:4: `oneshot animate", "unrecognized arguments: --no-such-flag",
                     "page.md:6: `oneshot train", "--stage: invalid choice: 3",
                     "page.md:7: `oneshot evaluate", "invalid choice: 'selfie'",
                     "page.md:8: `oneshot data synth --out DIR --n lots`", "page.md:11: `oneshot frobnicate`",
                     "page.md:11: `oneshot demo --min 3`: oneshot: error: unrecognized arguments: --min 3"):
        assert expected in joined, joined


# -- links -----------------------------------------------------------------------------------------------------

def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link, image, reference definition and HTML src/href."""
    body = re.sub(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose(text),
                  flags=re.S)
    pattern = (r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)"
               r"|^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)|<(?:img|a)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']")
    return [(body.count("\n", 0, m.start()) + 1, next(g for g in m.groups() if g))
            for m in re.finditer(pattern, body, flags=re.M)]


def _heading_texts(text: str) -> list[str]:
    out = []
    for line in prose(text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            t = re.sub(r"`([^`]*)`", r"\1", m.group(1))
            out.append(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", t).replace("*", ""))
    return out


def _unique(slugs: list[str], sep: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for s in slugs:
        out.add(s if s not in seen else f"{s}{sep}{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def anchors(text: str) -> set[str]:
    """The heading anchors that both GitHub and MkDocs (Python-Markdown's toc) generate for a page."""
    heads = _heading_texts(text)
    github = _unique([re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads], "-")
    ascii_ = [unicodedata.normalize("NFKD", h).encode("ascii", "ignore").decode() for h in heads]
    mkdocs = _unique([re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in ascii_], "_")
    return github & mkdocs


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for line, target in link_targets(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            continue  # https:, mailto:, ...
        where = f"{_rel(page)}:{line}: {target}"
        path_part, _, fragment = target.partition("#")
        if not path_part:  # an anchor on this page
            if fragment not in anchors(text):
                problems.append(f"{where}: no heading #{fragment} on this page (on GitHub and in the site alike)")
            continue
        dest = (page.parent / path_part).resolve()
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if page.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
            problems.append(f"{where}: outside docs/ (the site holds only docs/; name the file in code instead)")
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            problems.append(f"{where}: no heading #{fragment} in {_rel(dest)} (on GitHub and in the site alike)")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_resolve(page):
    problems = link_problems(page, page.read_text())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_catches_broken_links(tmp_path):
    targets = [t for _, t in link_targets((ROOT / "README.md").read_text())]
    assert "docs/install.md" in targets and "docs/demo/orbit.gif" in targets, targets
    page = DOCS / "page.md"  # never written: only its location matters
    text = ("# A page\n\n## Two words\n\n[ok](ops.md) ![img](demo/orbit.gif) [here](#two-words) `[not](a-link.md)`\n"
            "[gone](missing.md) ![gone](demo/missing.png) [out](../README.md) [bad](ops.md#no-such-heading)\n"
            '[ref]: install.md\n[ref2]: nowhere.md\n<img src="demo/nope.gif">\n')
    problems = "\n".join(link_problems(page, text))
    for bad in ("missing.md", "demo/missing.png", "../README.md: outside docs/", "ops.md#no-such-heading",
                "nowhere.md", "demo/nope.gif"):
        assert bad in problems, problems
    assert problems.count("\n") == 5, problems
    assert "#two-words" not in problems and "a-link.md" not in problems and "install.md:" not in problems


def test_anchor_slugs_agree_or_are_refused():
    text = ("# The demo's result\n## Super-resolution: --sr / --no-sr\n## Faces, landmarks and mattes\n"
            "## Faces, landmarks and mattes\n")
    got = anchors(text)
    assert {"the-demos-result", "faces-landmarks-and-mattes"} <= got
    assert not any(a.startswith("super-resolution") for a in got), got  # GitHub and MkDocs disagree there


def test_every_page_is_in_the_nav():
    nav = set(re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries without a page: {sorted(nav - pages)}"
