"""Issue 13's ablation: which Phase-1 / Phase-2 setting makes the reviser a better fixer than resampling, and
does Phase 2 then help? Measured on a validation split, never on the held-out set.

Every row is one `sdzero run` on the embedded default with the paper's Phase 1 (collection, SRT on both loss
terms) and a few flags changed (the row "pairs-8-revision-only" is today's embedded default), evaluated on
200 validation questions (`--validation_size 200 --eval_split validation`; the held-out set is not
touched). Rows and seeds already finished are skipped (each run resumes by itself), so the script can be
stopped and started again.

    python scripts/ablate_reviser.py                         # every row, seed 0
    python scripts/ablate_reviser.py --rows fixed,pairs --seeds 0,1,2
    python scripts/ablate_reviser.py --table-only            # the table from what is on disk

After each run, `answer_probe.py` measures the SRT model on 96 Phase-2 questions (the premise of Phase 2:
does the teacher give the student's wrong answers less probability than the student does?).

The table: the premise first (correction rate after SRT against the fresh-resample reference), then the
Phase-1 tuples, the answer probe, Phase 2's reward (first / last 5 steps) and the answer-token probe (how
often, on wrong responses, the teacher gives the response's own answer more probability than the student
does), then validation avg@2 and greedy accuracy for base / SRT / SD-Zero, and the run's minutes. With
several seeds, each cell is the mean and the +- is the sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

COMMON = ["--validation_size", "200", "--eval_split", "validation"]
# Every row starts from the paper's Phase 1, its collection and SRT on both loss terms (the embedded default
# before this ablation chose pairs-8 and then L_revision alone), so a row's flags say what it changes and a
# row means what it meant when it was run.
PAPER_PHASE1 = ["--collect_drafts_per_question", "1", "--collect_revisions_per_draft", "3",
                "--collect_revise_correct", "true", "--collect_pair_right_drafts", "false",
                "--srt_generation_loss", "true"]
# name -> (what it tests, flags on top of the embedded default with PAPER_PHASE1)
ROWS: dict[str, tuple[str, list[str]]] = {
    "fixed": ("the embedded default with the six fixes (running suffix), the paper's collection", []),
    "standalone": ("suffix tokenized standalone (the old ids)", ["--suffix_tokenization", "standalone"]),
    "no-rephrase": ("only wrong drafts revised (official code)", ["--collect_revise_correct", "false"]),
    "phase1-x4": ("a Phase-1 set 4x larger (512 questions)", ["--phase1_size", "512"]),
    "pairs": ("4 drafts per question, wrong drafts paired with right drafts, no sampled revisions "
              "(same 512 Phase-1 generations)",
              ["--collect_drafts_per_question", "4", "--collect_revisions_per_draft", "0",
               "--collect_pair_right_drafts", "true", "--collect_revise_correct", "false"]),
    "pairs-8": ("pairs with 8 drafts per question (1024 Phase-1 generations)",
                ["--collect_drafts_per_question", "8", "--collect_revisions_per_draft", "0",
                 "--collect_pair_right_drafts", "true", "--collect_revise_correct", "false"]),
    "skip-first": ("no loss on each response's first token", ["--distill_skip_first_tokens", "1"]),
    "lr-2x": ("Phase-2 learning rate 1e-5", ["--distill_learning_rate", "1e-5"]),
}
PAIRS = ROWS["pairs"][1]
ROWS["pairs-both"] = ("pairs, and right drafts paired with another right draft after 'rephrase'",
                      [f for f in PAIRS if f not in ("--collect_revise_correct", "false")])
ROWS.update({
    "pairs-skip-first": ("pairs + no loss on each response's first token", PAIRS + ROWS["skip-first"][1]),
    "pairs-lr-2x": ("pairs + Phase-2 learning rate 1e-5", PAIRS + ROWS["lr-2x"][1]),
    "pairs-standalone": ("pairs + the standalone suffix ids", PAIRS + ROWS["standalone"][1]),
    "pairs-srt-lr3x": ("pairs + SRT learning rate 3e-5", PAIRS + ["--srt_learning_rate", "3e-5"]),
    "pairs-revision-only": ("pairs + SRT on L_revision alone", PAIRS + ["--srt_generation_loss", "false"]),
    "pairs-8-final-attempt": ("pairs-8 + Phase-2 loss on each response's final attempt only",
                              ROWS["pairs-8"][1] + ["--distill_loss_tokens", "final_attempt"]),
    "pairs-8-revision-only": ("pairs-8 + SRT on L_revision alone (the generator is not taught traces)",
                              ROWS["pairs-8"][1] + ["--srt_generation_loss", "false"]),
})
# Rows whose first stages are another row's (same seed, same settings up to them): row -> (that row, the
# last stage they share), so that --start_from_shared reuses them instead of running them again.
SHARED_STAGES = {"pairs-8-final-attempt": ("pairs-8", "eval-srt"), "pairs-8-revision-only": ("pairs-8", "collect")}


def run_dir(root: Path, row: str, seed: int) -> Path:
    return root / f"{row}-seed{seed}"


def start_from(root: Path, row: str, seed: int) -> None:
    """Begin a row with the finished stages it shares with another row's run of the same seed (Phase 1, and
    SRT when that is shared too), forked as `sdzero findings` forks its variants: `sdzero run` then sees only
    the later stages' settings changed and runs those. When the SRT model is shared, so is its answer probe."""
    import os

    from sdzero.findings import fork_run

    source_row, last = SHARED_STAGES[row]
    out, source = run_dir(root, row, seed), run_dir(root, source_row, seed)
    fork_run(source, out, last)
    probe = out / "answer-probe.json"
    if last == "eval-srt" and (source / probe.name).is_file() and not probe.exists():
        probe.symlink_to(os.path.relpath(source / probe.name, out))


def run_row(root: Path, row: str, seed: int, extra: list[str]) -> None:
    out = run_dir(root, row, seed)
    if (out / "report" / "results.json").is_file():
        print(f"[ablate] {row} seed {seed}: done before", flush=True)
        return
    cmd = [sys.executable, "-m", "sdzero", "run", *COMMON, *PAPER_PHASE1, *ROWS[row][1], "--seed", str(seed),
           "--output_dir", str(out), *extra]
    print("[ablate] " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def probe_row(root: Path, row: str, seed: int) -> None:
    """The answer-token probe of the row's SRT model on 96 Phase-2 questions (scripts/answer_probe.py)."""
    out = run_dir(root, row, seed)
    if (out / "srt" / "model").is_dir() and not (out / "answer-probe.json").is_file():
        subprocess.run([sys.executable, str(Path(__file__).with_name("answer_probe.py")), str(out),
                        "--questions", "96"], check=True)


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def row_numbers(out: Path) -> dict[str, float]:
    """One run's numbers for the table (NaN where a stage has not finished)."""
    def metrics(stage: str) -> dict:
        f = out / f"{stage}.json"
        return json.loads(f.read_text())["metrics"] if f.is_file() else {}

    nan = math.nan
    base, srt, sdz = metrics("eval-base"), metrics("eval-srt"), metrics("eval-sdzero")
    stats = {}
    if (out / "phase1" / "sdzero.json").is_file():
        stats = json.loads((out / "phase1" / "sdzero.json").read_text())["stats"]
    log = out / "distill" / "log.jsonl"
    hist = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    stages = json.loads((out / "stages.json").read_text()) if (out / "stages.json").is_file() else {}
    first, last = hist[:5], hist[-5:]
    probe = json.loads((out / "answer-probe.json").read_text()) if (out / "answer-probe.json").is_file() else {}
    return {
        "probe_above": probe.get("teacher_above_student_wrong", nan),
        "probe_n": probe.get("answer_responses_wrong", nan),
        "probe_t": probe.get("answer_logprob_teacher_wrong", nan),
        "probe_s": probe.get("answer_logprob_student_wrong", nan),
        "correction": srt.get("correction_rate", nan), "resample": srt.get("resample_accuracy_on_wrong", nan),
        "base_correction": base.get("correction_rate", nan),
        "kept_wrong": sum(stats.get(k, 0) for k in ("kept_from_wrong", "kept_draft_pairs", "kept_draft_pairs_wrong"))
        if stats else nan,
        "kept_right": stats.get("kept_from_right", 0) + stats.get("kept_draft_pairs_right", 0) if stats else nan,
        "reward_first": _mean([h["reward"] for h in first]), "reward_last": _mean([h["reward"] for h in last]),
        "teacher_above": _mean([h.get("teacher_above_student_wrong") for h in hist]),
        "teacher_above_last": _mean([h.get("teacher_above_student_wrong") for h in last]),
        "base_avg": base.get("avg@2", nan), "base_greedy": base.get("greedy_accuracy", nan),
        "srt_avg": srt.get("avg@2", nan), "srt_greedy": srt.get("greedy_accuracy", nan),
        "sdz_avg": sdz.get("avg@2", nan), "sdz_greedy": sdz.get("greedy_accuracy", nan),
        "sdz_len": sdz.get("mean_response_tokens", nan),
        "minutes": sum(s["seconds"] for k, s in stages.items() if isinstance(s, dict) and "seconds" in s) / 60,
    }


def cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(root: Path, rows: list[str], seeds: list[int]) -> str:
    head = ("| row | seeds | correction after SRT (%) | fresh resample (%) | Phase-1 tuples wrong->right / right | "
            "SRT model, 96 Phase-2 questions: teacher above student on wrong answers (share, n); answer log-prob "
            "teacher / student | "
            "Phase-2 reward first -> last 5 | teacher above student on wrong answers (all / last 5 steps) | "
            "base avg@2 / greedy | SRT avg@2 / greedy | SD-Zero avg@2 / greedy | SD-Zero tokens | min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        got = [row_numbers(run_dir(root, row, s)) for s in seeds if (run_dir(root, row, s) / "stages.json").is_file()]
        if not got:
            continue
        col = lambda k: [g[k] for g in got]  # noqa: E731
        lines.append(
            f"| {row} | {len(got)} | {cell(col('correction'), 100)} | {cell(col('resample'), 100)} | "
            f"{cell(col('kept_wrong'), digits=0)} / {cell(col('kept_right'), digits=0)} | "
            f"{cell(col('probe_above'), digits=2)} ({cell(col('probe_n'), digits=0)}); "
            f"{cell(col('probe_t'), digits=2)} / {cell(col('probe_s'), digits=2)} | "
            f"{cell(col('reward_first'), digits=2)} -> {cell(col('reward_last'), digits=2)} | "
            f"{cell(col('teacher_above'), digits=2)} / {cell(col('teacher_above_last'), digits=2)} | "
            f"{cell(col('base_avg'), 100)} / {cell(col('base_greedy'), 100)} | "
            f"{cell(col('srt_avg'), 100)} / {cell(col('srt_greedy'), 100)} | "
            f"{cell(col('sdz_avg'), 100)} / {cell(col('sdz_greedy'), 100)} | {cell(col('sdz_len'))} | "
            f"{cell(col('minutes'))} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--root", default="outputs/ablate")
    ap.add_argument("--table-only", action="store_true", help="no runs, no probes: the table from what is on disk")
    ap.add_argument("--start_from_shared", action="store_true",
                    help=f"rows {', '.join(SHARED_STAGES)} reuse the finished stages they share with another "
                         "row's run (see SHARED_STAGES)")
    ap.add_argument("extra", nargs="*", help="more `sdzero run` flags for every row (after --)")
    args = ap.parse_args()
    rows, seeds, root = args.rows.split(","), [int(s) for s in args.seeds.split(",")], Path(args.root)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if not args.table_only:
        for seed in seeds:
            for row in rows:
                if args.start_from_shared and row in SHARED_STAGES:
                    start_from(root, row, seed)
                run_row(root, row, seed, args.extra)
                probe_row(root, row, seed)
    text = table(root, rows, seeds)
    print(text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
