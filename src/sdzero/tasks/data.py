"""Rows of a dataset, from a local file (by its extension) or the hub: what math and code tasks read."""

from __future__ import annotations

from pathlib import Path

from sdzero.errors import SDZeroError

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(source: str, config: str | None = None, split: str = "train"):
    """A `datasets.Dataset` from a local file (by extension) or a hub name."""
    from datasets import load_dataset
    from datasets.utils import logging as ds_logging

    path = Path(source)
    try:
        if path.suffix in FILE_FORMATS:
            if not path.is_file():
                raise SDZeroError(f"dataset file not found: {source}")
            if path.stat().st_size == 0:  # datasets would say "StopIteration"
                raise SDZeroError(f"dataset file {source} is empty")
            # A local file loads in a blink: its "Generating train split" bar is noise.
            was_on = ds_logging.is_progress_bar_enabled()
            ds_logging.disable_progress_bar()
            try:
                return load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
            finally:
                if was_on:
                    ds_logging.enable_progress_bar()
        return load_dataset(source, config, split=split)
    except SDZeroError:
        raise
    except Exception as e:  # hub/network/format errors: say which dataset failed
        raise SDZeroError(f"cannot load dataset {source!r}: {type(e).__name__}: {e}") from e
