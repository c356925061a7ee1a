"""The code blocks of the documentation pages, and a driver that runs one page's blocks in order.

A page's ``bash`` and ``python`` fenced blocks are its code: they run in the
order they appear, in one working folder, as a reader pasting them would run
them (the ``python`` blocks share one namespace, as in one interpreter session;
each ``bash`` block is a fresh ``bash -e -o pipefail``). A ``text`` block titled
``Output`` (```` ```text title="Output" ````) right after a code block is what
that block prints: the printed text must match it, ``...`` standing for any
text (doctest's ELLIPSIS) and runs of white space compared as one space.

``python tests/docs_snippets.py BLOCKS.json RESULTS.json`` runs the blocks of
a page (written by :func:`write_blocks`) in the current folder and writes what
each printed; the test (tests/test_docs.py) runs it in a fresh process per page.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Block", "page_blocks", "output_matches"]

#: The languages of the blocks that are run.
CODE = ("bash", "python")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)(?P<attrs>.*)$")


@dataclass
class Block:
    """One code block of a page, and the output block after it (if any)."""

    lang: str
    code: str
    line: int
    output: str | None = None


def _fences(text: str):
    """``(lang, attrs, body, line)`` for every fenced block of ``text``."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, start = len(match["indent"]), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        yield match["lang"], match["attrs"], "\n".join(body) + "\n", start + 1, i
        i += 1


def page_blocks(path: Path) -> list[Block]:
    """The code blocks of a page, each with the output block that follows it."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks: list[Block] = []
    last_end = -1
    for lang, attrs, body, line, end in _fences(text):
        is_output = lang == "text" and 'title="Output"' in attrs
        if is_output:
            between = lines[last_end + 1: line - 1]
            if not blocks or blocks[-1].output is not None or any(s.strip() for s in between):
                raise ValueError(f"{path}:{line}: an Output block must follow a code block directly")
            blocks[-1].output = body
        elif lang in CODE:
            blocks.append(Block(lang, body, line))
        last_end = end
    return blocks


def output_matches(want: str, got: str) -> bool:
    """Whether ``got`` is what ``want`` shows (``...`` for any text, white space runs as one)."""
    import doctest

    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    return checker.check_output(want, got, flags)


def write_blocks(blocks: list[Block], path: Path) -> None:
    """Write a page's blocks for the driver."""
    Path(path).write_text(json.dumps([asdict(b) for b in blocks]), encoding="utf-8")


def _run_bash(code: str) -> str:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        raise RuntimeError(f"exit status {done.returncode}\n{done.stdout}")
    return done.stdout


def _run_python(code: str, namespace: dict, name: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        exec(compile(code, name, "exec"), namespace)
    return out.getvalue()


def main(blocks_json: str, results_json: str) -> int:
    """Run the blocks in order; stop at the first that fails. Exit status 1 then."""
    namespace: dict = {"__name__": "__main__"}
    if os.environ.get("DOCS_LOAD_TORCHVISION"):
        # a torchvision built for another torch (the CUDA wheel beside a CPU torch) imports only
        # through tests/tv_shim.py; Lightning imports it (through torchmetrics)
        from tv_shim import load_torchvision

        load_torchvision()
    results = []
    for block in json.loads(Path(blocks_json).read_text(encoding="utf-8")):
        name = f"<block at line {block['line']}>"
        try:
            if block["lang"] == "bash":
                printed = _run_bash(block["code"])
            else:
                printed = _run_python(block["code"], namespace, name)
        except BaseException:  # noqa: B036 - any failure of a block is its result
            results.append({"line": block["line"], "output": None, "error": traceback.format_exc()})
            break
        results.append({"line": block["line"], "output": printed, "error": None})
        Path(results_json).write_text(json.dumps(results), encoding="utf-8")
    Path(results_json).write_text(json.dumps(results), encoding="utf-8")
    return 1 if results and results[-1]["error"] else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
