"""The user documentation agrees with the program: --help texts, verbs, and command lines."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nanny_io.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"
CLI_MD = DOCS / "cli.md"
#: The terminal width the --help blocks in docs/cli.md were generated with.
COLUMNS = "100"

#: ### nanny-io VERB, then the first fenced block after it (the verbatim --help output).
HELP_BLOCK = re.compile(
    r"^### nanny-io(?: (?P<verb>[a-z-]+))?[ \t]*\n.*?^```[a-z]*\n(?P<text>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(nanny-io [^`\n]+)`")
#: Placeholders the docs use for option values that must parse as numbers or sizes.
VALUES = {"N": "10", "SEQ": "1", "SECONDS": "5", "BYTES": "64M"}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1"}


def verbs() -> list[str]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def help_text(*args: str) -> str:
    env = {**os.environ, "COLUMNS": COLUMNS, "LINES": "50"}
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", *args, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    return proc.stdout


def documented_help() -> dict[str | None, str]:
    """{verb: help text} from docs/cli.md; the key None is the top-level ``nanny-io``."""
    blocks: dict[str | None, str] = {}
    for match in HELP_BLOCK.finditer(CLI_MD.read_text()):
        verb = match["verb"]
        assert verb not in blocks, f"'### nanny-io {verb or ''}' appears twice in cli.md"
        blocks[verb] = match["text"]
    return blocks


def test_every_verb_is_documented_and_nothing_else() -> None:
    documented = set(documented_help())
    assert None in documented, "cli.md lacks the '### nanny-io' section (top-level --help)"
    assert documented - {None} == set(verbs())


@pytest.mark.parametrize("verb", [None, *verbs()])
def test_documented_help_is_the_real_help(verb: str | None) -> None:
    blocks = documented_help()
    assert verb in blocks, f"no '### nanny-io {verb or ''}' section in docs/cli.md"
    actual = help_text(*([verb] if verb else []))
    assert blocks[verb] == actual, (
        f"the --help block of 'nanny-io {verb or ''}' in docs/cli.md is out of date; "
        f"regenerate it with: COLUMNS={COLUMNS} python -m nanny_io {verb or ''} --help"
    )


def _command_words(line: str) -> list[str] | None:
    """The arguments after ``nanny-io`` when ``line`` runs it as a command, else None.

    Accepts a ``$`` prompt, ``VAR=value`` prefixes, ``path/to/nanny-io`` and
    ``python -m nanny_io``; stops at pipes, redirections and comments.
    """
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError:  # not shell (unbalanced quotes in some output)
        return None
    if words[:1] == ["$"]:
        words = words[1:]
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
        words = words[1:]
    if words[:3] in (["python", "-m", "nanny_io"], ["python3", "-m", "nanny_io"]):
        words = ["nanny-io", *words[3:]]
    if not words or Path(words[0]).name != "nanny-io":
        return None
    args: list[str] = []
    for word in words[1:]:
        if word in SHELL_OPERATORS or set(word) <= set("|&;<>"):
            break
        args.append(word)
    if args and args[-1].isdigit() and len(args) < len(words) - 1:
        args.pop()  # the "2" of "2>"
    return args


def documented_command_lines() -> list[tuple[str, str, bool]]:
    """Every ``nanny-io ...`` command in docs/*.md: (file name, text, is a whole command line).

    In ``console`` blocks only ``$`` lines are commands (the rest is output); in other blocks
    every line that runs nanny-io is. Inline code such as `nanny-io tail ID -f` may be a
    fragment (`nanny-io start --no-spill`), so it is checked for names only.
    """
    found = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        for info, block in FENCE.findall(text):
            for line in block.splitlines():
                if info.strip() == "console" and not line.startswith("$ "):
                    continue
                if _command_words(line):
                    found.append((path.name, line, True))
        found += [(path.name, cmd, False) for cmd in INLINE.findall(text)]
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def test_docs_show_commands() -> None:
    lines = documented_command_lines()
    shown = {_command_words(text)[0] for _, text, _ in lines}  # type: ignore[index]
    assert len(lines) >= 40, lines  # the extractor still finds them
    assert set(verbs()) <= shown, f"verbs never shown in an example: {set(verbs()) - shown}"


@pytest.mark.parametrize(("doc", "text", "whole"), documented_command_lines())
def test_documented_command_parses(doc: str, text: str, whole: bool) -> None:
    """Names every verb and option right, and parses when it is a whole command line."""
    args = _command_words(text)
    assert args is not None
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verb = next((a for a in args if not a.startswith("-")), None)
    if verb is None:  # nanny-io --version
        assert set(args) <= _options(parser), f"{doc}: {text!r}: unknown options"
        return
    assert verb in sub.choices, f"{doc}: {text!r}: no such command {verb!r}"
    known = _options(parser) | _options(sub.choices[verb])
    unknown = [a.split("=")[0] for a in args if a.startswith("-") and a.split("=")[0] not in known]
    assert not unknown, f"{doc}: {text!r}: unknown options {unknown}"
    if not whole or {"-h", "--help", "--version"} & set(args):
        return
    try:
        parser.parse_args([VALUES.get(arg, arg) for arg in args])
    except SystemExit as exc:
        pytest.fail(f"{doc}: {text!r} does not parse (exit status {exc.code})")


def test_quickstart_install_gives_the_documented_kernelspec(tmp_path: Path) -> None:
    """The kernelspec the quickstart tells you to pick, and what kernel-authors.md says it holds."""
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", "install", "python3", "--user", "--capture"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    spec_dir = tmp_path / "data" / "kernels" / "python3-nanny"
    assert proc.stdout == f"installed kernelspec 'python3-nanny' in {spec_dir}\n"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    quickstart = (DOCS / "quickstart.md").read_text()
    assert f"**{spec['display_name']}**" in quickstart
    assert spec["metadata"]["capture_stdstreams"] is True
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "nanny-io"
    assert "--IPKernelApp.capture_fd_output=False" in spec["argv"]
    assert "--InteractiveShellApp.extra_extensions=nanny_io.kernelside" in spec["argv"]


LINK = re.compile(r"\]\((?![a-z]+:)([^)#\s]*)(?:#([^)\s]*))?\)")
#: Pages linked from the docs that are written separately and may not exist yet.
PENDING = {"performance.md"}


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text())
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_between_pages_resolve(page: str) -> None:
    source = DOCS / page
    for target, anchor in LINK.findall(FENCE.sub("", source.read_text())):
        path = (source.parent / target).resolve() if target else source
        if path.name in PENDING and not path.exists():
            continue
        assert path.exists(), f"{page}: broken link to {target!r}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page}: no heading #{anchor} in {path.name}"
