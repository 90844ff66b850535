"""Which sdzero stage imports another stage, and the longest chain of imports inside the package, read from
the source with `ast` (imports inside functions count too).

    python scripts/import_graph.py            # this checkout
    python scripts/import_graph.py --src DIR  # another checkout's src/ (e.g. a git worktree of an old commit)
"""

from __future__ import annotations

import argparse
import ast
import functools
from pathlib import Path

STAGES = {"sdzero.collect", "sdzero.evaluate", "sdzero.srt", "sdzero.distill", "sdzero.baselines.rft",
          "sdzero.baselines.grpo", "sdzero.baselines.sdft"}


def graph(src: Path) -> dict[str, set[str]]:
    mods: dict[str, set[str]] = {}
    for f in sorted((src / "sdzero").rglob("*.py")):
        mod = ".".join(f.relative_to(src).with_suffix("").parts).replace(".__init__", "")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sdzero"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("sdzero")}
        mods[mod] = deps - {mod}
    return mods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    mods = graph(Path(ap.parse_args().src))

    @functools.lru_cache(None)
    def depth(m: str, seen: tuple = ()) -> int:
        if m in seen:
            return 0
        return 1 + max((depth(d, seen + (m,)) for d in mods.get(m, ()) if d in mods), default=0)

    print("stage -> stage:", sorted((m, d) for m in STAGES for d in mods.get(m, ()) if d in STAGES))
    chain = [max(mods, key=depth)]
    while nxt := [d for d in mods.get(chain[-1], ()) if d in mods and d not in chain]:
        chain.append(max(nxt, key=depth))
    print(f"longest chain ({len(chain)} modules):", " -> ".join(chain))


if __name__ == "__main__":
    main()
