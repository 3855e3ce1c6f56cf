"""Where the benchmarks look for what is not in the repository (the vLLM CPU peer's scripts,
JSONSchemaBench's schemas): a `shared/` folder next to the clone. A git worktree
(`git worktree add`) sits elsewhere than its main clone, so it looks next to that clone too."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The first `shared/` folder that exists, next to this checkout or next to the main clone
    of this worktree; the first one when none does (messages name it as the place to put it)."""
    candidates = [REPO.parent / "shared"]
    dot_git = REPO / ".git"
    if dot_git.is_file():  # a worktree's `.git` file: "gitdir: <main>/.git/worktrees/<name>"
        text = dot_git.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = Path(text.removeprefix("gitdir:").strip())
            if len(gitdir.parents) > 3:
                candidates.append(gitdir.parents[3] / "shared")
    return next((c for c in candidates if c.is_dir()), candidates[0])
