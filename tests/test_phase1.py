"""Phase 1: collection (drafts, revisions, resume) and Self-Revision Training (records, masks, loss, training)."""

import json

import pytest
import torch
from parity_task import ParityTask  # also registers the parity: task

from sdzero.chat import ControlPhrases, text_ids
from sdzero.cli import main
from sdzero.collect import CollectConfig, collect, load_kept, trim_repeated_tail
from sdzero.errors import SDZeroError
from sdzero.generation import HFGenerator, SamplingParams
from sdzero.srt import IGNORE, PadCollator, build_generation_record, build_records, build_revision_record

# ---------------------------------------------------------------- records and masks, by hand

P, Y, S, R, EOT = [1, 2, 3], [10, 11], [20, 21], [30, 31], 2


def test_revision_record_supervises_only_the_revision():
    rec = build_revision_record(P, Y, S, R, EOT, max_length=64)
    assert rec["input_ids"] == [1, 2, 3, 10, 11, 20, 21, 30, 31, 2]
    assert rec["labels"] == [IGNORE] * 7 + [30, 31, 2]


def test_generation_record_supervises_the_whole_trace_but_not_the_prompt():
    rec = build_generation_record(P, Y, S, R, EOT, max_length=64)
    assert rec["input_ids"] == [1, 2, 3, 10, 11, 20, 21, 30, 31, 2]
    assert rec["labels"] == [IGNORE] * 3 + [10, 11, 20, 21, 30, 31, 2]


def test_records_truncate_the_draft_never_the_question_or_revision():
    rev = build_revision_record(P, Y, S, R, EOT, max_length=9)
    gen = build_generation_record(P, Y, S, R, EOT, max_length=9)
    assert rev["input_ids"] == [1, 2, 3, 10, 20, 21, 30, 31, 2]
    assert gen["input_ids"] == [1, 2, 3, 10, 20, 21, 30, 31, 2]
    assert gen["labels"][:3] == [IGNORE] * 3
    assert build_revision_record(P, Y, S, R, EOT, max_length=7) is None  # would have to cut the question
    rows = [{"prompt_ids": P, "y_init_ids": Y, "r_init": 0.0, "y_revised_ids": R}]
    assert build_records(rows, {0.0: S, 1.0: S}, EOT, max_length=7)[2] == 1  # dropped, and counted


def test_records_from_real_text_decode_to_the_right_pieces(tokenizer):
    phrases = ControlPhrases()
    from sdzero.chat import chat_prompt_ids

    prompt = chat_prompt_ids(tokenizer, "What is 2+3?")
    y, yr = text_ids(tokenizer, "It is 6."), text_ids(tokenizer, "2+3 = 5. Answer: 5")
    suffix = text_ids(tokenizer, phrases.suffix_text(0.0))
    rev = build_revision_record(prompt, y, suffix, yr, tokenizer.eos_token_id, 512)
    sup = [t for t, lab in zip(rev["input_ids"], rev["labels"]) if lab != IGNORE]
    assert tokenizer.decode(sup) == "2+3 = 5. Answer: 5<|im_end|>"
    gen = build_generation_record(prompt, y, suffix, yr, tokenizer.eos_token_id, 512)
    sup = [t for t, lab in zip(gen["input_ids"], gen["labels"]) if lab != IGNORE]
    assert tokenizer.decode(sup) == "It is 6.\n\n" + phrases.wrong + "\n\n2+3 = 5. Answer: 5<|im_end|>"
    assert all(lab == IGNORE for lab in gen["labels"][: len(prompt)])


def test_hf_loss_on_collated_records_matches_a_dense_reference(tiny_model):
    recs = [build_revision_record(P, Y, S, R, EOT, 64), build_generation_record([5, 6], [7], S, [8, 9], EOT, 64)]
    batch = PadCollator(pad_id=0)(recs)
    assert batch["labels"][1, -1] == IGNORE and batch["attention_mask"][1].sum() == len(recs[1]["input_ids"])
    with torch.no_grad():
        loss = tiny_model(**batch).loss.double()
        logp = torch.log_softmax(tiny_model(input_ids=batch["input_ids"],
                                            attention_mask=batch["attention_mask"]).logits.double(), -1)
    # Reference: token t is predicted at position t-1; average -log p over supervised tokens.
    total, count = 0.0, 0
    for b, rec in enumerate(recs):
        for t, (tok, lab) in enumerate(zip(rec["input_ids"], rec["labels"])):
            if lab != IGNORE:
                total -= logp[b, t - 1, tok].item()
                count += 1
    assert count == 3 + 6
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_trim_repeated_tail():
    assert trim_repeated_tail([1, 2, 3, 4, 4, 4, 4]) == [1, 2, 3, 4]
    assert trim_repeated_tail([9, 1, 2, 1, 2, 1, 2]) == [9, 1, 2]
    assert trim_repeated_tail([1, 2, 1, 2]) == [1, 2, 1, 2]  # two copies are not degenerate
    assert trim_repeated_tail([5, 6, 7]) == [5, 6, 7]
    assert trim_repeated_tail([]) == []


# ---------------------------------------------------------------- collection


def _collect(model, tokenizer, out, questions=6, **kw):
    task = ParityTask()
    gen = HFGenerator(model, tokenizer, batch_size=4, show_progress=False)
    kw.setdefault("drop_truncated", False)  # a random model rarely ends a turn within 8 tokens
    cfg = CollectConfig(output_dir=str(out), chunk_size=2, **kw)
    return collect(gen, task, task.pool(questions), SamplingParams(max_new_tokens=8, temperature=1.0), cfg,
                   ControlPhrases(), seed=3), gen


def test_collect_keeps_only_verified_revisions(tiny_model, tokenizer, tmp_path):
    summary, _ = _collect(tiny_model, tokenizer, tmp_path / "a")
    st = summary["stats"]
    assert st["drafts"] == 6 and st["revised_wrong"] + st["revised_right"] == 18
    assert st["generations"] == 6 + 18
    rows, meta = load_kept(tmp_path / "a")
    assert len(rows) == st["kept"] == st["kept_from_wrong"] + st["kept_from_right"] > 0
    assert meta["control_phrases"] == ControlPhrases().to_dict()
    for row in rows:
        assert len(row["y_revised"]) % 2 == 0  # verified right
        assert row["y_revised"] == tokenizer.decode(row["y_revised_ids"], skip_special_tokens=True)
        assert row["control_phrase"] == ControlPhrases().phrase(row["r_init"])


def test_truncated_revisions_are_dropped_and_counted(tiny_model, tokenizer, tmp_path):
    summary, _ = _collect(tiny_model, tokenizer, tmp_path / "a", drop_truncated=True)
    st = summary["stats"]
    assert st["dropped_truncated"] > 0 and st["kept"] <= 18 - st["dropped_truncated"]


def test_collect_without_revising_correct_drafts(tiny_model, tokenizer, tmp_path):
    summary, _ = _collect(tiny_model, tokenizer, tmp_path / "a", revise_correct=False)
    st = summary["stats"]
    assert st["revised_right"] == 0 and st["revised_wrong"] == 3 * (st["drafts"] - st["right_drafts"])


def test_interrupted_collection_resumes_to_identical_output(tiny_model, tokenizer, tmp_path, monkeypatch):
    _collect(tiny_model, tokenizer, tmp_path / "full")
    real = HFGenerator.generate
    calls = {"n": 0}

    def dies_in_chunk_two(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # chunk 1 = calls 1-2 (drafts, revisions); die inside chunk 2
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(HFGenerator, "generate", dies_in_chunk_two)
    with pytest.raises(KeyboardInterrupt):
        _collect(tiny_model, tokenizer, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "kept.jsonl").exists()
    monkeypatch.setattr(HFGenerator, "generate", real)
    _collect(tiny_model, tokenizer, tmp_path / "resumed")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert (resumed / "kept.jsonl").read_bytes() == (full / "kept.jsonl").read_bytes()
    assert json.loads((resumed / "sdzero.json").read_text())["stats"] == \
        json.loads((full / "sdzero.json").read_text())["stats"]


def test_collect_refuses_to_mix_settings_in_one_dir(tiny_model, tokenizer, tmp_path):
    _collect(tiny_model, tokenizer, tmp_path / "a", questions=2)
    with pytest.raises(SDZeroError, match="other settings"):
        _collect(tiny_model, tokenizer, tmp_path / "a", questions=2, revisions_per_draft=2)


def test_max_kept_caps_the_dataset(tiny_model, tokenizer, tmp_path):
    summary, _ = _collect(tiny_model, tokenizer, tmp_path / "a", max_kept=1)
    assert summary["stats"]["kept"] == 1 and len(load_kept(tmp_path / "a")[0]) == 1


# ---------------------------------------------------------------- bad data


def test_missing_data_column_and_empty_kept_set_are_clear_errors(tmp_path):
    with pytest.raises(SDZeroError, match="no collected data"):
        load_kept(tmp_path)
    (tmp_path / "kept.jsonl").write_text("")
    with pytest.raises(SDZeroError, match="no kept tuples"):
        load_kept(tmp_path)
    (tmp_path / "kept.jsonl").write_text(json.dumps({"question_id": "a", "prompt": "x"}) + "\n")
    with pytest.raises(SDZeroError, match="lacks the column"):
        load_kept(tmp_path)


# ---------------------------------------------------------------- end to end through the CLI


def revision_nll(model_dir, rows, tokenizer):
    """Mean NLL of the kept revisions given their reviser contexts, under the model saved at model_dir."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    suffix = {r: text_ids(tokenizer, ControlPhrases().suffix_text(r)) for r in (0.0, 1.0)}
    rev, _, _ = build_records(rows, suffix, tokenizer.eos_token_id, 512, generation=False)
    with torch.no_grad():
        return model(**PadCollator(tokenizer.pad_token_id)(rev)).loss.item()


@pytest.mark.parametrize("mode", ["joint", "sequential"])
def test_collect_then_srt_end_to_end(tiny_model_dir, tokenizer, tmp_path, capsys, mode):
    data, out = tmp_path / "data", tmp_path / "srt"
    assert main(["collect", "--model", str(tiny_model_dir), "--dtype", "fp32", "--task", "parity:",
                 "--eval_size", "2", "--phase1_size", "8", "--max_new_tokens", "8", "--temperature", "1.0",
                 "--drop_truncated", "false", "--output_dir", str(data)]) == 0
    assert "draft_accuracy" in capsys.readouterr().out
    rows, _ = load_kept(data)
    assert main(["srt", "--model", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(out),
                 "--mode", mode, "--learning_rate", "3e-3", "--num_train_epochs", "4",
                 "--per_device_train_batch_size", "4", "--precision", "fp32", "--logging_steps", "1",
                 "--warmup_steps", "0"]) == 0
    meta = json.loads((out / "model" / "sdzero.json").read_text())
    assert meta["control_phrases"] == ControlPhrases().to_dict()
    assert meta["revision_records"] == meta["generation_records"] == len(rows)
    assert set(meta["loss_history"]) == ({"joint"} if mode == "joint" else {"generation", "revision"})
    # Training must move the metric it optimises: the kept revisions become more likely.
    before = revision_nll(tiny_model_dir, rows, tokenizer)
    after = revision_nll(out / "model", rows, tokenizer)
    assert after < before - 0.5, (before, after)
    # A second run finds the model trained and does nothing.
    assert main(["srt", "--model", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(out)]) == 0
    assert "already trained" in capsys.readouterr().out


def test_srt_with_lora_saves_a_plain_merged_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data, out = tmp_path / "data", tmp_path / "srt"
    assert main(["collect", "--model", str(tiny_model_dir), "--dtype", "fp32", "--task", "parity:",
                 "--eval_size", "2", "--phase1_size", "4", "--max_new_tokens", "6", "--drop_truncated", "false",
                 "--output_dir", str(data)]) == 0
    assert main(["srt", "--model", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(out),
                 "--use_lora", "--lora_r", "4", "--learning_rate", "1e-2", "--num_train_epochs", "2",
                 "--precision", "fp32"]) == 0
    files = {p.name for p in (out / "model").iterdir()}
    assert "config.json" in files and "adapter_config.json" not in files
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k]) for k in base if "proj" in k)


def test_lora_training_lowers_the_loss_and_merges_exactly(tokenizer, tmp_path):
    from conftest import make_model
    from peft import LoraConfig, get_peft_model

    from sdzero.srt import SRTConfig, train_records

    model = make_model(tokenizer)
    recs = [build_revision_record([1, 2, 3], [10 + i, 11], [20, 21], [30 + i, 31, 40], EOT, 64) for i in range(6)]
    batch = PadCollator(0)(recs)
    with torch.no_grad():
        base = model(**batch).loss.item()
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    cfg = SRTConfig(output_dir=str(tmp_path), learning_rate=5e-2, num_train_epochs=8, per_device_train_batch_size=4,
                    precision="fp32", warmup_steps=0, logging_steps=100)
    train_records(peft_model, recs * 2, cfg, pad_id=0, stage="lora")
    with torch.no_grad():
        adapted = peft_model(**batch).loss.item()
        merged = peft_model.merge_and_unload()(**batch).loss.item()
    assert adapted < base - 0.15, (base, adapted)
    assert merged == pytest.approx(adapted, abs=1e-5)


def test_srt_on_missing_data_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    assert main(["srt", "--model", str(tiny_model_dir), "--data_dir", str(tmp_path / "none")]) == 2
    assert "no collected data" in capsys.readouterr().err
