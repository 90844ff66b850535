"""Tiny random-weight stand-ins with the paper's model families' shapes and chat-template habits, built here
(no download):

- "qwen3": Qwen3's architecture (q/k norms, GQA, untied head) and a ChatML template whose generation prompt
  is not a bare "<|im_start|>assistant\\n": it opens an empty think block, as Qwen3's hybrid templates do.
- "olmo3": Olmo 3's architecture (sliding-window layers with a full-attention one, post-norms) and a template
  that inserts a default system prompt when there is none, with an end of turn (<|im_end|>) that is not the
  tokenizer's eos (<|endoftext|>).
"""

from __future__ import annotations

from pathlib import Path

from conftest import make_tokenizer

QWEN3_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}"
    "{% endif %}"
)
OLMO3_DEFAULT_SYSTEM = "You are OLMo, a helpful AI assistant built by Ai2."
OLMO3_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n" + OLMO3_DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
FAMILIES = ("qwen3", "olmo3")


def make_standin(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a stand-in of `family` (tokenizer included) to `folder`; returns it."""
    import torch
    from transformers import Olmo3Config, Olmo3ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if family == "qwen3":
        tok = make_tokenizer(QWEN3_TEMPLATE, eos_token="<|im_end|>", split_like_gpt2=True)
        config_cls, model_cls, extra = Qwen3Config, Qwen3ForCausalLM, {}
    elif family == "olmo3":
        tok = make_tokenizer(OLMO3_TEMPLATE, eos_token="<|endoftext|>", split_like_gpt2=True)
        config_cls, model_cls, extra = Olmo3Config, Olmo3ForCausalLM, {"sliding_window": 16}
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    config = config_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                        tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        bos_token_id=None, **extra)
    model_cls(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
