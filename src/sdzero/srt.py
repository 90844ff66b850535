"""`sdzero srt`: Self-Revision Training on the tuples kept by `sdzero collect` (paper Eq. 1-3).

Each kept tuple (x, y_init, P_r, y_revised) becomes two supervised records, built from the stored ids:

  revision   input  chat(x) + y_init + sep P_r sep | y_revised <eot>
             labels  -100 ...                        | y_revised <eot>
  generation input  chat(x) | y_init + sep P_r sep + y_revised <eot>
             labels  -100   | y_init + sep P_r sep + y_revised <eot>

L_SRT = L_revision + L_generation. In joint mode (default) both records of every tuple go into one
shuffled dataset and the loss is the mean NLL over all supervised tokens of a batch: the paper's plain
NLL sum, up to the per-batch normalisation. Sequential mode (the official code) trains on the
generation records first, then on the revision records. The prompt is never supervised.

Training is the shared supervised loop (`sdzero.training.train_records`: transformers' Trainer with
checkpoints, resume, a cosine schedule and `accelerate launch`; fp32 master weights, bf16 autocast,
padding-free batches). LoRA through peft is optional and merged into the saved model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError
from sdzero.logs import info
from sdzero.training import SFTConfig, sft_record


@dataclass
class SRTConfig(SFTConfig):
    """SRT's data and loss terms on top of the supervised loop's settings (`sdzero.training.SFTConfig`)."""

    data_dir: str = field(default="outputs/phase1", metadata={"help": "Output of `sdzero collect`."})
    output_dir: str = field(default="outputs/srt", metadata={"help": "Checkpoints go to OUTPUT_DIR/checkpoints, "
                                                                      "the trained model to OUTPUT_DIR/model."})
    mode: str = field(default="joint", metadata={"help": "joint (L_rev + L_gen together, paper) or sequential "
                                                         "(generation stage, then revision stage; official code)."})
    revision_loss: bool = field(default=True, metadata={"help": "Train the revision term L_revision."})
    generation_loss: bool = field(default=True, metadata={"help": "Train the generation term L_generation."})
    skip: bool = field(default=False, metadata={
        "help": "No training: the starting model is saved unchanged as the SRT model, so Phase 2 starts from it "
                "(the paper's 'Phase 2 without SRT' ablation)."})
    max_length: int = field(default=1024, metadata={"help": "Longest record; y_init is truncated to fit, never "
                                                             "the question or the revision (else the tuple is "
                                                             "dropped and counted)."})

    def validate(self) -> None:
        if self.mode not in ("joint", "sequential"):
            raise SDZeroError(f"mode must be joint or sequential, not {self.mode!r}")
        if not (self.revision_loss or self.generation_loss):
            raise SDZeroError("both loss terms are switched off: nothing to train")
        super().validate()


def build_revision_record(prompt_ids: Sequence[int], y_init_ids: Sequence[int], suffix_ids: Sequence[int],
                          y_revised_ids: Sequence[int], eot_id: int, max_length: int) -> dict[str, list[int]] | None:
    """Reviser context -> revision. Only the revision and its end-of-turn token are supervised."""
    target = list(y_revised_ids) + [eot_id]
    room = max_length - len(prompt_ids) - len(suffix_ids) - len(target)
    if room < 0:
        return None
    return sft_record(list(prompt_ids) + list(y_init_ids)[:room] + list(suffix_ids), target)


def build_generation_record(prompt_ids: Sequence[int], y_init_ids: Sequence[int], suffix_ids: Sequence[int],
                            y_revised_ids: Sequence[int], eot_id: int,
                            max_length: int) -> dict[str, list[int]] | None:
    """Question -> the whole self-revision trace. Everything after the prompt is supervised."""
    room = max_length - len(prompt_ids) - len(suffix_ids) - len(y_revised_ids) - 1
    if room < 0:
        return None
    return sft_record(prompt_ids, list(y_init_ids)[:room] + list(suffix_ids) + list(y_revised_ids) + [eot_id])


def build_records(rows: Sequence[dict[str, Any]], suffix: dict[float, list[int]], eot_id: int, max_length: int,
                  revision: bool = True, generation: bool = True) -> tuple[list[dict], list[dict], int]:
    """(revision records, generation records, tuples dropped for length)."""
    rev, gen, dropped = [], [], 0
    for row in rows:
        args = (row["prompt_ids"], row["y_init_ids"], suffix[1.0 if row["r_init"] >= 1.0 else 0.0],
                row["y_revised_ids"], eot_id, max_length)
        r = build_revision_record(*args) if revision else None
        g = build_generation_record(*args) if generation else None
        if (revision and r is None) or (generation and g is None):
            dropped += 1
            continue
        if r is not None:
            rev.append(r)
        if g is not None:
            gen.append(g)
    return rev, gen, dropped


def train_srt(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], phrases: Any,
              cfg: SRTConfig) -> tuple[Any, dict[str, Any]]:
    """SRT on kept tuples: (the trained model, LoRA merged; a summary). `model` is a name, a path or a model
    object (trained in place)."""
    from sdzero.chat import turn_end_id
    from sdzero.training import apply_lora, load_model_to_train, loss_history, train_records

    eot = turn_end_id(tokenizer)  # the chat template's end of turn, not always eos
    suffix = phrases.suffix_ids(tokenizer)
    rev, gen, dropped = build_records(rows, suffix, eot, cfg.max_length, cfg.revision_loss, cfg.generation_loss)
    if not rev and not gen:
        raise SDZeroError(f"every kept tuple is longer than max_length={cfg.max_length}; raise it")
    lm = load_model_to_train(model)
    if cfg.use_lora:
        lm = apply_lora(lm, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
    t0 = time.perf_counter()
    history: dict[str, list] = {}
    if cfg.mode == "joint":
        history["joint"] = train_records(lm, rev + gen, cfg, tokenizer.pad_token_id, "joint")
    else:
        if gen:
            history["generation"] = train_records(lm, gen, cfg, tokenizer.pad_token_id, "stage1-generation")
        if rev:
            history["revision"] = train_records(lm, rev, cfg, tokenizer.pad_token_id, "stage2-revision")
    if cfg.use_lora:
        lm = lm.merge_and_unload()
    summary = {
        "control_phrases": phrases.to_dict(),
        "base_model": str(model) if isinstance(model, (str, Path)) else getattr(lm.config, "_name_or_path", ""),
        "srt": asdict(cfg),
        "tuples": len(rows), "revision_records": len(rev), "generation_records": len(gen),
        "dropped_for_length": dropped, "seconds": round(time.perf_counter() - t0, 1),
        "loss_history": {k: loss_history(v) for k, v in history.items()},
    }
    return lm, summary


def run_srt(model_name: str, cfg: SRTConfig) -> dict[str, Any]:
    """Train on cfg.data_dir and save the model; returns the summary stored in its sdzero.json."""
    from sdzero.chat import ControlPhrases
    from sdzero.config import read_meta
    from sdzero.models import load_tokenizer
    from sdzero.runfolder import load_kept
    from sdzero.training import save_on_main_process

    cfg.validate()
    done = read_meta(Path(cfg.output_dir) / "model")
    if cfg.resume and done and "srt" in done:
        info(f"[srt] {cfg.output_dir}/model is already trained; nothing to do (--resume false retrains)")
        return done
    rows, data_meta = load_kept(cfg.data_dir)
    phrases = ControlPhrases.from_dict(data_meta.get("control_phrases"))  # the phrases the revisions saw
    tokenizer = load_tokenizer(model_name)
    if cfg.skip:
        from sdzero.training import load_model_to_train

        info(f"[srt] skip: {model_name} is saved unchanged as the SRT model")
        model = load_model_to_train(model_name)
        summary = {"control_phrases": phrases.to_dict(), "base_model": str(model_name), "srt": asdict(cfg),
                   "skipped": True, "tuples": len(rows), "revision_records": 0, "generation_records": 0,
                   "dropped_for_length": 0, "seconds": 0.0, "loss_history": {}}
        save_on_main_process(model, tokenizer, Path(cfg.output_dir) / "model", summary)
        return summary
    model, summary = train_srt(model_name, tokenizer, rows, phrases, cfg)
    save_on_main_process(model, tokenizer, Path(cfg.output_dir) / "model", summary)
    return summary
