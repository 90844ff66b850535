"""The paper's setting on CPU stand-ins: tiny random models of the Qwen3 and Olmo 3 architectures, with chat
templates that behave like those families' (tests/standins.py), through the paper recipes."""

import json
from pathlib import Path

import parity_task  # noqa: F401  (registers the parity: task)
import pytest
from standins import FAMILIES, OLMO3_DEFAULT_SYSTEM, make_standin

from sdzero.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE_FOR = {"qwen3": "paper-math-qwen3-4b", "olmo3": "paper-math-olmo3-7b"}
SMALL = ["--dtype", "fp32", "--backend", "hf", "--eval_size", "2", "--validation_size", "0", "--phase1_size", "8",
         "--phase2_size", "8", "--max_new_tokens", "8", "--batch_size", "8", "--eval_num_samples", "2",
         "--srt_max_length", "256", "--distill_max_steps", "2", "--distill_questions_per_step", "4",
         "--distill_warmup_steps", "0", "--distill_max_teacher_tokens", "512", "--collect_drop_truncated", "false",
         "--temperature", "1.0"]


@pytest.fixture(scope="module", params=FAMILIES)
def standin(request, tmp_path_factory):
    return request.param, make_standin(request.param, tmp_path_factory.mktemp(request.param))


def test_templates_behave_like_the_families(standin):
    from sdzero.alignment import build_aligned_pair
    from sdzero.chat import ControlPhrases, chat_prompt_ids, reviser_context_ids, text_ids, turn_end_id
    from sdzero.models import load_tokenizer

    family, folder = standin
    tok = load_tokenizer(str(folder))
    prompt = chat_prompt_ids(tok, "What is 2+3?")
    rendered = tok.decode(prompt)
    end = turn_end_id(tok)
    assert tok.convert_ids_to_tokens(end) == "<|im_end|>"
    if family == "qwen3":  # the generation prompt is not a bare suffix: it opens (and closes) a think block
        assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    else:  # a default system prompt, and an end of turn that is not the eos
        assert rendered.startswith(f"<|im_start|>system\n{OLMO3_DEFAULT_SYSTEM}<|im_end|>")
        assert end != tok.eos_token_id
    phrases = ControlPhrases()
    y = text_ids(tok, "It is 6.")
    for reward in (0.0, 1.0):
        suffix = phrases.suffix_ids(tok)[reward]
        assert tok.decode(suffix) == phrases.suffix_text(reward)
        context = reviser_context_ids(prompt, y, suffix)
        assert context == prompt + y + suffix  # the reviser continues the same assistant turn, from ids
        pair = build_aligned_pair(prompt, y, suffix, 512, end_ids=[end])
        # the teacher's rows predict the same tokens as the student's: y then the end of turn
        assert [pair.teacher_ids[p + 1] for p in pair.teacher_positions] == pair.target_ids == \
            [pair.student_ids[p + 1] for p in pair.student_positions] == y + [end]


def test_paper_math_recipe_end_to_end(standin, tmp_path):
    """`sdzero run --config <the family's paper recipe>` with the model, the sizes and the task overridden (a
    random model never solves math, so the parity task stands in for the rewards): every stage runs, the
    control phrases are the recipe's, the SRT records end with the template's end of turn."""
    family, folder = standin
    out = tmp_path / "run"
    recipe = ROOT / "recipes" / RECIPE_FOR[family] / "run.yaml"
    assert main(["run", "--config", str(recipe), "--model", str(folder), "--task", "parity:",
                 "--output_dir", str(out), *SMALL]) == 0
    state = json.loads((out / "stages.json").read_text())
    assert {"eval-base", "collect", "srt", "eval-srt", "distill", "eval-sdzero", "report"} <= set(state)
    srt_meta = json.loads((out / "srt" / "model" / "sdzero.json").read_text())
    distill_meta = json.loads((out / "distill" / "model" / "sdzero.json").read_text())
    wrong = {"qwen3": "Wait, this response is not correct, let me start over.", "olmo3": "Wrong. I need to redo all."}
    assert srt_meta["control_phrases"]["wrong"] == distill_meta["control_phrases"]["wrong"] == wrong[family]
    assert len((out / "distill" / "log.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("language", ["python", "cpp"])
def test_paper_code_recipe_runs_stdio_problems(tmp_path, language):
    """The code recipe's task on stdin/stdout problems in Python and C++ through the Qwen3 stand-in: the
    base evaluation (with its revision pass) runs every response in the sandbox."""
    folder = make_standin("qwen3", tmp_path / "qwen3")
    data = tmp_path / "stdio.jsonl"
    rows = [{"id": i, "problem": f"Print the sum of two integers ({i}).",
             "tests": [{"input": f"{i} 2\n", "output": f"{i + 2}\n"}]} for i in range(18)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    recipe = ROOT / "recipes" / "paper-code-qwen3-4b" / "run.yaml"
    assert main(["run", "--config", str(recipe), "--model", str(folder), "--task", f"code:stdio:{data}",
                 "--code_language", language, "--output_dir", str(out), "--stop_after", "eval-base", *SMALL]) == 0
    report = json.loads((out / "eval-base.json").read_text())
    assert report["metrics"]["questions"] == 2 and report["metrics"]["generations"] >= 4
