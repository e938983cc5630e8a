"""Every `lake …` command the README and docs/*.md show exists, with the flags they show.

Budget: <1 s (reads the Click tree; runs no command).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from iceberg_lake.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `lake <words>` then the rest of the invocation (a table cell may hold `a \| b` alternatives;
# a second `lake` starts a second invocation).
_INVOCATION = re.compile(r"\blake((?: [a-z][a-z-]*)+)((?:(?!\blake )[^`|\n#]|\\\|)*)")
_FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _commands() -> dict[tuple[str, ...], tuple[Any, set[str]]]:
    out: dict[tuple[str, ...], tuple[Any, set[str]]] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        flags = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        out[path] = (cmd, flags | {"--help"})
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


def _code(text: str) -> list[str]:
    """Inline code spans and fenced-block lines (continuation lines joined): what is run."""
    text = re.sub(r"\\\n\s*", " ", text)
    spans: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            spans.append(line.split(" #", 1)[0])
        else:
            spans.extend(re.findall(r"`([^`]+)`", line.replace("\\|", "\x00")))
    return [s.replace("\x00", "\\|") for s in spans]


def test_documented_commands_and_flags_exist() -> None:
    commands = _commands()
    root_flags = commands[()][1]
    problems: list[str] = []
    for doc in DOCS:
        for span in _code(doc.read_text()):
            for match in _INVOCATION.finditer(span):
                words = match.group(1).split()
                if not words or (words[0],) not in commands:
                    continue  # prose such as "the lake's", or a path like ./lake-data
                path: tuple[str, ...] = ()
                for word in words:
                    if (*path, word) not in commands:
                        break
                    path = (*path, word)
                cmd, flags = commands[path]
                rest = words[len(path) :]
                if hasattr(cmd, "commands") and rest:
                    problems.append(f"{doc.name}: no command `lake {' '.join((*path, rest[0]))}`")
                for alt in re.split(r"\\\|", match.group(2)):
                    for flag in _FLAG.findall(alt):
                        if flag not in flags | root_flags:
                            problems.append(f"{doc.name}: `lake {' '.join(path)}` has no {flag}")
    assert problems == []


def test_cited_test_files_and_tests_exist() -> None:
    """Every `tests/….py` (and `tests/….py::test_name`) the docs cite is there: a moved test
    file leaves no dangling reference."""
    cited = re.compile(r"\btests/[\w/.-]+\.py(?:::\w+)?")
    missing = []
    for doc in DOCS:
        for ref in sorted(set(cited.findall(doc.read_text()))):
            path, _, name = ref.partition("::")
            source = ROOT / path
            if not source.is_file():
                missing.append(f"{doc.name}: {path}")
            elif name and not re.search(rf"^(?:async )?def {name}\(", source.read_text(), re.M):
                missing.append(f"{doc.name}: {ref}")
    assert not missing, missing
