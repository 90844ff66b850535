"""Phase 1: collection (drafts, revisions, resume) and Self-Revision Training (records, masks, loss, training)."""

import json

import pytest
import torch
from parity_task import ParityTask  # also registers the parity: task

from sdzero.chat import ControlPhrases, text_ids
from sdzero.cli import main
from sdzero.collect import CollectConfig, collect, trim_repeated_tail
from sdzero.runfolder import load_kept
from sdzero.errors import SDZeroError
from sdzero.generation import HFGenerator, SamplingParams
from sdzero.srt import build_generation_record, build_records, build_revision_record
from sdzero.training import IGNORE, PadCollator

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


def test_trim_repeated_tail_cuts_only_long_loops(tokenizer):
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    loop = [1, 2, 3] + [4] * 40
    assert trim_repeated_tail(loop, decode) == [1, 2, 3, 4]
    assert trim_repeated_tail([9] + [1, 2] * 20, decode) == [9, 1, 2]
    assert trim_repeated_tail([9] + [1, 2] * 8, decode) == [9] + [1, 2] * 8  # 14 tokens removed: too short
    assert trim_repeated_tail([1, 2, 1, 2]) == [1, 2, 1, 2]  # two copies are not degenerate
    assert trim_repeated_tail([5, 6, 7]) == [5, 6, 7]
    assert trim_repeated_tail([]) == []
    # Digits are single tokens: numbers end in runs of equal tokens, and those are text, not loops.
    for text in ("Answer: 1000", "0.333", "so 1/3 = 0.33333333", "Answer: 5, 5, 5"):
        ids = text_ids(tokenizer, text)
        assert trim_repeated_tail(ids, decode) == ids, text
    # A real loop is cut to one copy of its unit.
    ids = text_ids(tokenizer, "Let me add. " + "1 + 1 = 2. " * 8)
    assert decode(trim_repeated_tail(ids, decode)) == "Let me add. 1 + 1 = 2. "


class LastNumberTask(ParityTask):
    """Right when the response's last number is 12 (every question)."""

    def reward(self, question, response):
        import re

        nums = re.findall(r"\d+", response)
        return 1.0 if nums and nums[-1] == "12" else 0.0


class ScriptedDrafts:
    """A generator that answers every draft prompt with `draft` and every reviser context with `revision`."""

    def __init__(self, tokenizer, draft, revision):
        self.tokenizer, self.draft, self.revision = tokenizer, draft, revision

    def generate(self, prompts, params, seed=0, desc=""):
        from sdzero.generation import Completion

        text = self.revision if desc == "revisions" else self.draft
        return [[Completion(text_ids(self.tokenizer, text), text, "stop") for _ in range(params.n)] for _ in prompts]


def test_collect_grades_what_the_model_wrote_not_the_trimmed_text(tokenizer, tmp_path):
    """A draft "Answer: 1200" is wrong and "... 121212...12" (a loop) too: trimming must not turn either into
    "12", and the reward is always of the untrimmed text."""
    task = LastNumberTask()
    for draft in ("Answer: 1200", "Answer: " + "12" * 20):
        gen = ScriptedDrafts(tokenizer, draft, "So it is 12")
        cfg = CollectConfig(output_dir=str(tmp_path / str(len(draft))), chunk_size=2, revisions_per_draft=1)
        summary = collect(gen, task, task.pool(2), SamplingParams(max_new_tokens=64, temperature=1.0), cfg,
                          ControlPhrases(), seed=0)
        st = summary["stats"]
        assert st["right_drafts"] == 0 and st["wrong_to_right"] == 2, draft
        rows, _ = load_kept(cfg.output_dir)
        assert all(r["r_init"] == 0.0 and r["control_phrase"] == ControlPhrases().wrong for r in rows)


def test_pair_right_drafts_adds_tuples_without_generating(tiny_model, tokenizer, tmp_path):
    plain, _ = _collect(tiny_model, tokenizer, tmp_path / "a", drafts_per_question=4, revisions_per_draft=1)
    paired, _ = _collect(tiny_model, tokenizer, tmp_path / "b", drafts_per_question=4, revisions_per_draft=1,
                         pair_right_drafts=True)
    assert paired["stats"]["generations"] == plain["stats"]["generations"]
    st = paired["stats"]
    assert st["kept_draft_pairs_wrong"] > 0 and st["kept_draft_pairs_right"] > 0
    assert plain["stats"]["kept_draft_pairs_wrong"] == plain["stats"]["kept_draft_pairs_right"] == 0
    rows, _ = load_kept(tmp_path / "b")
    pairs = [r for r in rows if r["revision_source"] == "draft"]
    assert all(len(r["y_revised"]) % 2 == 0 for r in pairs)  # every revision verified right
    assert all(r["y_revised_ids"] != r["y_init_ids"] for r in pairs if r["r_init"] == 1.0)  # another right draft
    assert {r["control_phrase"] for r in pairs} == {ControlPhrases().wrong, ControlPhrases().correct}
    only_wrong, _ = _collect(tiny_model, tokenizer, tmp_path / "c", drafts_per_question=4, revisions_per_draft=0,
                             pair_right_drafts=True, revise_correct=False)
    assert only_wrong["stats"]["kept_draft_pairs_right"] == 0 and only_wrong["stats"]["generations"] == 6 * 4
    with pytest.raises(SDZeroError, match="pair_right_drafts"):
        CollectConfig(revisions_per_draft=0).validate()


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

    from sdzero.srt import SRTConfig
    from sdzero.training import train_records

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


def test_srt_ends_every_record_with_the_templates_turn_end(tmp_path, monkeypatch):
    """For a tokenizer whose eos (<|endoftext|>) is not the template's end of turn (<|im_end|>), SRT must teach
    the model to end its turn the way the chat template does."""
    import sdzero.srt as srt
    import sdzero.training as training
    from conftest import make_model, make_tokenizer

    from sdzero.chat import chat_prompt_ids
    from sdzero.files import atomic_write_json, atomic_write_jsonl

    tok = make_tokenizer(eos_token="<|endoftext|>")
    model_dir = tmp_path / "model"
    make_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "data"
    prompt = chat_prompt_ids(tok, "q?")
    atomic_write_jsonl(data / "kept.jsonl", [{"question_id": "q", "prompt": "q?", "prompt_ids": prompt,
                                              "y_init_ids": text_ids(tok, "a"), "r_init": 0.0,
                                              "control_phrase": ControlPhrases().wrong,
                                              "y_revised_ids": text_ids(tok, "b")}])
    atomic_write_json(data / "sdzero.json", {"control_phrases": ControlPhrases().to_dict()})
    seen = []
    monkeypatch.setattr(training, "train_records", lambda model, records, *a: seen.extend(records) or [])
    srt.run_srt(str(model_dir), srt.SRTConfig(data_dir=str(data), output_dir=str(tmp_path / "srt")))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert len(seen) == 2 and all(r["input_ids"][-1] == r["labels"][-1] == im_end for r in seen)


def test_padding_free_batches_give_the_padded_loss_and_gradients(tokenizer):
    """PackCollator + supervised_nll must be the padded batch + the model's own loss, on the same records."""
    from conftest import make_model

    from sdzero.training import PackCollator, supervised_nll

    torch.manual_seed(0)
    model = make_model(tokenizer).float()
    recs = [build_revision_record([1, 2, 3, 4], [10 + i] * (1 + 3 * i), [20, 21], [30 + i, 31, 40][: 1 + i % 3],
                                  EOT, 64) for i in range(4)]
    recs += [build_generation_record([1, 2], [10 + i, 11], [20, 21], [30 + i], EOT, 64) for i in range(3)]
    padded = PadCollator(0)(recs)
    loss_padded = model(**padded).loss
    grads_padded = torch.autograd.grad(loss_padded, list(model.parameters()))
    packed = PackCollator()(recs)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in recs))  # no padding
    labels = packed.pop("labels")
    outputs = model(**packed)
    n_supervised = sum(sum(x != IGNORE for x in r["labels"][1:]) for r in recs)
    assert outputs.logits.shape[1] == n_supervised  # only supervised positions reach the vocabulary
    loss_packed = supervised_nll(outputs, labels)
    grads_packed = torch.autograd.grad(loss_packed, list(model.parameters()))
    assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-5)
    for a, b in zip(grads_padded, grads_packed):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # With the Trainer's count over an accumulated batch the sum is divided by that count instead.
    assert supervised_nll(outputs, labels, num_items_in_batch=2 * n_supervised).item() == \
        pytest.approx(loss_padded.item() / 2, abs=1e-5)


def test_record_layout_finds_each_record_of_a_packed_row():
    from sdzero.packed_attention import record_layout

    index, valid = record_layout(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    assert index[valid].tolist() == list(range(9))  # every token once, in the row's order
    assert valid.sum(1).tolist() == [3, 2, 4] and index.shape == (3, 4)
    assert record_layout(torch.tensor([[0, 1, 2, 3]])) is None  # one record: nothing to split


def test_padding_free_attention_runs_record_by_record_with_the_masked_loss_and_gradients(tokenizer, sdpa_calls):
    """On a packed row, attention runs as one [records, longest] batch without a mask, and gives what
    transformers' masked SDPA over the whole row gives (loss and every gradient), GQA included."""
    from conftest import make_model

    from sdzero.packed_attention import packed_attention
    from sdzero.training import PackCollator, supervised_nll

    model = make_model(tokenizer).float()
    assert model.config._attn_implementation == "sdpa" and model.config.num_key_value_heads < 4  # GQA
    recs = [build_revision_record([1, 2, 3, 4], [10 + i] * (1 + 3 * i), [20, 21], [30 + i, 31, 40][: 1 + i % 3],
                                  EOT, 64) for i in range(4)]
    packed = PackCollator()(recs)
    labels = packed.pop("labels")
    calls = sdpa_calls
    loss_masked = supervised_nll(model(**packed), labels)
    grads_masked = torch.autograd.grad(loss_masked, list(model.parameters()))
    assert calls and all(batch == 1 and m is not None for batch, m in calls)  # transformers: one masked row
    calls.clear()
    with packed_attention(model) as used:
        assert used
        loss = supervised_nll(model(**packed), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()))
    assert [(batch, m is None) for batch, m in calls] == [(len(recs), True)] * model.config.num_hidden_layers
    assert model.config._attn_implementation == "sdpa"  # restored
    assert loss.item() == pytest.approx(loss_masked.item(), abs=1e-6)
    for a, b in zip(grads_masked, grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # Anything else (here a padded batch) goes to transformers' SDPA under the mask it builds for it.
    padded = PadCollator(0)(recs)
    padded.pop("labels")
    with torch.no_grad():
        expected = model(**padded).logits
        with packed_attention(model):
            assert torch.allclose(model(**padded).logits, expected, atol=1e-6)


def test_packed_attention_leaves_a_sliding_window_to_transformers():
    """Mistral passes its window as an argument: records longer than the window keep the masked result."""
    from transformers import MistralConfig, MistralForCausalLM

    from sdzero.packed_attention import packed_attention
    from sdzero.training import PackCollator

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=3)).eval()
    batch = PackCollator()([{"input_ids": list(range(1, 1 + n)), "labels": list(range(1, 1 + n))} for n in (9, 6)])
    batch.pop("labels"), batch.pop("logits_to_keep")
    with torch.no_grad():
        expected = model(**batch).logits
        with packed_attention(model):
            assert torch.allclose(model(**batch).logits, expected, atol=1e-6)


def test_padding_free_training_attends_record_by_record(tokenizer, tmp_path, sdpa_calls):
    """`train_records` on padding-free batches never attends under a mask over the row; its checkpoints'
    configs and the model's attention setting afterwards are the model's own."""
    from conftest import make_model

    from sdzero.srt import SRTConfig
    from sdzero.training import train_records

    recs = [build_revision_record([1, 2, 3], [10 + i] * (1 + 2 * i), [20, 21], [30 + i, 31, 40], EOT, 64)
            for i in range(8)]
    model = make_model(tokenizer).float()
    cfg = SRTConfig(output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=4, precision="fp32",
                    save_steps=1)
    train_records(model, recs, cfg, pad_id=0, stage="check")
    assert sdpa_calls and all(m is None for _, m in sdpa_calls)
    assert model.config._attn_implementation == "sdpa"
    saved = list(tmp_path.glob("checkpoints/check/checkpoint-*/config.json"))
    assert saved and all("sdzero" not in p.read_text() for p in saved)


def test_srt_training_steps_match_with_and_without_padding(tokenizer, tmp_path):
    """Two Trainer steps from the same weights on the same records end at the same weights either way."""
    from conftest import make_model

    from sdzero.srt import SRTConfig
    from sdzero.training import train_records

    recs = [build_revision_record([1, 2, 3], [10 + i] * (1 + 2 * i), [20, 21], [30 + i, 31, 40], EOT, 64)
            for i in range(8)]
    weights = {}
    for padding_free in (True, False):
        model = make_model(tokenizer).float()
        cfg = SRTConfig(output_dir=str(tmp_path / str(padding_free)), learning_rate=1e-2, num_train_epochs=1,
                        per_device_train_batch_size=4, precision="fp32", warmup_steps=0, logging_steps=1,
                        padding_free=padding_free, save_steps=100)
        history = train_records(model, recs, cfg, pad_id=0, stage="check")
        weights[padding_free] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert len([h for h in history if "loss" in h]) == 2
    assert not torch.equal(weights[True], torch.cat([p.flatten() for p in make_model(tokenizer).parameters()]))
    assert torch.allclose(weights[True], weights[False], atol=1e-5)


def test_srt_with_activation_checkpointing_ends_at_the_same_weights(tokenizer, tmp_path):
    """--gradient_checkpointing (the paper recipe's 24K-token records) recomputes activations: same steps,
    same weights, and the model really checkpoints."""
    from conftest import make_model

    from sdzero.srt import SRTConfig
    from sdzero.training import train_records

    recs = [build_revision_record([1, 2, 3], [10 + i] * (1 + 2 * i), [20, 21], [30 + i, 31, 40], EOT, 64)
            for i in range(8)]
    weights, flags = {}, {}
    for checkpointing in (False, True):
        model = make_model(tokenizer).float()
        cfg = SRTConfig(output_dir=str(tmp_path / str(checkpointing)), learning_rate=1e-2, num_train_epochs=1,
                        per_device_train_batch_size=4, precision="fp32", warmup_steps=0, save_steps=100,
                        gradient_checkpointing=checkpointing)
        train_records(model, recs, cfg, pad_id=0, stage="check")
        weights[checkpointing] = torch.cat([p.detach().flatten() for p in model.parameters()])
        flags[checkpointing] = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert flags == {False: False, True: True}
    assert torch.allclose(weights[True], weights[False], atol=1e-6)


def test_srt_skip_saves_the_starting_model_unchanged(tiny_model_dir, tmp_path, capsys):
    """`sdzero srt --skip true` (Phase 2 without SRT, the paper's ablation): the saved "SRT model" is the
    starting model, weights equal, with the phrases the data was collected under."""
    from transformers import AutoModelForCausalLM

    data, out = tmp_path / "data", tmp_path / "srt"
    assert main(["collect", "--model", str(tiny_model_dir), "--dtype", "fp32", "--task", "parity:",
                 "--eval_size", "2", "--phase1_size", "4", "--max_new_tokens", "8", "--temperature", "1.0",
                 "--drop_truncated", "false", "--output_dir", str(data)]) == 0
    assert main(["srt", "--model", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(out),
                 "--skip", "true"]) == 0
    assert "0 revision + 0 generation records" in capsys.readouterr().out
    saved = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k].to(saved[k].dtype)) for k in saved)
    meta = json.loads((out / "model" / "sdzero.json").read_text())
    assert meta["skipped"] is True and meta["control_phrases"] == ControlPhrases().to_dict()
