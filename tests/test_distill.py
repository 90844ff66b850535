"""Phase 2: the distillation trainer on a tiny random model (CPU, offline)."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import parity_task  # noqa: F401  (registers the parity: task)
import pytest
import torch
from safetensors.torch import load_file

from sdzero.alignment import build_aligned_pair
from sdzero.chat import ControlPhrases, chat_prompt_ids, text_ids
from sdzero.cli import main
from sdzero.distill import DistillConfig, final_attempt_start, loss_weights, step_question_indices
from sdzero.policy import DivergenceSpec, PolicyForward, Teacher, pad_batch
from sdzero.errors import SDZeroError
from sdzero.losses import topk_divergence
from sdzero.selfloc import concentration, render_html, summarize

HERE = Path(__file__).resolve().parent


def distill_args(model_dir, out, *extra):
    return ["distill", "--model", str(model_dir), "--task", "parity:", "--eval_size", "2", "--phase2_size", "16",
            "--max_new_tokens", "10", "--temperature", "1.0", "--max_steps", "4", "--questions_per_step", "8",
            "--micro_batch_size", "3", "--output_dir", str(out), "--learning_rate", "1e-3", "--warmup_steps", "0",
            "--precision", "fp32", "--save_steps", "2", *extra]


def history(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def column(hist, key):
    return [float("nan") if h[key] is None else h[key] for h in hist]  # kl_correct is None in a step with none


# ---------------------------------------------------------------- pieces, by hand

def test_question_order_is_a_function_of_seed_and_step():
    steps = [step_question_indices(10, 4, s, seed=3) for s in range(5)]
    assert steps == [step_question_indices(10, 4, s, seed=3) for s in range(5)]
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10))  # the first epoch visits every question once
    assert sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled per epoch
    assert steps[0] != step_question_indices(10, 4, 0, seed=4)


def test_pad_batch_indexes_every_aligned_row():
    ids, mask, rows, cols = pad_batch([[5, 6, 7], [8, 9]], [[1, 2], [0]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [1, 2, 0]


def test_config_errors_are_clear():
    for bad, match in [({"divergence": "sideways"}, "divergence must be"),
                       ({"divergence": "topk", "divergence_kind": "jsd"}, "divergence_kind"),
                       ({"teacher": "oracle"}, "teacher must be"),
                       ({"teacher": "ema", "ema_rate": 0.0}, "ema_rate"),
                       ({"questions_per_step": 0}, "questions_per_step")]:
        with pytest.raises(SDZeroError, match=match):
            DistillConfig(**bad).validate()
    with pytest.raises(SDZeroError, match="does not split over 3 processes"):
        DistillConfig(questions_per_step=8).validate(num_processes=3)
    cfg = DistillConfig(divergence="sampled")
    cfg.validate()
    assert cfg.divergence_kind == "reverse"


# ---------------------------------------------------------------- the loss the trainer computes

@pytest.mark.parametrize("divergence,kind", [("topk", "mixed"), ("topk", "reverse"), ("full", "reverse"),
                                             ("full", "jsd")])
def test_trainer_loss_matches_a_dense_reference_on_a_real_model(tokenizer, divergence, kind):
    """Student and teacher passes through PolicyForward (hidden states, padded batch of two responses) against
    the same divergence computed from each sequence's full logits, one at a time, in float64."""
    from conftest import make_model

    student, teacher = make_model(tokenizer, seed=0), make_model(tokenizer, seed=1)
    phrases = ControlPhrases()
    pairs = []
    for q, y, r in [("What is 2+3?", "It is 5.", 1.0), ("Name a colour.", "Blue, I think so", 0.0)]:
        pairs.append(build_aligned_pair(chat_prompt_ids(tokenizer, q), text_ids(tokenizer, y),
                                        text_ids(tokenizer, phrases.suffix_text(r)), 512,
                                        end_ids=[tokenizer.eos_token_id]))
    t_ids, t_mask, t_rows, t_cols = pad_batch([p.teacher_ids for p in pairs], [p.teacher_positions for p in pairs], 0)
    s_ids, s_mask, s_rows, s_cols = pad_batch([p.student_ids for p in pairs], [p.student_positions for p in pairs], 0)
    with torch.no_grad():
        t_hidden, t_head = PolicyForward(teacher)(t_ids, t_mask, t_rows, t_cols, role="teacher")
    spec = DivergenceSpec(divergence, kind, beta=0.3, topk=16, chunk_size=5)
    per_token = PolicyForward(student, spec=spec)(s_ids, s_mask, s_rows, s_cols, role="student",
                                                  teacher_hidden=t_hidden, teacher_head=t_head)[0]
    ref = []
    for p in pairs:
        with torch.no_grad():
            t_logits = teacher(torch.tensor([p.teacher_ids])).logits[0, p.teacher_positions].double()
        s_logits = student(torch.tensor([p.student_ids])).logits[0, p.student_positions].double()
        if divergence == "topk":
            ref.append(topk_divergence(s_logits, t_logits, k=16, kind=kind, beta=0.3)[1])
        else:
            s, t = torch.log_softmax(s_logits, -1), torch.log_softmax(t_logits, -1)
            if kind == "reverse":
                ref.append((s.exp() * (s - t)).sum(-1))
            else:
                m = torch.logsumexp(torch.stack([t + torch.log(torch.tensor(0.3)), s + torch.log(torch.tensor(0.7))]),
                                    0)
                ref.append(0.3 * (t.exp() * (t - m)).sum(-1) + 0.7 * (s.exp() * (s - m)).sum(-1))
    ref = torch.cat(ref).double()
    assert per_token.shape == ref.shape == (sum(p.num_tokens for p in pairs),)
    assert torch.allclose(per_token.double(), ref, atol=1e-5), (per_token, ref)
    g = torch.autograd.grad(per_token.sum(), student.model.embed_tokens.weight)[0]
    g_ref = torch.autograd.grad(ref.sum(), student.model.embed_tokens.weight)[0]
    assert torch.allclose(g.double(), g_ref.double(), atol=1e-5)


def test_models_whose_logits_are_not_hidden_times_head_are_refused(tokenizer):
    from conftest import make_model

    from sdzero.policy import check_head_gives_logits

    model = make_model(tokenizer)
    check_head_gives_logits(model, tokenizer)  # a plain Llama passes
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.fill_(0.5)
    model.lm_head = head  # untied, with a bias: logits = hidden @ W.T + b
    with pytest.raises(SDZeroError, match="not final hidden state @ LM head"):
        check_head_gives_logits(model, tokenizer)


def test_dropout_is_off_in_the_student_attention_dropout_included(tokenizer):
    from conftest import make_model

    from sdzero.training import disable_dropout

    model = make_model(tokenizer)
    for m in model.modules():  # as if loaded with attention_dropout=0.5 in its config
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.5
    model.train()
    ids = torch.tensor([chat_prompt_ids(tokenizer, "hello there")])
    torch.manual_seed(0)
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout is on: two passes differ
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits)


# ---------------------------------------------------------------- teachers

def test_teacher_kinds_update_as_documented(tokenizer):
    from conftest import make_model

    student = make_model(tokenizer, seed=0)
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    teachers = {k: Teacher(k, student, use_lora=False, ema_rate=0.25, sync_steps=2) for k in ("frozen", "sync", "ema")}
    for t in teachers.values():
        assert all(not p.requires_grad for p in t.module.parameters()) and not t.module.training
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    name = "model.embed_tokens.weight"

    def w(kind):
        return dict(teachers[kind].module.lm.named_parameters())[name]

    assert not teachers["sync"].update(student, step=1)  # only every 2nd step
    assert teachers["ema"].update(student, step=1)
    assert torch.allclose(w("ema"), start[name] + 0.25)  # 0.75 * old + 0.25 * (old + 1)
    assert teachers["sync"].update(student, step=2) and torch.allclose(w("sync"), start[name] + 1.0)
    assert not teachers["frozen"].update(student, step=2) and torch.equal(w("frozen"), start[name])


def test_a_right_padded_batch_runs_unmasked_with_each_sequence_s_own_result(tokenizer, sdpa_calls):
    """PolicyForward drops the mask of a right-padded batch (SDPA's fast causal path): every real token's
    hidden state is what the sequence alone gives; a left-padded batch keeps its mask."""
    from conftest import make_model

    lm = make_model(tokenizer).float()
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    positions = [list(range(len(s))) for s in seqs]
    with torch.no_grad():
        hidden, _ = PolicyForward(lm)(*pad_batch(seqs, positions, pad_id=0), role="teacher")
        assert sdpa_calls and all(m is None for _, m in sdpa_calls)
        alone = torch.cat([lm.get_decoder()(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])
        assert torch.allclose(hidden, alone, atol=1e-5)
        sdpa_calls.clear()
        left = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
        PolicyForward(lm)(left, (left != 0).long(), torch.tensor([0, 0]), torch.tensor([2, 3]), role="teacher")
        assert sdpa_calls and all(m is not None for _, m in sdpa_calls)


def test_lora_teachers_hold_no_second_copy_of_the_weights(tokenizer):
    from conftest import make_model
    from peft import LoraConfig, get_peft_model

    base = make_model(tokenizer, seed=0)
    ids = torch.tensor([chat_prompt_ids(tokenizer, "hello")])
    with torch.no_grad():
        base_logits = base(ids).logits
    lm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                         init_lora_weights=False))  # non-zero B: adapters change the output
    policy = PolicyForward(lm)
    frozen = Teacher("frozen", lm, use_lora=True, ema_rate=0.1, sync_steps=1)
    ema = Teacher("ema", lm, use_lora=True, ema_rate=0.5, sync_steps=1)
    assert frozen.module is None and ema.module is None
    assert ema.adapter and all("lora_" in n for n in ema.adapter)
    rows, cols = torch.zeros(ids.shape[1], dtype=torch.long), torch.arange(ids.shape[1])
    mask = torch.ones_like(ids)

    def teacher_logits(t):
        with torch.no_grad(), t.weights(policy, policy) as m:
            h, head = m(ids, mask, rows, cols, role="teacher")
        return h @ head.T

    assert torch.allclose(teacher_logits(frozen), base_logits[0], atol=1e-5)  # adapters off = the base model
    with torch.no_grad():
        student_logits = lm(ids).logits[0]
    assert not torch.allclose(student_logits, base_logits[0], atol=1e-3)
    assert torch.allclose(teacher_logits(ema), student_logits, atol=1e-5)  # starts as the student
    before = {n: p.detach().clone() for n, p in lm.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_" in n:
                p.add_(1.0)
    ema.update(lm, step=1)
    for n, t in ema.adapter.items():
        assert torch.allclose(t, before[n] + 0.5)
    teacher_logits(ema)  # the swap puts the student's own adapter weights back
    for n, p in lm.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, before[n] + 1.0)


# ---------------------------------------------------------------- training runs

def fixed_pair_kl(model_dir, teacher_dir, tokenizer):
    """Mean top-k divergence between a model and the teacher on fixed (question, response) pairs."""
    from transformers import AutoModelForCausalLM

    student = PolicyForward(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    teacher = PolicyForward(AutoModelForCausalLM.from_pretrained(teacher_dir).eval())
    phrases = ControlPhrases()
    pairs = [build_aligned_pair(chat_prompt_ids(tokenizer, f"Say something #{i}."), text_ids(tokenizer, y),
                                text_ids(tokenizer, phrases.suffix_text(float(i % 2))), 512)
             for i, y in enumerate(["hello there", "abc def gh", "the thesis", "x y z w"])]
    t = pad_batch([p.teacher_ids for p in pairs], [p.teacher_positions for p in pairs], 0)
    s = pad_batch([p.student_ids for p in pairs], [p.student_positions for p in pairs], 0)
    with torch.no_grad():
        th, head = teacher(*t, role="teacher")
        return student(*s, role="student", teacher_hidden=th, teacher_head=head)[0].mean().item()


def test_distill_end_to_end_moves_the_student_toward_the_teacher(tiny_model_dir, tokenizer, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(distill_args(tiny_model_dir, out, "--max_steps", "8", "--learning_rate", "3e-3")) == 0
    hist = history(out)
    assert [h["step"] for h in hist] == list(range(1, 9))
    for key in ("loss", "reward", "response_length", "kl_correct", "kl_wrong", "tokens_per_s", "grad_norm"):
        assert key in hist[0]
    assert all(h["tokens"] > 0 and h["tokens_per_s"] > 0 for h in hist)
    # The metric Phase 2 optimises moves: on fixed pairs, the trained student is closer to the (frozen) teacher.
    before = fixed_pair_kl(tiny_model_dir, tiny_model_dir, tokenizer)
    after = fixed_pair_kl(out / "model", tiny_model_dir, tokenizer)
    assert after < 0.8 * before, (before, after)
    meta = json.loads((out / "model" / "sdzero.json").read_text())
    assert meta["steps"] == 8 and meta["control_phrases"] == ControlPhrases().to_dict()
    # Self-localization heat-maps at the first and the last step.
    pages = sorted(p.name for p in (out / "selfloc").iterdir())
    assert pages == ["step-000001.html", "step-000001.jsonl", "step-000008.html", "step-000008.jsonl"]
    rows = [json.loads(x) for x in (out / "selfloc" / "step-000001.jsonl").read_text().splitlines()]
    assert rows and all(len(r["tokens"]) == len(r["kl"]) > 0 for r in rows)
    assert "Correct responses" in (out / "selfloc" / "step-000001.html").read_text()
    scales = [re.search(r"0 &rarr; (\S+) and above", (out / "selfloc" / f"step-00000{s}.html").read_text()).group(1)
              for s in (1, 8)]
    assert scales[0] == scales[1]  # one colour scale for the run's pages
    assert {r["teacher_read"] for r in rows} <= {ControlPhrases().correct, ControlPhrases().wrong}
    # A finished run is not redone.
    capsys.readouterr()
    assert main(distill_args(tiny_model_dir, out, "--max_steps", "8")) == 0
    assert "already trained" in capsys.readouterr().out


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tiny_model_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(distill_args(tiny_model_dir, straight, "--teacher", "ema", "--ema_rate", "0.3")) == 0
    assert main(distill_args(tiny_model_dir, resumed, "--teacher", "ema", "--ema_rate", "0.3",
                             "--stop_after_steps", "2")) == 0
    assert not (resumed / "model").exists() and len(history(resumed)) == 2
    assert main(distill_args(tiny_model_dir, resumed, "--teacher", "ema", "--ema_rate", "0.3")) == 0
    a, b = history(straight), history(resumed)
    for key in ("loss", "reward", "response_length", "kl_correct", "kl_wrong"):
        assert column(a, key) == pytest.approx(column(b, key), rel=1e-6, abs=1e-9, nan_ok=True), key
    wa, wb = load_file(straight / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_activation_checkpointing_changes_memory_not_results(tiny_model_dir, tmp_path):
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert main(distill_args(tiny_model_dir, plain, "--max_steps", "2", "--selfloc_samples", "0")) == 0
    assert main(distill_args(tiny_model_dir, ckpt, "--max_steps", "2", "--selfloc_samples", "0",
                             "--gradient_checkpointing", "true")) == 0
    for key in ("loss", "grad_norm", "response_length"):
        assert column(history(plain), key) == pytest.approx(column(history(ckpt), key), rel=1e-5), key
    wa, wb = load_file(plain / "model" / "model.safetensors"), load_file(ckpt / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_lora_sampled_token_run_saves_a_merged_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    assert main(distill_args(tiny_model_dir, out, "--use_lora", "true", "--lora_r", "4", "--divergence", "sampled",
                             "--teacher", "sync", "--teacher_sync_steps", "2", "--selfloc_samples", "0")) == 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in n for n, _ in model.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [n for n, p in model.named_parameters() if not torch.allclose(p, dict(base.named_parameters())[n])]
    assert moved  # the merged adapters changed the weights
    assert not (out / "selfloc").exists()


def test_skip_truncated_gives_cut_responses_no_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "skip"
    # Cut at 2 tokens: the random model gives its stop token 0.35% a token, so these draws cut every response
    # (10 tokens was not enough: a seed's draws could end one of the 16).
    assert main(distill_args(tiny_model_dir, out, "--skip_truncated", "true", "--max_steps", "2",
                             "--selfloc_samples", "0", "--max_new_tokens", "2")) == 0
    hist = history(out)
    assert [h["clipped_share"] for h in hist] == [1.0, 1.0]
    assert all(h["loss"] is None and h["tokens"] == 0 and h["grad_norm"] is None for h in hist)
    wa, wb = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # nothing counted, nothing moved


def test_loss_weights_by_hand():
    assert loss_weights(4, True) == [1.0, 1.0, 1.0, 1.0]
    assert loss_weights(4, True, skip_first=1) == [0.0, 1.0, 1.0, 1.0]
    assert loss_weights(2, True, skip_first=3) == [0.0, 0.0]  # shorter than the skip: no loss at all
    assert loss_weights(3, False, skip_first=1) == [0.0, 0.0, 0.0]  # a skipped (truncated) response
    with pytest.raises(SDZeroError, match="skip_first_tokens"):
        DistillConfig(skip_first_tokens=-1).validate()


def test_final_attempt_start_is_the_first_token_after_the_last_control_phrase(tokenizer):
    from sdzero.chat import text_ids

    phrases = ControlPhrases()
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    head = f"it is 6\n\n{phrases.correct} it is 6\n\n{phrases.wrong}"
    ids = text_ids(tokenizer, head + "\n\nit is 7") + [tokenizer.eos_token_id]
    start = final_attempt_start(decode, ids, [phrases.correct, phrases.wrong])
    assert decode(ids[:start]) == head and decode(ids[start:]) == "\n\nit is 7"  # the last phrase counts
    assert final_attempt_start(decode, ids, ["no such phrase"]) == 0  # no trace: the whole response
    ends = text_ids(tokenizer, head) + [tokenizer.eos_token_id]
    assert final_attempt_start(decode, ends, [phrases.wrong]) == len(ends)  # nothing after the phrase
    with pytest.raises(SDZeroError, match="loss_tokens"):
        DistillConfig(loss_tokens="draft").validate()


def test_final_attempt_loss_leaves_a_traces_draft_and_phrase_out(tiny_model_dir, tmp_path, tokenizer):
    """loss_tokens=final_attempt: a trace's tokens up to its control phrase get no loss, a response without
    one keeps all of its tokens."""
    from sdzero.chat import text_ids
    from sdzero.generation import Completion

    phrases = ControlPhrases()
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    trace = text_ids(tokenizer, f"it is 6\n\n{phrases.wrong}\n\nit is 7")
    plain = text_ids(tokenizer, "it is 7")
    logged = {}
    for mode in ("all", "final_attempt"):
        trainer = _trainer(tiny_model_dir, tmp_path / mode, loss_tokens=mode, questions_per_step=2, max_steps=1,
                           precision="fp32", warmup_steps=0)
        rollouts = [Completion(trace, decode(trace), "stop", trainer.eot),
                    Completion(plain, decode(plain), "stop", trainer.eot)]
        trainer.rollouts = lambda step: ([0, 1], rollouts, [0.0, 1.0])
        logged[mode] = trainer.train_step(0)
    draft_and_phrase = final_attempt_start(decode, trace + [trainer.eot], [phrases.wrong])
    assert draft_and_phrase > 10
    assert logged["all"]["tokens"] == len(trace) + 1 + len(plain) + 1  # each with its end-of-turn token
    assert logged["all"]["tokens"] - logged["final_attempt"]["tokens"] == draft_and_phrase
    assert logged["all"]["loss"] != pytest.approx(logged["final_attempt"]["loss"], rel=1e-6)


def test_skip_first_tokens_takes_exactly_those_tokens_out_of_the_loss(tiny_model_dir, tmp_path):
    """Same seed, same first rollouts: the step's loss-token count drops by 3 per response, and the loss is the
    mean over the tokens left (so it differs from the run that keeps them)."""
    runs = {}
    for skip in (0, 3):
        out = tmp_path / f"skip{skip}"
        assert main(distill_args(tiny_model_dir, out, "--max_steps", "1", "--selfloc_samples", "0",
                                 "--skip_first_tokens", str(skip))) == 0
        runs[skip] = history(out)[0]
    a, b = runs[0], runs[3]
    assert a["sampled_tokens"] == b["sampled_tokens"] and a["responses"] == b["responses"] == 8
    assert a["clipped_share"] == 1.0  # every response is cut at 10 tokens, so each has 10 target tokens
    assert a["tokens"] == 80 and b["tokens"] == 80 - 3 * 8
    assert a["loss"] != pytest.approx(b["loss"], rel=1e-6)


def test_bad_inputs_give_one_clear_error(tiny_model_dir, tmp_path, capsys):
    assert main(distill_args(tiny_model_dir, tmp_path / "a", "--divergence", "sideways")) == 2
    assert "divergence must be" in capsys.readouterr().err
    assert main(distill_args(tiny_model_dir, tmp_path / "b", "--max_prompt_tokens", "5")) == 2
    assert "over the limit of 5" in capsys.readouterr().err
    assert main(distill_args(tiny_model_dir, tmp_path / "c", "--phase2_size", "0")) == 2
    assert "Phase-2 questions" in capsys.readouterr().err
    assert main(distill_args(tiny_model_dir, tmp_path / "d", "--report_to", "carrier_pigeon")) == 2
    assert "unknown tracker 'carrier_pigeon'" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import sdzero.distill as distill

    out = tmp_path / "nan"
    assert main(distill_args(tiny_model_dir, out, "--stop_after_steps", "2")) == 0
    original = distill.PolicyForward.forward

    def poisoned(self, *a, **k):
        result = original(self, *a, **k)
        return (result[0] * float("nan"), result[1]) if k.get("role") == "student" else result

    monkeypatch.setattr(distill.PolicyForward, "forward", poisoned)
    assert main(distill_args(tiny_model_dir, out)) == 2
    assert "loss became nan" in capsys.readouterr().err
    assert (out / "checkpoints" / "step-000002" / "trainer_state.json").is_file()


# ---------------------------------------------------------------- several processes

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FSDP_CONFIG = HERE.parent / "recipes" / "accelerate" / "fsdp.yaml"


def _launch(config: Path | None, n: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *(["--config_file", str(config)] if config else []),
           "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(HERE / "sdzero_worker.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="on GPUs FSDP applies: see the test below")
def test_an_fsdp_launch_on_cpus_is_refused_not_run_unsharded(tiny_model_dir, tmp_path):
    """accelerate applies FSDP only on GPUs: on 2 CPU processes its FSDP config silently becomes plain data
    parallelism (every process holds the whole model). sdzero says so and stops before any work."""
    proc = _launch(FSDP_CONFIG, 2, distill_args(tiny_model_dir, tmp_path / "out"))
    assert proc.returncode != 0  # each process exits with status 2; the launcher reports the failure
    assert "error: accelerate was launched with an FSDP config, but it runs MULTI_CPU here, unsharded" in proc.stderr
    assert not (tmp_path / "out" / "log.jsonl").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs 2 GPUs (accelerate does not shard on CPUs)")
def test_fsdp_on_two_gpus_gives_the_run_of_one(tiny_model_dir, tmp_path):
    """For GPU machines: Phase 2 under the FSDP config on 2 GPUs against 1 process, greedy rollouts, same
    global batch: the same losses."""
    runs = {}
    for n, config in ((1, None), (2, FSDP_CONFIG)):
        out = tmp_path / f"p{n}"
        proc = _launch(config, n, distill_args(tiny_model_dir, out, "--temperature", "0", "--batch_size", "1",
                                               "--max_steps", "3", "--selfloc_samples", "0"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = history(out)
    for key in ("loss", "reward", "tokens", "grad_norm"):
        assert column(runs[1], key) == pytest.approx(column(runs[2], key), rel=1e-3, abs=1e-6, nan_ok=True), key


def test_two_processes_give_the_same_run_as_one(tiny_model_dir, tmp_path):
    """accelerate launch, 2 CPU processes over gloo, against 1 process at the same global batch. Greedy
    rollouts generated one at a time, so both runs see identical responses; the losses, logged metrics and
    final weights must then agree (the token mean is global, the DDP gradient is averaged)."""
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        # --multi_gpu is accelerate's torchrun launcher; without a GPU the trainer joins the processes over gloo.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
               *(["--multi_gpu"] if n > 1 else []), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               str(HERE / "sdzero_worker.py"),
               *distill_args(tiny_model_dir, out, "--temperature", "0", "--batch_size", "1", "--max_steps", "3",
                             "--selfloc_samples", "0")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "model" / "sdzero.json").read_text())["processes"] == n
        runs[n] = out
    a, b = history(runs[1]), history(runs[2])
    # grad_norm too: Adam would hide a uniformly mis-scaled gradient from the weights, not from the norm.
    for key in ("loss", "reward", "response_length", "tokens", "kl_correct", "kl_wrong", "grad_norm"):
        assert column(a, key) == pytest.approx(column(b, key), rel=1e-4, abs=1e-7, nan_ok=True), key
    wa, wb = load_file(runs[1] / "model" / "model.safetensors"), load_file(runs[2] / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


# ---------------------------------------------------------------- self-localization

def test_concentration_and_the_heat_map_page():
    assert concentration([0.0] * 9 + [1.0]) == pytest.approx(1.0)
    assert concentration([1.0] * 10) == pytest.approx(0.1)
    rows = [{"question": "q1", "reward": 1.0, "tokens": ["a", "b"], "kl": [0.1, 0.1]},
            {"question": "q<2>", "reward": 0.0, "tokens": ["x", "\n", "y"], "kl": [0.0, 2.0, 0.01]}]
    s = summarize(rows)
    assert s["correct_responses"] == 1 and s["wrong_mean_kl"] == pytest.approx(2.01 / 3)
    assert s["first_token_is_max"] == 1  # the correct one (a tie at its first token); the wrong one peaks at "\n"
    assert s["first_token_mean_kl"] == pytest.approx(0.05) and s["later_tokens_mean_kl"] == pytest.approx(2.11 / 3)
    page = render_html(rows, "t")
    assert "q&lt;2&gt;" in page and page.count('<div class="resp">') == 2 and "KL 2.0000" in page
    # The value of a coloured token is on the page, not only on hover; a legend gives the scale; a wrong response
    # shows its gold answer; a row says what the teacher read; pages of one run can share a scale.
    rows[1].update(answer="42", teacher_read="Wait, start over.")
    page = render_html(rows, "t", scale=4.0)
    assert "<sub>2.00</sub>" in page and "<sub>0.10</sub>" not in page and "0 &rarr; 4 and above" in page
    assert "gold answer: <b>42</b>" in page and "the teacher read: &laquo;Wait, start over.&raquo;" in page


# ---------------------------------------------------------------- fidelity: the teacher, the estimator, the API

@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama with large weights, so that bf16 rounding moves its distributions measurably (a random
    model at the usual scale is so flat that any two numerics agree)."""
    from conftest import make_model

    model = make_model(tokenizer, hidden=64, layers=4)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(5.0)
        for name, p in model.named_parameters():
            if "proj" in name:
                p.mul_(30.0)
    path = tmp_path_factory.mktemp("sharp-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _trainer(model_dir, tmp_path, sampling=None, **cfg):
    from parity_task import ParityTask

    from sdzero.distill import DistillTrainer
    from sdzero.generation import SamplingParams

    task = ParityTask()
    return DistillTrainer(str(model_dir), task, task.pool(8),
                          DistillConfig(output_dir=str(tmp_path / "d"), selfloc_samples=0, **cfg),
                          sampling or SamplingParams(max_new_tokens=8, temperature=1.0), ControlPhrases())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frozen_teacher_is_the_starting_model_numerically(sharp_model_dir, tokenizer, tmp_path, precision):
    """On identical contexts, a teacher equal to the student gives a divergence of zero, in both precisions:
    the teacher keeps fp32 weights under the same autocast as the student (a bf16 copy gave up to 0.07 nats
    per token on this model)."""
    from sdzero.alignment import AlignedPair

    trainer = _trainer(sharp_model_dir, tmp_path, precision=precision, divergence="full",
                       divergence_kind="reverse")
    assert (trainer.acc.mixed_precision == "bf16") == (precision == "bf16")
    pairs = []
    for q, y in [("What is 2+3?", "It is 5, as 2 and 3 make five."), ("Name a colour.", "Blue, I think so.")]:
        prompt, ids = chat_prompt_ids(tokenizer, q), text_ids(tokenizer, y)
        positions = list(range(len(prompt) - 1, len(prompt) - 1 + len(ids)))
        pairs.append(AlignedPair(prompt + ids, prompt + ids, positions, positions, ids))
    with torch.no_grad():
        per_token, s_lp, _, _, t_lp = trainer.divergence(pairs)
    assert per_token.abs().max().item() < 1e-3
    assert torch.allclose(s_lp, t_lp, atol=1e-4)


def test_sampled_estimator_is_unbiased_at_a_sampling_temperature():
    """On a 6-token vocabulary, the expected gradient of the sampled-token loss over y ~ softmax(z / 0.7) equals
    the gradient of the dense reverse KL(S || T); without the importance weight it does not."""
    from sdzero.losses import sampled_token_reverse_kl

    torch.manual_seed(0)
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    t_logits, temp = torch.randn(6, dtype=torch.float64), 0.7
    dense = (z.log_softmax(-1).exp() * (z.log_softmax(-1) - t_logits.log_softmax(-1))).sum()
    exact = torch.autograd.grad(dense, z)[0]

    def expected_gradient(weighted):
        q = (z / temp).softmax(-1).detach()
        total = torch.zeros(6, dtype=torch.float64)
        for y in range(6):
            s_lp, t_lp = z.log_softmax(-1)[y:y + 1], t_logits.log_softmax(-1)[y:y + 1]
            q_lp = (z / temp).log_softmax(-1)[y:y + 1] if weighted else None
            loss, _ = sampled_token_reverse_kl(s_lp, t_lp, sampling_logprobs=q_lp)
            total += q[y] * torch.autograd.grad(loss, z)[0]
        return total

    assert torch.allclose(expected_gradient(True), exact, atol=1e-10)
    assert not torch.allclose(expected_gradient(False), exact, atol=1e-3)


def test_trainer_importance_weights_sampled_rollouts_at_its_temperature(tiny_model, tokenizer):
    """The same check through PolicyForward: every token of the vocabulary as the 'sampled' target of one
    position, weighted by its probability at T = 0.7, gives the dense reverse-KL gradient."""
    prompt = chat_prompt_ids(tokenizer, "Say something.")
    ids, mask = torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long)
    vocab = tiny_model.config.vocab_size
    rows, cols = torch.zeros(vocab, dtype=torch.long), torch.full((vocab,), len(prompt) - 1)
    sampled = PolicyForward(tiny_model, spec=DivergenceSpec("sampled", "reverse", sample_temperature=0.7))
    dense_kl = PolicyForward(tiny_model, spec=DivergenceSpec("full", "reverse"))
    teacher = PolicyForward(tiny_model)
    with torch.no_grad():
        torch.manual_seed(1)
        t_hidden, head = teacher(ids, mask, rows[:1], cols[:1], role="teacher")
        t_hidden = t_hidden + 0.5 * torch.randn_like(t_hidden)  # another teacher
        q = (tiny_model(ids).logits[0, -1].float() / 0.7).softmax(-1)
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    per_token, _ = sampled(ids, mask, rows, cols, role="student", teacher_hidden=t_hidden.expand(vocab, -1),
                           teacher_head=head, targets=torch.arange(vocab))
    estimated = torch.autograd.grad((per_token * q).sum(), params)
    dense, _ = dense_kl(ids, mask, rows[:1], cols[:1], role="student", teacher_hidden=t_hidden, teacher_head=head)
    exact = torch.autograd.grad(dense.sum(), params)
    for a, b in zip(estimated, exact):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


def test_samples_per_question_comes_from_the_config(tiny_model_dir, tmp_path):
    """The Python API: DistillConfig.samples_per_question decides, whatever sampling.n the caller passed."""
    from sdzero.generation import SamplingParams

    trainer = _trainer(tiny_model_dir, tmp_path, samples_per_question=3, questions_per_step=2, max_steps=1,
                       precision="fp32", sampling=SamplingParams(max_new_tokens=4, temperature=1.0, n=1))
    idx, completions, _ = trainer.rollouts(0)
    assert len(completions) == 6 and sorted(set(idx)) == sorted(idx)[::3] and len(set(idx)) == 2


def test_step_logs_where_the_divergence_sits_and_the_answer_probabilities(tiny_model_dir, tmp_path):
    from parity_task import ParityTask

    class LastCharTask(ParityTask):  # its "answer" is the response's last character
        def answer_text(self, question, response):
            return response.strip()[-1:] or None

    from sdzero.distill import DistillTrainer
    from sdzero.generation import SamplingParams

    task = LastCharTask()
    trainer = DistillTrainer(str(tiny_model_dir), task, task.pool(8),
                             DistillConfig(output_dir=str(tmp_path / "d"), selfloc_samples=0, questions_per_step=8,
                                           max_steps=1, precision="fp32", warmup_steps=0),
                             SamplingParams(max_new_tokens=8, temperature=1.0), ControlPhrases())
    m = trainer.train_step(0)
    for c in ("wrong", "right"):
        shares = [m[f"kl_share_{w}_{c}"] for w in ("first", "answer", "rest")]
        if shares[0] is not None:
            assert sum(shares) == pytest.approx(1.0) and all(s >= -1e-9 for s in shares)
    assert any(m[f"answer_logprob_teacher_{c}"] is not None for c in ("wrong", "right"))
    for c in ("wrong", "right"):
        if m[f"answer_logprob_student_{c}"] is not None:
            assert m[f"answer_logprob_student_{c}"] <= 0 and 0 <= m[f"teacher_above_student_{c}"] <= 1


def test_answer_token_positions(tokenizer):
    from sdzero.selfloc import answer_token_positions

    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    ids = text_ids(tokenizer, "3 + 4 = 7, so Answer: 17")
    pos = answer_token_positions(decode, ids, "17")
    assert decode([ids[j] for j in pos]) == "17"  # the last occurrence, not the 7 of "= 7"
    assert answer_token_positions(decode, ids, "99") == [] and answer_token_positions(decode, ids, None) == []


def test_token_positions_by_bisection_match_a_scan_of_every_prefix(tokenizer):
    """answer_token_positions and final_attempt_start bisect over prefix lengths; on varied traces they give
    what decoding every prefix gives (token j carries the characters decode(ids[:j]) -> decode(ids[:j + 1]))."""
    import random

    from sdzero.selfloc import answer_token_positions

    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    phrase = ControlPhrases().wrong
    rng = random.Random(0)
    for _ in range(40):
        pieces = ["3", "+", "4", "=", "17", "so", "Answer:", "over.", phrase]
        words = [rng.choice(pieces) for _ in range(rng.randint(1, 30))]
        ids = text_ids(tokenizer, " ".join(words))
        ends = [len(decode(ids[: j + 1])) for j in range(len(ids))]
        text = decode(ids)
        at = text.rfind("17")
        scan = [j for j in range(len(ids)) if ends[j] > at and (ends[j - 1] if j else 0) < at + 2] if at >= 0 else []
        assert answer_token_positions(decode, ids, "17") == scan
        cut = text.rfind(phrase) + len(phrase) if phrase in text else -1
        first = next((j for j in range(len(ids)) if ends[j] > cut), len(ids)) if cut >= 0 else 0
        assert final_attempt_start(decode, ids, [phrase]) == first
