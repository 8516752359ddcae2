"""Every code example of the README and docs/ runs: a page that drifts from the code fails here.

Each page's fenced blocks run in order in a fresh folder of their own (one Python namespace per page):
- ```python blocks run in this process;
- ```bash lines are commands: `proximo ...` (and `python -m proximo ...`) run in this process through
  proximo.cli.main and must exit 0; `make T` must be a target (`make -n T`); `pip install -e '.[X]'` must name
  extras of pyproject.toml;
- ```console blocks are transcripts: each `$ command` runs, and every line shown under it must appear in its
  output ("..." stands for lines left out);
- other blocks (text, yaml, json) are not run.

HTML comments just above a block adjust it, in plain sight of whoever edits the page:
- `<!-- doc-test: replace OLD => NEW -->`: run the block with OLD replaced (smaller step counts; the page says so);
- `<!-- doc-test: file NAME -->`: write the block to NAME instead of running it (a reward module, a data file);
- `<!-- doc-test: slow -->`: run it only in test_doc_examples_slow (marked slow; the page says so);
- `<!-- doc-test: skip REASON -->`: do not run it (a second machine or a cluster); the reason is required.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>```+)(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ ]*$",
                   re.M | re.S)
DIRECTIVE = re.compile(r"^[ ]*<!-- doc-test: (?P<text>.*?) -->[ ]*$")
RUN_LANGS = {"python", "bash", "console"}


@dataclass
class Block:
    """One fenced code block of a page and the doc-test directives above it."""

    page: Path
    line: int
    lang: str
    code: str
    directives: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"

    def option(self, name: str) -> list[str]:
        return [d[len(name):].strip() for d in self.directives if d.split(" ", 1)[0] == name]

    @property
    def slow(self) -> bool:
        return bool(self.option("slow"))

    @property
    def runs(self) -> bool:
        return (self.lang in RUN_LANGS or bool(self.option("file"))) and not self.option("skip")


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with their directives."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above, directives = text[:match.start()].splitlines(), []
        while above and DIRECTIVE.match(above[-1]):
            directives.insert(0, DIRECTIVE.match(above.pop()).group("text"))
        indent = len(match.group("indent"))
        code = "\n".join(row[indent:] for row in match.group("body").splitlines()) + "\n"
        block = Block(page, line, match.group("lang"), code, directives)
        for directive in directives:
            kind = directive.split(" ", 1)[0]
            assert kind in ("replace", "file", "slow", "skip"), f"{block.where}: unknown doc-test directive {kind}"
            if kind == "skip":
                assert len(directive.split()) > 1, f"{block.where}: a skipped example says why"
        found.append(block)
    return found


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _with_replacements(block: Block) -> str:
    code = block.code
    for rule in block.option("replace"):
        old, new = (part.strip() for part in rule.split("=>"))
        assert old in code, f"{block.where}: replace {old!r}: not in the block"
        code = code.replace(old, new)
    return code


def _commands(code: str) -> list[str]:
    """Shell lines joined across trailing backslashes, without blank and comment-only lines."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _run_proximo(argv: list[str], where: str) -> tuple[int, str]:
    """proximo's CLI in this process; (exit status, stdout + stderr)."""
    from proximo.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: a usage error or --help
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue()


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def run_command(line: str, where: str) -> tuple[int, str]:
    """Run one documented command the way the module docstring says; (exit status, output)."""
    argv = shlex.split(line, comments=True)
    if argv[:3] == ["python", "-m", "proximo"]:
        argv = ["proximo", *argv[3:]]
    if argv[0] == "proximo":
        return _run_proximo(argv[1:], where)
    if argv[0] == "make":
        done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr
    if argv[:2] == ["pip", "install"] and "-e" in argv:
        wanted = argv[argv.index("-e") + 1]
        names = re.fullmatch(r"\.\[([\w,-]+)\]", wanted)
        assert names, f"{where}: pip install -e {wanted}: expected .[extra,...]"
        unknown = set(names.group(1).split(",")) - _extras()
        return (1 if unknown else 0), f"unknown extras {sorted(unknown)}" if unknown else ""
    raise AssertionError(f"{where}: no way to run {argv[0]!r} here; give the block a doc-test directive")


def run_block(block: Block, namespace: dict) -> None:
    """Run one block in the current folder."""
    code = _with_replacements(block)
    if block.option("file"):
        Path(block.option("file")[0]).write_text(code)
        return
    if block.lang == "python":
        exec(compile(code, block.where, "exec"), namespace)
    elif block.lang == "bash":
        for line in _commands(code):
            status, output = run_command(line, block.where)
            assert status == 0, f"{block.where}: `{line}` exited {status}:\n{output[-3000:]}"
    elif block.lang == "console":
        command, expected = None, []
        for row in [*code.splitlines(), "$ "]:
            if row.startswith("$ "):
                if command:
                    _, output = run_command(command, block.where)
                    flat = " ".join(output.split())
                    for want in expected:
                        if want.strip() and want.strip() != "...":
                            assert " ".join(want.split()) in flat, \
                                f"{block.where}: `{command}` did not print {want!r}; it printed:\n{output[-3000:]}"
                command, expected = row[2:].strip(), []
            else:
                expected.append(row)


def run_page(page: Path, tmp_path: Path, monkeypatch, include_slow: bool) -> int:
    """Run a page's blocks in order in tmp_path; returns how many ran."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")  # pages name files under benchmarks/
    namespace: dict = {"__name__": "__doc_example__"}
    ran = 0
    for block in blocks(page):
        if block.runs and (include_slow or not block.slow):
            run_block(block, namespace)
            ran += 1
    return ran


def _pages(slow: bool) -> list[Path]:
    return [p for p in PAGES if any(b.runs and (b.slow if slow else not b.slow) for b in blocks(p))]


@pytest.mark.parametrize("page", _pages(slow=False), ids=_page_id)
def test_doc_examples(page, tmp_path, monkeypatch):
    assert run_page(page, tmp_path, monkeypatch, include_slow=False) > 0


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(slow=True), ids=_page_id)
def test_doc_examples_slow(page, tmp_path, monkeypatch):
    assert run_page(page, tmp_path, monkeypatch, include_slow=True) > 0


def test_every_page_parses_and_says_why_it_skips():
    total = skipped = 0
    for page in PAGES:
        for block in blocks(page):
            if block.lang in RUN_LANGS:
                total += 1
                skipped += bool(block.option("skip"))
    assert total > 0 and skipped <= 5, f"{skipped} of {total} examples are skipped; run them instead"


def test_the_harness_catches_drift(tmp_path, monkeypatch):
    """A documented flag that no longer exists, or a transcript whose output changed, fails."""
    page = tmp_path / "page.md"
    page.write_text("```bash\nproximo train CartPole-v1 --no-such-flag 1\n```\n")
    (tmp_path / "a").mkdir()
    with pytest.raises(AssertionError, match="exited 2"):
        run_page(page, tmp_path / "a", monkeypatch, include_slow=False)
    page.write_text("```console\n$ proximo train CartPole-v1 --batch-size 100 --n-steps 64\n"
                    "proximo: error: something else\n```\n")
    (tmp_path / "b").mkdir()
    with pytest.raises(AssertionError, match="did not print"):
        run_page(page, tmp_path / "b", monkeypatch, include_slow=False)


if __name__ == "__main__":  # python tests/test_doc_examples.py: list every page's blocks and how each is run
    for doc_page in PAGES:
        for b in blocks(doc_page):
            how = "skip" if b.option("skip") else "slow" if b.slow else "run" if b.runs else "-"
            print(f"{b.where:45s} {b.lang:8s} {how}")
    sys.exit(0)
