"""Copy the numbers of a `sdzero compare` folder into a small folder that can be committed.

    python scripts/archive_compare.py outputs/compare results/compare          # every seed-N found
    python scripts/archive_compare.py outputs/compare results/compare --seeds 1
    python scripts/summarize_compare.py results/compare                        # the table, from the archive
    sdzero findings --compare_dir results/findings/compare --variants none     # the findings, from an archive

Why: a compare seed takes one to two hours on a 2-core CPU and its outputs (models, checkpoints) stay on the
machine that ran it. The archive keeps only what the table, the curves and `sdzero findings` are built from,
in the same layout: per seed the run's stages.json, Phase-1 tuples, Phase-2 log and heat-map rows,
baselines.json, and each evaluation's config, metrics and per-question rewards (ids and numbers, no prompts
or responses); and the same for each variant `sdzero findings` finished (COMPARE/variants/NAME/seed-N). So
seeds and variants measured in different sessions add up to one table, and a later session copies the
archive back to resume: what finished is read, not rerun. A seed or variant already in the archive is
replaced. The Phase-1 tuples and heat-map rows keep their text (prompts, responses, tokens); evaluations
keep none. Archives made before per-question rewards were kept (results/compare/) serve the table only.
"""

import argparse
import json
import shutil
from pathlib import Path

from sdzero.compare import seeds_in
from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, replace_dir
from sdzero.findings import VARIANTS, forked_from, variant_finished

EVALS = ("sdzero/eval-base.json", "sdzero/eval-srt.json", "sdzero/eval-sdzero.json", "eval-rft.json",
         "eval-grpo.json", "eval-sdft.json")
AS_IS = ("sdzero/stages.json", "sdzero/distill/log.jsonl", "sdzero/distill/selfloc/*.jsonl", "baselines.json",
         # the Phase-1 tuples (~0.5 MB): a later session forks the variants that retrain SRT or skip it from them
         "sdzero/phase1/kept.jsonl", "sdzero/phase1/sdzero.json", "sdzero/phase1/collect_signature.json")
# a variant of `sdzero findings` is a run folder of its own (no sdzero/ level)
VARIANT_EVALS = ("eval-srt.json", "eval-sdzero.json")
VARIANT_AS_IS = ("stages.json", "distill/log.jsonl", "distill/selfloc/*.jsonl")
QUESTION_NUMBERS = ("id", "rewards", "greedy_reward", "revision_rewards")  # what findings pairs per question


def numbers_only(report: dict) -> dict:
    """An evaluation report without its text: config, metrics, and per question its id and rewards."""
    questions = [{k: q[k] for k in QUESTION_NUMBERS if k in q} for q in report.get("questions") or []]
    return {"config": report.get("config"), "metrics": report["metrics"], "questions": questions}


def copy_numbers(src: Path, dst: Path, as_is: tuple[str, ...], evals: tuple[str, ...]) -> list[str]:
    """The files named by `as_is` (globs allowed) copied, the `evals` without their text; relative names."""
    copied = []
    for pattern in as_is:
        for f in sorted(src.glob(pattern)):
            if f.is_file():
                rel = f.relative_to(src)
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst / rel)
                copied.append(str(rel))
    for rel in evals:
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(dst / rel, numbers_only(json.loads((src / rel).read_text())))
            copied.append(rel)
    return copied


def archive_seed(src: Path, dst: Path) -> list[str]:
    """Copy one seed folder's numbers from `src` to `dst` (written beside it, then renamed in)."""
    if not (src / "sdzero" / "stages.json").is_file():
        raise SDZeroError(f"{src} is not a compare seed folder (no sdzero/stages.json)")
    return replace_dir(dst, lambda tmp: copy_numbers(src, tmp, AS_IS, EVALS))


def archive_variants(src: Path, dst: Path, seed: int) -> dict[str, list[str]]:
    """The finished `sdzero findings` variants of seed `seed` in compare folder `src`, into archive `dst`, by
    what happened to each: archived; unfinished (left out: their models are not archived, so a later session
    starts them anew); unknown (not a variant of this version); and dropped: an archived variant forked from
    another run of the seed than the one just archived (it would no longer pair with it)."""
    done: dict[str, list[str]] = {"archived": [], "unfinished": [], "unknown": [], "dropped": []}
    for folder in sorted((src / "variants").glob(f"*/seed-{seed}")):
        name = folder.parent.name
        if name not in VARIANTS:
            done["unknown"].append(name)
        elif not variant_finished(src, seed, name):
            done["unfinished"].append(name)
        else:
            replace_dir(dst / "variants" / name / folder.name,
                        lambda tmp, f=folder: copy_numbers(f, tmp, VARIANT_AS_IS, VARIANT_EVALS))
            done["archived"].append(name)
    for folder in sorted((dst / "variants").glob(f"*/seed-{seed}")):
        name = folder.parent.name
        if name in VARIANTS and not forked_from(dst / f"seed-{seed}" / "sdzero", folder, VARIANTS[name][0]):
            shutil.rmtree(folder)
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
            done["dropped"].append(name)
    return done


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
            said = {"archived": "variants {} -> " + str(dst / "variants"),
                    "unfinished": "not finished, not archived: {}", "unknown": "not a known variant, not archived: {}",
                    "dropped": "forked from another run of the seed, removed from the archive: {}"}
            for what, names in archive_variants(src, dst, seed).items():
                if names:
                    print(f"seed {seed}: " + said[what].format(", ".join(names)))
    except SDZeroError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
