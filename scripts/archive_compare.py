"""Copy the numbers of a `sdzero compare` folder into a small folder that can be committed.

    python scripts/archive_compare.py outputs/compare results/compare          # every seed-N found
    python scripts/archive_compare.py outputs/compare results/compare --seeds 1
    python scripts/summarize_compare.py results/compare                        # the table, from the archive

Why: a compare seed takes one to two hours on a 2-core CPU and its outputs (models, checkpoints) stay on the
machine that ran it. The archive keeps only what the table and the curves are built from, in the same layout
(per seed: the run's stages.json, Phase-2 log and evaluation metrics; baselines.json and the baselines'
evaluation metrics), so seeds measured in different sessions add up to one table. Evaluation files keep their
config and metrics, not the responses. A seed already in the archive is replaced.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from sdzero.compare import seeds_in
from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json

EVALS = ("sdzero/eval-base.json", "sdzero/eval-srt.json", "sdzero/eval-sdzero.json", "eval-rft.json",
         "eval-grpo.json", "eval-sdft.json")
AS_IS = ("sdzero/stages.json", "sdzero/distill/log.jsonl", "baselines.json")


def archive_seed(src: Path, dst: Path) -> list[str]:
    """Copy one seed folder's numbers from `src` to `dst` (written beside it, then renamed in)."""
    if not (src / "sdzero" / "stages.json").is_file():
        raise SDZeroError(f"{src} is not a compare seed folder (no sdzero/stages.json)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}-"))
    copied = []
    try:
        for rel in AS_IS:
            if (src / rel).is_file():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, tmp / rel)
                copied.append(rel)
        for rel in EVALS:
            if (src / rel).is_file():
                report = json.loads((src / rel).read_text())
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(tmp / rel, {"config": report.get("config"), "metrics": report["metrics"]})
                copied.append(rel)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a `sdzero compare` output folder")
    ap.add_argument("archive", help="where the numbers go (seed-N folders inside)")
    ap.add_argument("--seeds", default=None, help="comma-separated; default: every seed-N folder in source")
    args = ap.parse_args()
    src, dst = Path(args.source), Path(args.archive)
    try:
        seeds = seeds_in(src, args.seeds)
        if not seeds:
            raise SDZeroError(f"no seed-N folder in {src}")
        for seed in seeds:
            copied = archive_seed(src / f"seed-{seed}", dst / f"seed-{seed}")
            print(f"seed {seed}: {len(copied)} files -> {dst / f'seed-{seed}'} ({', '.join(copied)})")
    except SDZeroError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
