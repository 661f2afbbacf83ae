"""PPO checkpoints: everything needed to continue a run exactly.

``output_dir/checkpoints/iter-N/`` holds ``policy.safetensors``, ``value.safetensors``, ``optimizer.pt``,
``scheduler.pt`` (torch files we wrote, read back with ``weights_only=True``), ``rng.pt`` (python, numpy,
torch and CUDA generator states) and ``state.json`` (iteration, data position, KL controller). Each is
written into a temporary directory that is renamed into place, so a crash never leaves half a checkpoint;
only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from ..io import atomic_directory

_NAME = re.compile(r"^iter-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _NAME.match(d.name)
            if m and (d / "state.json").is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), np_state[2], np_state[3], np_state[4]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, iteration: int, policy, value, optimizer, scheduler, state: dict, keep: int) -> Path:
    final = Path(output_dir) / "checkpoints" / f"iter-{iteration}"
    with atomic_directory(final, overwrite=True) as tmp:
        save_model(policy, str(tmp / "policy.safetensors"))
        save_model(value, str(tmp / "value.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"iteration": iteration, **state}, indent=2))
    for _, old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(directory: Path, policy, value, optimizer, scheduler) -> dict:
    """Restore models, optimizer, scheduler and RNG states in place; returns state.json."""
    load_model(policy, str(directory / "policy.safetensors"))
    load_model(value, str(directory / "value.safetensors"))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(directory / "rng.pt", weights_only=True))
    return json.loads((directory / "state.json").read_text())
