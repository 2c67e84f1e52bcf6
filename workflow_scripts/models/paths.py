"""Checks that a configured model directory exists and has the files its loader needs."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.config.typed import ConfigError

TRANSFORMERS_FILES = ("config.json",)
DIFFUSERS_FILES = ("model_index.json", "transformer/config.json", "vae/config.json", "scheduler")


def require_model_dir(
    path: str | Path | None, key: str, expect: tuple[str, ...] = TRANSFORMERS_FILES
) -> Path:
    """Return ``path`` if it is a usable local model directory, else raise naming the config key."""
    if not path:
        raise ConfigError(f"config key '{key}' is not set: point it at a local model directory")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"config key '{key}': model directory {folder} does not exist (nothing is downloaded at run "
            "time: copy the model there first, e.g. with `huggingface-cli download ... --local-dir`)"
        )
    missing = [name for name in expect if not (folder / name).exists()]
    if missing:
        raise ConfigError(
            f"config key '{key}': {folder} is not a model directory of the expected layout "
            f"(missing {', '.join(missing)})"
        )
    return folder
