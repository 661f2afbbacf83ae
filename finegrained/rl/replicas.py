"""Checks that every process of a data-parallel run holds the same weights."""

from __future__ import annotations

import hashlib


def weights_digest(model) -> str:
    """sha256 over every tensor of ``model``'s state dict, in order (as float32 bytes)."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def require_identical_replicas(accelerator, model, who: str, log) -> None:
    """With several processes: ``RuntimeError`` unless every rank's ``model`` has the same weights digest;
    the main process logs the agreement. One process: nothing to check."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    digests = gather_object([weights_digest(accelerator.unwrap_model(model))])
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes disagree on the policy weights: {digests}")
    if accelerator.is_main_process:
        log(f"[{who}] {len(digests)} processes hold identical policy weights (sha256 {digests[0][:12]})")
