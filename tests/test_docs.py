"""The README's and docs' code blocks work as shown: every ```bash and ```python block runs
(or is checked) in CI, in the order of its file.

A block runs as it is, with three rewrites so that tests stay isolated: `/tmp/` becomes a
fresh temporary folder, `127.0.0.1:8000` the port of the server this test started, and
`.venv/bin/` this interpreter's folder (also first on PATH, as in an activated venv). An
HTML comment on the line before a block changes how it is used:

- `<!-- docs-test: server -->`: the block is one `vlmserve serve` command; it is started on a
  free port and the blocks after it (until the next server block) talk to it. The default
  model comes from the tests' tiny checkpoint, so nothing is generated or downloaded.
- `<!-- docs-test: parse -->`: each command is parsed and turned into config objects like
  `vlmserve` would, without running it (commands that need a real model or run for minutes:
  their flags are still checked).
- `<!-- docs-test: skip: REASON -->`: not run; the reason is required and says why (needs a
  GPU, a real model, the network, the vLLM peer, or minutes of benchmark time).

Blocks in other languages (```text outputs, ```yaml, diagrams) are shown, not run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.children import spawn
from vlmserve.cli import parse_args
from vlmserve.cli.configs import build_configs

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|server|parse)\s*(?::\s*(.*?))?\s*-->")
_RUNNABLE = ("bash", "python")


@dataclass
class Block:
    path: Path
    line: int
    language: str
    code: str
    kind: str  # run, server, parse or skip
    reason: str | None

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line} ({self.language}, {self.kind})"


def code_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        marker = _MARKER.search(lines[start - 1]) if start else None
        kind, reason = (marker.group(1), marker.group(2)) if marker else ("run", None)
        code = "\n".join(lines[start + 1 : i]) + "\n"
        blocks.append(Block(path, start + 1, fence.group(1), code, kind, reason))
        i += 1
    return blocks


def test_every_runnable_block_runs_or_says_why_not() -> None:
    seen = 0
    for path in DOCS:
        for block in code_blocks(path):
            if block.language not in _RUNNABLE:
                assert block.kind == "run", f"{block}: markers apply to bash and python only"
                continue
            seen += 1
            if block.kind == "skip":
                assert block.reason and len(block.reason) > 10, f"{block}: say why it is skipped"
            if block.kind == "server":
                assert len(commands(block.code)) == 1, f"{block}: one serve command"
    assert seen >= 10


def commands(code: str) -> list[list[str]]:
    """The shell commands of a block, continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Session:
    """One file's blocks, run in order in one temporary folder."""

    def __init__(self, tmp: Path, tiny_model: Path) -> None:
        self.tmp = tmp
        self.bin = Path(sys.executable).parent
        cache = tmp / "cache"
        cache.mkdir()
        (cache / "tiny-qwen2_vl").symlink_to(tiny_model)
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "VLMSERVE_CACHE": str(cache),
            # One torch thread per process: on a loaded 2-core CI machine two threads per
            # process spin against each other and the blocks run ten times slower.
            "OMP_NUM_THREADS": "1",
        }
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = tmp / "server.log"

    def rewrite(self, code: str) -> str:
        code = code.replace("/tmp/", f"{self.tmp}/").replace(".venv/bin/", f"{self.bin}/")
        return code.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def run(self, block: Block) -> None:
        code = self.rewrite(block.code)
        if block.kind == "parse":
            return self.parse(block, code)
        if block.kind == "server":
            return self.start_server(block, code)
        argv = ["bash", "-euo", "pipefail", "-c", code]
        if block.language == "python":
            argv = [sys.executable, "-c", code]
        done = subprocess.run(
            argv, cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"

    def parse(self, block: Block, code: str) -> None:
        for argv in commands(code):
            assert Path(argv[0]).name == "vlmserve", f"{block}: not a vlmserve command"
            args = parse_args(argv[1:])  # exits (fails the test) on a bad flag
            if args.command == "serve":
                build_configs(args, args.model or "tiny", None, None)

    def start_server(self, block: Block, code: str) -> None:
        self.stop_server()
        [argv] = commands(code)
        with self.server_log.open("ab") as log:
            self.server = spawn(
                [*argv, "--port", str(self.port)],
                cwd=self.tmp,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.server.poll() is None, f"{block} exited:\n{self.server_log.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{block}: not ready after 180 s")

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)
            self.server = None


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_code_blocks_work(path: Path, tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    blocks = [b for b in code_blocks(path) if b.language in _RUNNABLE and b.kind != "skip"]
    if not blocks:
        pytest.skip("no runnable blocks")
    session = Session(tmp_path, tiny_qwen2_vl)
    try:
        for block in blocks:
            session.run(block)
    finally:
        session.stop_server()


def media_flag_table() -> list[tuple[list[str], list[str]]]:
    """docs/media.md's table of limits: per row, the `MediaConfig` fields and the example
    flags (as a shell would split them)."""
    text = (REPO / "docs" / "media.md").read_text()
    table = text.split("| `MediaConfig` field | Default | Flag |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for row in table.strip().splitlines()[1:]:  # past the |---| line
        fields, _default, flag = (cell.strip() for cell in row.strip("|").split("|"))
        example = re.search(r"`([^`]+)`", flag)
        assert example, row
        rows.append((re.findall(r"`(\w+)`", fields), shlex.split(example.group(1))))
    return rows


def test_docs_media_table_lists_every_limit_with_a_flag_that_sets_it() -> None:
    defaults = dataclasses.asdict(build_configs(parse_args(["serve"]), "tiny", None, None)[2])
    rows = media_flag_table()
    listed = {name for fields, _ in rows for name in fields}
    assert listed == set(defaults), "docs/media.md's table and MediaConfig differ"
    for fields, flag in rows:
        media = build_configs(parse_args(["serve", *flag]), "tiny", None, None)[2]
        changed = {k for k, v in dataclasses.asdict(media).items() if v != defaults[k]}
        assert changed == set(fields), f"{shlex.join(flag)} sets {changed}, not its row's fields"


def shape(line: str) -> str:
    """A log line without what changes from run to run: the time, numbers, paths, and the
    dtype `--dtype auto` picks (bfloat16 where the CPU has it, else float32)."""
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line)
    line = re.sub(r"\b(bfloat16|float32)\b", "DTYPE", line)
    line = re.sub(r"(?<![\w.-])/[^\s:;,)]*", "PATH", line)
    return re.sub(r"\d+(\.\d+)?", "#", line)


def test_quickstart_shows_todays_start_up_log(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    """docs/quickstart.md's recorded start-up log is what `vlmserve serve` writes today (the
    lines that only a first run writes aside: the tests' tiny model exists already)."""
    blocks = code_blocks(REPO / "docs" / "quickstart.md")
    server = next(b for b in blocks if b.kind == "server")
    shown = next(b for b in blocks if b.language == "text" and b.line > server.line)
    session = Session(tmp_path, tiny_qwen2_vl)
    try:
        session.start_server(server, session.rewrite(server.code))
    finally:
        session.stop_server()
    written = session.server_log.read_text()
    got = {shape(line) for line in written.splitlines()}
    first_run_only = ("vlmserve.cli.tiny: ", "vlmserve.models.progress: ")
    expected = [line for line in shown.code.splitlines() if not line.startswith(first_run_only, 28)]
    assert len(expected) >= 10
    missing = [line for line in expected if shape(line) not in got]
    assert not missing, f"not written today:\n{chr(10).join(missing)}\n\nwritten:\n{written}"
