"""The training layer the stages share: precision, loading a model to train, LoRA, the supervised loop
(transformers' Trainer with its collators and a NaN guard) and saving a model from the main process.

SRT and RFT train through `train_records`; Phase 2, SDFT and GRPO take the precision, LoRA, dropout and
saving helpers. Nothing here knows about a stage.

The supervised loop, stated up front:
- fp32 master weights; `precision=bf16` adds bf16 autocast (pure bf16 weights lose AdamW updates at
  small learning rates).
- A record is {"input_ids", "labels"} with the unsupervised positions at -100 (the prompt never counts);
  the loss is the mean NLL over a batch's supervised tokens.
- Batches are padding-free by default: the records laid end to end in one row with positions restarting
  at 0 for each, so attention keeps each record to itself and no compute goes to padding, and only the
  positions whose next token is supervised are projected onto the vocabulary. On SDPA models attention
  then runs record by record (`sdzero.packed_attention`) instead of under a mask over the whole row.
  Same batches, same loss as padded batches (tests pin the two to each other).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import atomic_write_json, replace_dir
from sdzero.logs import info, interactive
from sdzero.packed_attention import packed_attention

IGNORE = -100  # the label of a position that is not supervised


# --- precision, loading, LoRA, dropout, saving ------------------------------------------------------------

def use_bf16(precision: str) -> bool:
    """Whether `precision` (auto | bf16 | fp32) means bf16 autocast on this machine."""
    import torch

    from sdzero.models import cpu_supports_bf16

    if precision == "auto":
        return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_supports_bf16()
    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    raise SDZeroError(f"precision must be auto, bf16 or fp32, not {precision!r}")


def load_model_to_train(model: Any) -> Any:
    """A model name or path loaded with fp32 master weights (bf16 only through autocast), or a model object
    as it is; the KV cache off (training never uses it)."""
    from sdzero.models import load_model

    lm = load_model(str(model), dtype="fp32") if isinstance(model, (str, Path)) else model
    lm.config.use_cache = False
    return lm


def apply_lora(model: Any, r: int, alpha: int, target_modules: str) -> Any:
    """peft LoRA adapters on `target_modules` ("all-linear" or a comma list), no adapter dropout."""
    from peft import LoraConfig, get_peft_model

    target = target_modules if target_modules == "all-linear" else target_modules.split(",")
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target,
                                            task_type="CAUSAL_LM"))


def disable_dropout(model: Any) -> None:
    """Dropout off (the spec). Attention dropout in transformers is a float each attention module copied
    from the config when it was built, not an nn.Dropout: zero both."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def save_model(model: Any, tokenizer: Any, target: Path, meta: dict[str, Any]) -> None:
    """Save to a temp dir beside the target, then rename: the model dir is complete or absent."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "sdzero.json", meta)

    replace_dir(target, fill)


def save_on_main_process(model: Any, tokenizer: Any, target: Path, meta: dict[str, Any]) -> None:
    """Under `accelerate launch` every process trained the same weights; the main one writes them."""
    from accelerate import PartialState

    processes = PartialState()
    if processes.is_main_process:
        was = model.config.use_cache
        model.config.use_cache = True  # the saved model generates with its cache
        try:
            save_model(model, tokenizer, target, meta)
        finally:
            model.config.use_cache = was
    processes.wait_for_everyone()


def check_sharding_applied(distributed_type: Any) -> None:
    """A run launched with an FSDP or DeepSpeed config must run sharded. On a machine without GPUs accelerate
    does not apply FSDP: it runs plain data parallelism (MULTI_CPU, a full model per process) without a word,
    so refuse instead (measured with accelerate's FSDP config on 2 CPU processes; DeepSpeed is not
    installable here without a CUDA torch)."""
    import os

    from accelerate.utils import DistributedType

    asked = "FSDP" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else \
        "DeepSpeed" if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" else None
    got = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}.get(distributed_type)
    if asked and got != asked:
        name = getattr(distributed_type, "name", distributed_type)
        article = "an" if asked == "FSDP" else "a"
        raise SDZeroError(f"accelerate was launched with {article} {asked} config, but it runs {name} here, unsharded: "
                          f"accelerate applies {asked} only on GPUs (without them it gives every process a full "
                          "copy of the model). Use recipes/accelerate/multi_gpu.yaml's data parallelism on CPUs, "
                          f"or GPUs for {asked}")


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def trackers(report_to: str | None) -> list[str]:
    """The trackers asked for, each checked to be known and installed (accelerate would only warn)."""
    import importlib.util

    names = [] if report_to in (None, "", "none") else [t.strip() for t in report_to.split(",") if t.strip()]
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise SDZeroError(f"unknown tracker {name!r} in report_to; choose from none, {', '.join(TRACKER_PACKAGES)}")
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise SDZeroError(f"report_to={name} needs the {TRACKER_PACKAGES[name]} package: "
                              f"pip install {TRACKER_PACKAGES[name]}")
    return names


# --- the supervised loop --------------------------------------------------------------------------------------

@dataclass
class SFTConfig:
    """The supervised loop's settings (SRTConfig extends them; RFT fills them in)."""

    output_dir: str = field(default="outputs/sft", metadata={"help": "Checkpoints go to OUTPUT_DIR/checkpoints, "
                                                                      "the trained model to OUTPUT_DIR/model."})
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
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute layer activations in the backward pass: much less memory for long records, ~1/3 "
                "more compute."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    max_length: int = field(default=1024, metadata={"help": "Longest record; longer ones are dropped."})
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
        require_at_least(self, 1, "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                         "save_steps", "logging_steps", "lora_r")
        if not self.num_train_epochs > 0:
            raise SDZeroError(f"num_train_epochs must be above 0, not {self.num_train_epochs}")
        trackers(self.report_to)  # unknown or not installed: now, not when training starts


def sft_record(prompt_ids: Sequence[int], target_ids: Sequence[int]) -> dict[str, list[int]]:
    """prompt -> target: only the target is supervised."""
    return {"input_ids": list(prompt_ids) + list(target_ids), "labels": [IGNORE] * len(prompt_ids) + list(target_ids)}


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


def nan_guard():
    """A Trainer callback: stop with a clear error the moment the logged loss is NaN/inf."""
    from transformers import TrainerCallback

    class NaNGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise SDZeroError(f"training loss became {loss} at step {state.global_step}; lower the learning "
                                  "rate or use precision=fp32 (the last good checkpoint is kept)")

    return NaNGuard()


def train_records(model: Any, records: list[dict], cfg: SFTConfig, pad_id: int, stage: str) -> list[dict]:
    """One Trainer run over `records`; returns its log history. Resumes from this stage's last checkpoint
    (OUTPUT_DIR/checkpoints/STAGE) when cfg.resume."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from accelerate import PartialState

    check_sharding_applied(PartialState(cpu=not torch.cuda.is_available()).distributed_type)
    ckpt_dir = Path(cfg.output_dir) / "checkpoints" / stage
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    warmup = int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else cfg.warmup_steps  # steps, or a share of them
    # transformers renamed gradient_checkpointing to activation_checkpointing (5.x); use the name it has.
    name = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"
    checkpointing = {name: True, f"{name}_kwargs": {"use_reentrant": False}} if cfg.gradient_checkpointing else {}
    args = TrainingArguments(
        output_dir=str(ckpt_dir), learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=warmup, num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, bf16=use_bf16(cfg.precision), use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed,
        data_seed=cfg.seed, report_to=[] if cfg.report_to == "none" else cfg.report_to.split(","),
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=not interactive(), **checkpointing,
    )
    packed = {"data_collator": PackCollator(), "compute_loss_func": supervised_nll} if cfg.padding_free else \
        {"data_collator": PadCollator(pad_id)}
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(records), callbacks=[nan_guard()],
                      **packed)
    last = get_last_checkpoint(str(ckpt_dir)) if cfg.resume else None
    if last:
        info(f"[{stage}] resuming from {last}")
    # Padding-free rows attend record by record, not under a T x T mask; padded batches keep the model's own.
    with packed_attention(model) if cfg.padding_free else nullcontext():
        trainer.train(resume_from_checkpoint=last)
    return trainer.state.log_history


def loss_history(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (step, loss) rows of a Trainer log history."""
    return [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]


def make_adamw(params: list[Any], learning_rate: float, weight_decay: float) -> Any:
    """AdamW, fused where torch has it (CPU and GPU, torch >= 2.8: several times faster than the per-tensor
    loop)."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
