import json
import math

import pytest

from sdzero.chat import ControlPhrases, text_ids
from sdzero.cli import main
from sdzero.errors import SDZeroError
from sdzero.evaluate import EvalConfig, evaluate, inline_revision_metrics
from sdzero.generation import Completion, Generator, SamplingParams
from sdzero.tasks.base import Question, Task


class EchoTask(Task):
    """Questions 'q0'..'qN'; a response is right when its last word is the gold answer."""

    name = "echo"

    def __init__(self, answers):
        super().__init__()
        self.answers = answers

    def pool(self, n):
        return [Question(id=f"q{i}", prompt=f"q{i}", answer=a) for i, a in enumerate(self.answers)][:n]

    def reward(self, question, response):
        return 1.0 if response.split() and response.split()[-1] == question.answer else 0.0


class ScriptedGenerator(Generator):
    """Drafts and revisions from a script keyed by question; tells a reviser context by its control phrase."""

    def __init__(self, tokenizer, drafts, revisions, greedy):
        self.tokenizer, self.drafts, self.revisions, self.greedy = tokenizer, drafts, revisions, greedy
        self.calls = []

    def generate(self, prompts, params, seed=0, desc=""):
        self.calls.append((desc, len(prompts), params.n))
        out = []
        for p in prompts:
            text = self.tokenizer.decode(p)
            q = text.split("user\n", 1)[1].split("<|im_end|>", 1)[0]
            if "rephrase" in text or "start over" in text:
                drafts_here = self.drafts[q]
                body = text.split("assistant\n", 1)[1]
                idx = next(i for i, d in enumerate(drafts_here) if body.startswith(d + "\n\n"))
                texts = [self.revisions[q][idx]]
            elif params.temperature == 0:
                texts = [self.greedy[q]]
            else:
                texts = self.drafts[q][: params.n]
            out.append([Completion(text_ids(self.tokenizer, t), t, "stop") for t in texts])
        return out


def test_eval_metrics_on_a_scripted_model(tokenizer):
    task = EchoTask(["7", "3"])
    drafts = {"q0": ["it is 7", "it is 1", "it is 2", "so it is 7"], "q1": ["maybe 5", "maybe 4", "maybe 6", "maybe 8"]}
    revisions = {"q0": ["so 7", "so 7", "so 9", "so 1"], "q1": ["so 3", "so 5", "so 5", "so 5"]}
    greedy = {"q0": "7", "q1": "no"}
    gen = ScriptedGenerator(tokenizer, drafts, revisions, greedy)
    report = evaluate(gen, task, task.pool(2), SamplingParams(max_new_tokens=16, temperature=0.7),
                      EvalConfig(num_samples=4), ControlPhrases())
    m = report["metrics"]
    assert m["avg@4"] == pytest.approx(2 / 8)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@4"] == pytest.approx(0.5)  # q0 has a right sample, q1 none
    assert m["pass@2"] == pytest.approx((1 - 1 / 6) / 2)  # q0: 1 - C(2,2)/C(4,2)
    assert m["greedy_accuracy"] == pytest.approx(0.5)
    # Wrong drafts: q0 #1 (-> 7, fixed), q0 #2 (-> 9), q1 x4 (#0 -> 3 fixed). Right drafts: q0 #0 (kept), #3 (lost).
    assert (m["wrong_drafts"], m["right_drafts"]) == (6, 2)
    assert m["correction_rate"] == pytest.approx(2 / 6)
    assert m["right_to_right"] == pytest.approx(1 / 2)
    # Fresh-resample reference: q0's wrong drafts see 2 of 3 other samples right; q1's see none.
    assert m["resample_accuracy_on_wrong"] == pytest.approx((2 / 3 + 2 / 3 + 0 * 4) / 6)
    assert m["generations"] == 8 + 2 + 8
    assert m["inline_revision_share"] == 0.0 and m["accuracy_without_inline_revision"] == pytest.approx(2 / 8)
    assert [c[0] for c in gen.calls] == ["sampled drafts", "greedy", "revisions"]
    rec = report["questions"][0]
    assert rec["rewards"] == [1.0, 0.0, 0.0, 1.0] and rec["revision_rewards"] == [1.0, 1.0, 0.0, 0.0]


def test_inline_revision_metrics_split_the_accuracy_at_the_traces():
    """A first attempt that holds a control phrase is a self-revision trace: counted apart, with its accuracy."""
    phrases = ControlPhrases()
    responses = ["7", f"it is 6\n\n{phrases.wrong}\n\nit is 7", "5", f"it is 5 {phrases.correct} it is 5", "8"]
    m = inline_revision_metrics(responses, [1.0, 1.0, 0.0, 0.0, 0.0], [phrases.correct, phrases.wrong])
    assert m["inline_revision_share"] == pytest.approx(2 / 5)
    assert m["accuracy_with_inline_revision"] == pytest.approx(1 / 2)
    assert m["accuracy_without_inline_revision"] == pytest.approx(1 / 3)
    none = inline_revision_metrics(["7"], [1.0], [phrases.wrong])
    assert none["inline_revision_share"] == 0.0 and math.isnan(none["accuracy_with_inline_revision"])


def test_eval_rejects_over_long_prompts(tokenizer):
    task = EchoTask(["1"])
    gen = ScriptedGenerator(tokenizer, {}, {}, {})
    with pytest.raises(SDZeroError, match="over the limit of 5"):
        evaluate(gen, task, task.pool(1), SamplingParams(), EvalConfig(max_prompt_tokens=5))
    with pytest.raises(SDZeroError, match="no questions"):
        evaluate(gen, task, [], SamplingParams(), EvalConfig())


def test_eval_cli_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["eval", "--model", str(tiny_model_dir), "--dtype", "fp32", "--eval_size", "3", "--num_samples", "2",
                 "--max_new_tokens", "6", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "avg@2" in printed and "correction_rate" in printed
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert m["questions"] == 3 and m["generations"] == 3 * 2 + 3 + 3 * 2
    assert 0 <= m["avg@2"] <= 1 and m["mean_response_tokens"] <= 6
    assert m["wrong_drafts"] + m["right_drafts"] == 6
    assert report["config"]["model"] == str(tiny_model_dir)
    assert len(report["questions"]) == 3 and len(report["questions"][0]["revisions"]) == 2


def test_eval_cli_reads_a_yaml_config(tiny_model_dir, tmp_path):
    cfg = tmp_path / "eval.yaml"
    out = tmp_path / "r.json"
    cfg.write_text(f"model: {tiny_model_dir}\ndtype: fp32\neval_size: 2\nnum_samples: 1\nmax_new_tokens: 4\n"
                   f"revise: false\ngreedy: false\noutput: {out}\n")
    assert main(["eval", "--config", str(cfg), "--eval_size", "1"]) == 0  # the flag overrides the file
    m = json.loads(out.read_text())["metrics"]
    assert m["questions"] == 1 and m["generations"] == 1 and "correction_rate" not in m


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return errors[0]


def test_cli_bad_input_gives_one_clear_error(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "--task", "rg:nope", "--model", str(tiny_model_dir)]) == 2
    assert "unknown reasoning-gym generator" in _error_line(capsys)

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "1+1", "label": "2"}\n')
    assert main(["eval", "--task", str(data), "--model", str(tiny_model_dir)]) == 2
    assert "no question column" in _error_line(capsys)

    broken = tmp_path / "broken.yaml"
    broken.write_text("model: x\nnot_a_field: 3\n")
    assert main(["eval", "--config", str(broken)]) == 2
    assert "not_a_field" in _error_line(capsys)

    assert main(["eval", "--dtype", "int3", "--model", str(tiny_model_dir), "--eval_size", "1"]) == 2
    assert "unknown dtype" in _error_line(capsys)


def test_model_without_chat_template_is_a_clear_error(tmp_path, tiny_model, capsys):
    from conftest import make_tokenizer

    path = tmp_path / "no-template"
    tiny_model.save_pretrained(path)
    make_tokenizer(chat_template=None).save_pretrained(path)
    assert main(["eval", "--model", str(path), "--eval_size", "1"]) == 2
    assert "has no chat template" in _error_line(capsys)


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
