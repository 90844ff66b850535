"""Losses of an SRT run and a Phase-2 run (bf16 autocast and fp32, with its heat-maps) on the tests' tiny
random-weight model, as JSON: run it before and after a refactor and compare the two files; equal files =
unchanged behaviour.

    python scripts/tiny_parity.py --out before.json     # on the old code
    python scripts/tiny_parity.py --out after.json      # on the new code
    cmp before.json after.json

Offline (the model and tokenizer are built from the tests' conftest), one process, ~1 minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # conftest's tiny model and tokenizer, the parity task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file the losses are written to")
    args = ap.parse_args()

    import parity_task  # noqa: F401  (registers the parity: task)
    from conftest import make_model, make_tokenizer

    from sdzero.cli import main as sdzero

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = make_tokenizer()
        make_model(tok).save_pretrained(root / "model")
        tok.save_pretrained(root / "model")
        model = str(root / "model")
        assert sdzero(["collect", "--model", model, "--dtype", "fp32", "--task", "parity:", "--eval_size", "2",
                       "--phase1_size", "8", "--max_new_tokens", "8", "--temperature", "1.0",
                       "--drop_truncated", "false", "--output_dir", str(root / "data")]) == 0
        for mode in ("joint", "sequential"):
            out = root / f"srt-{mode}"
            assert sdzero(["srt", "--model", model, "--data_dir", str(root / "data"), "--output_dir", str(out),
                           "--mode", mode, "--learning_rate", "3e-3", "--num_train_epochs", "2",
                           "--per_device_train_batch_size", "4", "--precision", "fp32", "--logging_steps", "1",
                           "--warmup_steps", "0"]) == 0
            result[f"srt-{mode}"] = json.loads((out / "model" / "sdzero.json").read_text())["loss_history"]
        for precision in ("fp32", "bf16"):
            out = root / f"distill-{precision}"
            assert sdzero(["distill", "--model", model, "--task", "parity:", "--eval_size", "2",
                           "--phase2_size", "16", "--max_new_tokens", "10", "--temperature", "1.0",
                           "--max_steps", "4", "--questions_per_step", "8", "--micro_batch_size", "3",
                           "--output_dir", str(out), "--learning_rate", "1e-3", "--warmup_steps", "0",
                           "--precision", precision, "--save_steps", "2"]) == 0
            log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
            result[f"distill-{precision}"] = [{k: h[k] for k in ("step", "loss", "reward", "tokens", "grad_norm",
                                                                   "kl_correct", "kl_wrong")} for h in log]
            pages = sorted((out / "selfloc").glob("*.jsonl"))  # the heat-maps' per-token KL
            result[f"heatmaps-{precision}"] = {p.name: [json.loads(x) for x in p.read_text().splitlines()]
                                               for p in pages}
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
