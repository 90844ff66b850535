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

Training is transformers' Trainer (checkpoints, resume, cosine schedule, `accelerate launch`), with fp32
master weights; `precision=bf16` adds bf16 autocast (pure bf16 weights lose AdamW updates at small
learning rates). LoRA through peft is optional and merged into the saved model.

Batches are padding-free by default (`padding_free`): the records of a batch are laid end to end in one
row with positions restarting at 0 for each, so the model's attention keeps each record to itself and no
compute goes to padding, and only the positions whose next token is supervised are projected onto the
vocabulary. Same batches, same loss (sum of the supervised tokens' NLL over their count) as padded
batches: tests pin the two to each other.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import atomic_write_json, make_temp_dir

IGNORE = -100


@dataclass
class SRTConfig:
    data_dir: str = field(default="outputs/phase1", metadata={"help": "Output of `sdzero collect`."})
    output_dir: str = field(default="outputs/srt", metadata={"help": "Checkpoints go to OUTPUT_DIR/checkpoints, "
                                                                      "the trained model to OUTPUT_DIR/model."})
    mode: str = field(default="joint", metadata={"help": "joint (L_rev + L_gen together, paper) or sequential "
                                                         "(generation stage, then revision stage; official code)."})
    revision_loss: bool = field(default=True, metadata={"help": "Train the revision term L_revision."})
    generation_loss: bool = field(default=True, metadata={"help": "Train the generation term L_generation."})
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW peak learning rate (paper: 5e-6)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine)."})
    warmup_steps: float = field(default=0.03, metadata={"help": "Linear warmup: a whole number of steps, or a "
                                                                "float in [0, 1) = share of all steps."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the records (per stage)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Records per device per step."})
    padding_free: bool = field(default=True, metadata={"help": "Lay a batch's records end to end instead of "
                                                                "padding them, and project only supervised "
                                                                "positions onto the vocabulary (same loss, "
                                                                "faster); false: padded batches."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    max_length: int = field(default=1024, metadata={"help": "Longest record; y_init is truncated to fit, never "
                                                             "the question or the revision (else the tuple is "
                                                             "dropped and counted)."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 (fp32 weights + bf16 autocast) | fp32."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Modules given adapters."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N optimizer steps."})
    logging_steps: int = field(default=5, metadata={"help": "Log every N optimizer steps."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in OUTPUT_DIR."})
    report_to: str = field(default="none", metadata={"help": "Trackers: none, tensorboard, trackio, wandb."})
    seed: int = field(default=0, metadata={"help": "Training seed (shuffling, initialisation of adapters)."})

    def validate(self) -> None:
        if self.mode not in ("joint", "sequential"):
            raise SDZeroError(f"mode must be joint or sequential, not {self.mode!r}")
        if not (self.revision_loss or self.generation_loss):
            raise SDZeroError("both loss terms are switched off: nothing to train")
        require_at_least(self, 1, "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                         "save_steps", "logging_steps", "lora_r")
        if not self.num_train_epochs > 0:
            raise SDZeroError(f"num_train_epochs must be above 0, not {self.num_train_epochs}")


def build_revision_record(prompt_ids: Sequence[int], y_init_ids: Sequence[int], suffix_ids: Sequence[int],
                          y_revised_ids: Sequence[int], eot_id: int, max_length: int) -> dict[str, list[int]] | None:
    """Reviser context -> revision. Only the revision and its end-of-turn token are supervised."""
    target = list(y_revised_ids) + [eot_id]
    room = max_length - len(prompt_ids) - len(suffix_ids) - len(target)
    if room < 0:
        return None
    context = list(prompt_ids) + list(y_init_ids)[:room] + list(suffix_ids)
    return {"input_ids": context + target, "labels": [IGNORE] * len(context) + target}


def build_generation_record(prompt_ids: Sequence[int], y_init_ids: Sequence[int], suffix_ids: Sequence[int],
                            y_revised_ids: Sequence[int], eot_id: int,
                            max_length: int) -> dict[str, list[int]] | None:
    """Question -> the whole self-revision trace. Everything after the prompt is supervised."""
    room = max_length - len(prompt_ids) - len(suffix_ids) - len(y_revised_ids) - 1
    if room < 0:
        return None
    trace = list(y_init_ids)[:room] + list(suffix_ids) + list(y_revised_ids) + [eot_id]
    return {"input_ids": list(prompt_ids) + trace, "labels": [IGNORE] * len(prompt_ids) + trace}


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


class PadCollator:
    """Right-pads input_ids with the pad id and labels with -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class PackCollator:
    """Padding-free batches: the records end to end in one row, positions restarting at 0 for each and no
    attention mask (transformers then builds a block-causal mask from the positions, so no record attends
    to another), plus `logits_to_keep`: the positions whose next token is supervised, the only ones the
    model projects onto the vocabulary. The loss is `supervised_nll`."""

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        ids, labels, positions = [], [], []
        for b in batch:
            ids += b["input_ids"]
            labels += [IGNORE] + list(b["labels"][1:])  # a record's first token is never a target of the one before
            positions += range(len(b["input_ids"]))
        labels_t = torch.tensor([labels])
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]), "labels": labels_t,
                "logits_to_keep": (labels_t[0, 1:] != IGNORE).nonzero().squeeze(-1),
                "use_cache": False}  # with a cache, transformers would not build the per-record mask


def supervised_nll(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Trainer's `compute_loss_func` for PackCollator batches: the summed NLL of the supervised tokens over
    their count (over the whole accumulated batch when the Trainer passes it), as the model's own loss."""
    import torch.nn.functional as F

    targets = labels[0, 1:]
    targets = targets[targets != IGNORE]
    nll = F.cross_entropy(outputs.logits[0].float(), targets, reduction="sum")
    return nll / (num_items_in_batch if num_items_in_batch is not None else targets.numel())


def _nan_guard():
    from transformers import TrainerCallback

    class NaNGuard(TrainerCallback):
        """Stop with a clear error the moment the logged loss is NaN/inf (checkpoints so far are kept)."""

        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise SDZeroError(f"training loss became {loss} at step {state.global_step}; lower the learning "
                                  "rate or use precision=fp32 (the last good checkpoint is kept)")

    return NaNGuard()


def _use_bf16(precision: str) -> bool:
    import torch

    from sdzero.models import cpu_supports_bf16

    if precision == "auto":
        return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_supports_bf16()
    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    raise SDZeroError(f"precision must be auto, bf16 or fp32, not {precision!r}")


def train_records(model: Any, records: list[dict], cfg: SRTConfig, pad_id: int, stage: str) -> list[dict]:
    """One Trainer run over `records`; returns its log history. Resumes from this stage's last checkpoint."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(cfg.output_dir) / "checkpoints" / stage
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    bf16 = _use_bf16(cfg.precision)
    warmup = int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else cfg.warmup_steps  # steps, or a share of them
    args = TrainingArguments(
        output_dir=str(ckpt_dir), learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=warmup, num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed,
        data_seed=cfg.seed, report_to=[] if cfg.report_to == "none" else cfg.report_to.split(","),
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False,
    )
    packed = {"data_collator": PackCollator(), "compute_loss_func": supervised_nll} if cfg.padding_free else \
        {"data_collator": PadCollator(pad_id)}
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(records), callbacks=[_nan_guard()],
                      **packed)
    last = get_last_checkpoint(str(ckpt_dir)) if cfg.resume else None
    if last:
        print(f"[srt] resuming {stage} from {last}", flush=True)
    trainer.train(resume_from_checkpoint=last)
    return trainer.state.log_history


def save_model(model: Any, tokenizer: Any, target: Path, meta: dict[str, Any]) -> None:
    """Save to a temp dir beside the target, then rename: the model dir is complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target.parent, f".{target.name}-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "sdzero.json", meta)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_srt(model_name: str, cfg: SRTConfig) -> dict[str, Any]:
    """Train on cfg.data_dir and save the model; returns the summary stored in its sdzero.json."""
    from sdzero.chat import ControlPhrases, turn_end_id
    from sdzero.collect import load_kept
    from sdzero.models import load_model, load_tokenizer

    cfg.validate()
    from sdzero.config import read_meta

    done = read_meta(Path(cfg.output_dir) / "model")
    if cfg.resume and done and "srt" in done:
        print(f"[srt] {cfg.output_dir}/model is already trained; nothing to do (--resume false retrains)", flush=True)
        return done
    rows, data_meta = load_kept(cfg.data_dir)
    phrases = ControlPhrases.from_dict(data_meta.get("control_phrases"))  # the phrases the revisions saw
    tokenizer = load_tokenizer(model_name)
    eot = turn_end_id(tokenizer)  # the chat template's end of turn, not always eos
    suffix = phrases.suffix_ids(tokenizer)
    rev, gen, dropped = build_records(rows, suffix, eot, cfg.max_length, cfg.revision_loss, cfg.generation_loss)
    if not rev and not gen:
        raise SDZeroError(f"every kept tuple is longer than max_length={cfg.max_length}; raise it")
    model = load_model(model_name, dtype="fp32")  # fp32 master weights; bf16 only through autocast
    model.config.use_cache = False
    if cfg.use_lora:
        from peft import LoraConfig, get_peft_model

        target = cfg.lora_target_modules
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=target if target == "all-linear" else
                                                 target.split(","), task_type="CAUSAL_LM"))
    t0 = time.perf_counter()
    history: dict[str, list] = {}
    if cfg.mode == "joint":
        history["joint"] = train_records(model, rev + gen, cfg, tokenizer.pad_token_id, "joint")
    else:
        if gen:
            history["generation"] = train_records(model, gen, cfg, tokenizer.pad_token_id, "stage1-generation")
        if rev:
            history["revision"] = train_records(model, rev, cfg, tokenizer.pad_token_id, "stage2-revision")
    if cfg.use_lora:
        model = model.merge_and_unload()
    model.config.use_cache = True
    summary = {
        "control_phrases": phrases.to_dict(),
        "base_model": model_name,
        "srt": asdict(cfg),
        "tuples": len(rows), "revision_records": len(rev), "generation_records": len(gen),
        "dropped_for_length": dropped, "seconds": round(time.perf_counter() - t0, 1),
        "loss_history": {k: [{"step": h["step"], "loss": h["loss"]} for h in v if "loss" in h]
                         for k, v in history.items()},
    }
    from accelerate import PartialState

    processes = PartialState()  # under `accelerate launch`: every process trained, one writes the model
    if processes.is_main_process:
        save_model(model, tokenizer, Path(cfg.output_dir) / "model", summary)
    processes.wait_for_everyone()
    return summary
