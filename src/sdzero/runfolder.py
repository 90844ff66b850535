"""What the stages leave in their folders, read and written in one place:

  phase1/kept.jsonl          Phase-1 tuples (`sdzero collect`), read by SRT
  distill/log.jsonl          Phase 2's per-step log (also SDFT's), read by reports and `sdzero compare`
  stages.json                what `sdzero run` finished, with wall times and the run's settings
  baselines.json             what `sdzero compare` finished for one seed
  STAGE/checkpoints          a training stage's checkpoints, deleted once it finished (unless kept)
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_text, read_jsonl
from sdzero.logs import info

# `sdzero run`'s stages in order, and what each leaves in the run folder
STAGES = ("eval-base", "collect", "srt", "eval-srt", "distill", "eval-sdzero", "report")
STAGE_OUTPUTS = {"eval-base": "eval-base.json", "collect": "phase1", "srt": "srt", "eval-srt": "eval-srt.json",
                 "distill": "distill", "eval-sdzero": "eval-sdzero.json", "report": "report"}
KEPT_FILE = "kept.jsonl"
KEPT_COLUMNS = ("question_id", "prompt", "prompt_ids", "y_init_ids", "r_init", "control_phrase", "y_revised_ids")
LOG_FILE = "log.jsonl"
STAGES_FILE = "stages.json"
BASELINES_FILE = "baselines.json"


# --- Phase-1 tuples -------------------------------------------------------------------------------------------

def load_kept(data_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The kept tuples and the collection's metadata, with clear errors for unusable data."""
    from sdzero.config import read_meta

    data_dir = Path(data_dir)
    f = data_dir / KEPT_FILE
    if not f.is_file():
        raise SDZeroError(f"no collected data at {f}; run `sdzero collect --output_dir {data_dir}` first")
    rows = read_jsonl(f)
    if not rows:
        raise SDZeroError(f"{f} has no kept tuples: no revision was verified correct. Collect on more questions, "
                          "sample more revisions, or start from a stronger model")
    missing = [c for c in KEPT_COLUMNS if c not in rows[0]]
    if missing:
        raise SDZeroError(f"{f} lacks the column(s) {missing}; it was not written by `sdzero collect`")
    return rows, read_meta(data_dir) or {}


# --- the Phase-2 log ------------------------------------------------------------------------------------------

def write_history(output_dir: str | Path, history: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(Path(output_dir) / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history))


def read_history(output_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step log of a Phase-2 run (OUTPUT_DIR/log.jsonl; also there when the model was trained before)."""
    log = Path(output_dir) / LOG_FILE
    return [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []


def summarize_history(history: Sequence[dict[str, Any]], window: int = 5) -> dict[str, Any]:
    """Means of the first and last `window` steps: what moved."""
    def mean(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else math.nan

    first, last = history[:window], history[-window:]
    keys = ("loss", "reward", "response_length", "clipped_share", "kl_correct", "kl_wrong",
            "answer_logprob_teacher_wrong", "answer_logprob_student_wrong", "teacher_above_student_wrong",
            "kl_share_first_wrong", "kl_share_answer_wrong", "kl_share_first_right", "tokens_per_s")
    return {k: {"first": mean(first, k), "last": mean(last, k)} for k in keys}


def reward_curve(history: Sequence[dict[str, Any]], start: int = 0,
                 per_step: int = 0) -> list[dict[str, Any]]:
    """Per step: generations spent so far (from `start`) and the step's reward (accuracy of its own rollouts).
    `per_step` stands in for logs written before steps recorded `responses`."""
    out, spent = [], start
    for h in history:
        spent += h.get("responses", per_step)
        out.append({"generations": spent, "train_accuracy": h["reward"]})
    return out


def history_totals(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Steps, responses and tokens sampled, wall minutes and the minutes of those spent generating rollouts.
    (Logs written before steps recorded `responses` count 0 there.)"""
    return {"steps": len(history), "responses": sum(h.get("responses", 0) for h in history),
            "sampled_tokens": sum(h.get("sampled_tokens", 0) for h in history),
            "minutes": sum(h["step_s"] for h in history) / 60,
            "generation_minutes": sum(h["generation_s"] for h in history) / 60}


def format_history(history: Sequence[dict[str, Any]], window: int = 5) -> str:
    """The console / report summary of a Phase-2 log: first vs last `window` steps, and the totals."""
    t = history_totals(history)
    lines = [f"Phase 2: {t['steps']} steps, {t['minutes']:.1f} min ({t['generation_minutes']:.1f} generating); "
             f"mean of the first {window} -> last {window} steps:"]
    lines += [f"  {k:<16} {v['first']:.4f} -> {v['last']:.4f}" for k, v in summarize_history(history, window).items()]
    return "\n".join(lines)


# --- what a run or a compare seed finished ----------------------------------------------------------------------

def read_record(path: Path) -> dict[str, Any]:
    """stages.json / baselines.json: {} when absent."""
    return json.loads(path.read_text()) if path.is_file() else {}


def read_stages(run_dir: str | Path) -> dict[str, Any]:
    return read_record(Path(run_dir) / STAGES_FILE)


# What a setting missing from an older run's record meant when that run was made, where today's default says
# otherwise: SRT trained both loss terms until the embedded default moved to L_revision alone (issue 13).
SETTINGS_BEFORE_RECORDED = {"srt_generation_loss": True}


def recorded_settings(state: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded settings (stages.json's), with what an older record left out but meant."""
    return {**SETTINGS_BEFORE_RECORDED, **state.get("settings", {})}


def write_stages(run_dir: str | Path, state: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / STAGES_FILE, state)


def read_baselines(seed_dir: str | Path) -> dict[str, Any]:
    return read_record(Path(seed_dir) / BASELINES_FILE)


def write_baselines(seed_dir: str | Path, state: dict[str, Any]) -> None:
    atomic_write_json(Path(seed_dir) / BASELINES_FILE, state)


def drop_checkpoints(stage_dir: str | Path) -> None:
    """Delete STAGE_DIR/checkpoints once the stage is recorded finished: a finished stage is never resumed, and
    its checkpoints (weights, optimizer state, teacher) outweigh the model many times (3 GB for the 135M default,
    per stage). A linked folder (a findings variant sharing another run's stage) is left alone."""
    target = Path(stage_dir) / "checkpoints"
    if Path(stage_dir).is_symlink() or target.is_symlink() or not target.is_dir():
        return
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    shutil.rmtree(target, ignore_errors=True)
    info(f"[run] {Path(stage_dir).name}: finished, its checkpoints removed ({size / 1e9:.1f} GB; "
         "--keep_checkpoints keeps them)")
