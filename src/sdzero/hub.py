"""Pushing a trained model to the Hugging Face Hub with a model card that says how it was made: the settings
of the run, the measured numbers (each model's evaluation, the split they were measured on) and the control
phrases the model learned (a user of the model needs them to make it revise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_text

# The run settings the card lists: what made the model (the rest is in stages.json, uploaded beside it).
CARD_SETTINGS = ("model", "task", "eval_size", "phase1_size", "phase2_size", "max_new_tokens", "temperature",
                 "collect_drafts_per_question", "collect_revisions_per_draft", "collect_pair_right_drafts",
                 "srt_learning_rate", "srt_num_train_epochs", "srt_generation_loss", "distill_max_steps",
                 "distill_questions_per_step", "distill_learning_rate", "distill_divergence", "distill_divergence_kind",
                 "distill_teacher", "seed")


def model_card(repo_id: str, state: dict[str, Any], table: dict[str, dict[str, Any]],
               phrases: dict[str, str]) -> str:
    """README.md for the Hub: what the model is, how it was trained, what was measured."""
    settings = state.get("settings", {})
    split = "validation" if settings.get("eval_split") == "validation" else "held-out"
    k = next((m.get("samples_per_question") for m in table.values()), None)
    lines = ["---", "library_name: transformers", "tags:", "- sdzero", "- self-distillation", "---", "",
             f"# {repo_id}", "",
             f"{settings.get('model', 'A model')} post-trained with SD-Zero (Self-Distillation Zero) by "
             f"[sdzero](https://github.com/): Phase 1 Self-Revision Training, then Phase 2 on-policy "
             f"self-distillation, on `{settings.get('task', '?')}`.", "",
             "## Control phrases", "",
             "The model learned to revise its own answer after one of these phrases, chosen by whether the answer "
             "was right (separator: the text between the answer, the phrase and the revision):", "",
             f"- right: `{phrases.get('correct')}`", f"- wrong: `{phrases.get('wrong')}`",
             f"- separator: `{json.dumps(phrases.get('separator'))}`", "",
             f"## Measured ({split} questions, avg@{k})", "",
             "| model | avg@k | greedy | pass@k |", "|---|---|---|---|"]
    for name, m in table.items():
        lines.append(f"| {name} | {m.get(f'avg@{k}', float('nan')):.3f} | {m.get('greedy_accuracy', float('nan')):.3f}"
                     f" | {m.get(f'pass@{k}', float('nan')):.3f} |")
    lines += ["", "## Recipe", "", "```yaml"]
    lines += [f"{key}: {json.dumps(settings[key])}" for key in CARD_SETTINGS if key in settings]
    lines += ["```", "", "Every setting of the run: `stages.json` in this repository."]
    return "\n".join(lines) + "\n"


def push_model(model_dir: Path, repo_id: str, card: str, stages_file: Path | None = None, private: bool = False,
               api: Any = None) -> str:
    """Create the repo (if needed) and upload the model folder with its card; returns the repo URL."""
    if not (model_dir / "config.json").is_file():
        raise SDZeroError(f"no trained model at {model_dir} to push")
    atomic_write_text(model_dir / "README.md", card)
    if stages_file is not None and stages_file.is_file():
        atomic_write_text(model_dir / "stages.json", stages_file.read_text())
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), commit_message="sdzero: SD-Zero model and card")
    return str(url)
