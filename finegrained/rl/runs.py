"""What every training run of the rl layer does the same way: its accelerator, the output directory's
state (temporaries of killed writes, a run already there), and ``final/`` as a plain HF model with a card."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import warn_if_slow_bf16
from ..errors import FinegrainedError
from ..io import atomic_directory, remove_stale_temporaries
from ..model_dirs import save_pretrained_dir
from .checkpoint import checkpoint_dirs, remove_interrupted_writes


def make_accelerator(cfg):
    """``accelerate.Accelerator``: CPU when ``accelerate.cpu`` says so (null: when no GPU), bf16 autocast by ``bf16``."""
    from accelerate import Accelerator

    cpu = cfg.accelerate.cpu if cfg.accelerate.cpu is not None else not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if cfg.bf16 else "no")
    if accelerator.is_main_process:
        warn_if_slow_bf16(accelerator.device.type, accelerator.mixed_precision, "bf16=true")
    return accelerator


def clear_interrupted_writes(out: Path, who: str, log) -> None:
    """Remove the temporaries a killed run left (checkpoints, final/, initial_policy/, config.yaml), saying so."""
    stale = remove_interrupted_writes(out) + remove_stale_temporaries(out, r"final|initial_policy|config\.yaml")
    for path in stale:
        log(f"[{who}] cleared {path}, left by an interrupted write")


def refuse_existing_run(out: Path, resume: bool, overwrite: bool, what: str) -> None:
    """A run directory that already holds checkpoints or final/ is continued or replaced only when asked."""
    if (checkpoint_dirs(out) or (out / "final").exists()) and not (resume or overwrite):
        raise FinegrainedError(f"{out} already holds a {what} run; pass resume=true to continue it or overwrite=true to start over")


def write_final_policy(out: Path, policy, tokenizer, merge_adapters: bool, card: str) -> None:
    """``out/final/``: the policy as a plain HF model (LoRA adapters merged when ``merge_adapters``), its
    tokenizer and model card ``card``, written atomically."""
    from ..model_card import write_card

    if merge_adapters:
        policy = policy.merge_and_unload()
    with atomic_directory(out / "final", overwrite=True) as tmp:
        save_pretrained_dir(tmp, policy, tokenizer)
        write_card(tmp, card)


def start_logging(cfg, out: Path, done_steps: int, is_main: bool):
    """``out/config.yaml`` and the run's trackers (``log.report_to``; main process only). A resumed run
    (``done_steps`` > 0) rewrites tensorboard from its next step and continues its MLflow / W&B runs."""
    from ..config import save_config, to_container
    from ..trackers import Trackers, report_to_of

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    trackers = Trackers(report_to_of(cfg), out, run_name=out.name, enabled=is_main,
                        purge_step=done_steps + 1 if done_steps else None, resume=bool(done_steps))  # fmt: skip
    trackers.log_config(to_container(cfg))
    return trackers


def closing_trackers(trackers, run):
    """``run()``'s result; the trackers are closed however it ends (marked failed when it raised)."""
    try:
        result = run()
    except BaseException:
        trackers.close(failed=True)
        raise
    trackers.close()
    return result
