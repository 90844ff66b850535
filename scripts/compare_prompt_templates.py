"""Compare prompt templates for the default task on Phase-1 questions (never on the held-out set).

    python scripts/compare_prompt_templates.py [--questions 96]

For each template: greedy accuracy, accuracy of 2 samples at T=0.7 and mean response length, on the first
N Phase-1 questions of the default split (eval 200 first, so the held-out questions are skipped).
This is how the default template in sdzero.tasks.reasoning_gym was chosen (RESULTS.md).
"""

import argparse
import time

from sdzero.chat import chat_prompt_ids
from sdzero.config import TaskConfig
from sdzero.generation import HFGenerator, SamplingParams
from sdzero.models import load_model_and_tokenizer
from sdzero.tasks import load_task

TEMPLATES = [
    "{question}\nGive the final answer on the last line in the form 'Answer: <answer>'.",
    "{question}",
    "{question}\nAnswer with just the number.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--model", default="embedded")
    args = ap.parse_args()
    model, tok = load_model_and_tokenizer(args.model, "bf16")
    gen = HFGenerator(model, tok, batch_size=32, show_progress=False)
    for template in TEMPLATES:
        task = load_task(TaskConfig(prompt_template=template))
        qs = task.split({"eval": 200, "phase1": args.questions})["phase1"]
        prompts = [chat_prompt_ids(tok, q.prompt) for q in qs]
        t0 = time.time()
        greedy = gen.generate(prompts, SamplingParams(max_new_tokens=128, temperature=0))
        sampled = gen.generate(prompts, SamplingParams(max_new_tokens=128, temperature=0.7, n=2), seed=1)
        g = sum(task.reward(q, c[0].text) for q, c in zip(qs, greedy)) / len(qs)
        s = sum(task.reward(q, x.text) for q, c in zip(qs, sampled) for x in c) / (2 * len(qs))
        length = sum(x.num_tokens for c in sampled for x in c) / (2 * len(qs))
        print(f"{template[10:]!r}: greedy {g:.3f}  sampled {s:.3f}  mean length {length:.1f}  "
              f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
