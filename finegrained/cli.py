"""``finegrained <command> [args | hydra overrides]``: the single entry point.

Each command lives in its own thin module, ``finegrained/commands/<name>.py`` (compose the config, call the
library, report), with ``main(argv: list[str]) -> int | None``; modules are imported only when their command
runs, so ``finegrained validate`` does not pay for importing torch.
User errors (``FinegrainedError``) print as plain lines on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from .errors import EXIT_USER_ERROR, FinegrainedError
from .settings import COMMANDS as SETTINGS

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("finegrained.commands.validate", "check annotation files against a schema"),
    "convert": ("finegrained.commands.convert", "import public annotation formats (qa-feedback)"),
    "labels": ("finegrained.commands.labels", "per-segment labels of one span category (1, 0, null = ignored)"),
    "train-rm": ("finegrained.commands.train_rm", "train a reward model: one category, or several on one backbone (Hydra)"),
    "eval-rm": ("finegrained.commands.eval_rm", "evaluate a trained reward model on a data file (Hydra)"),
    "sft": ("finegrained.commands.sft", "supervised fine-tuning of a causal LM on prompt/completion JSONL (Hydra)"),
    "ppo": ("finegrained.commands.ppo", "dense-reward PPO, fine-grained or holistic (Hydra)"),
    "grpo": ("finegrained.commands.grpo", "critic-free GRPO that keeps every segment's reward (Hydra)"),
    "rloo": ("finegrained.commands.rloo", "critic-free RLOO that keeps every segment's reward (Hydra)"),
    "dpo": ("finegrained.commands.dpo", "offline preference optimisation: DPO, IPO, dense DPO on corrections (Hydra)"),
    "sample": ("finegrained.commands.sample", "generate completions from a policy into annotation-ready JSONL"),
    "annotate": ("finegrained.commands.annotate", "local web page to annotate error spans and preferences"),
    "evaluate": ("finegrained.commands.evaluate", "evaluate and compare policies (Hydra)"),
    "demo": ("finegrained.commands.demo", "built-in task end to end: fine-grained vs holistic RLHF (Hydra)"),
    "bench": ("finegrained.commands.bench", "phase-level PPO benchmark (Hydra)"),
    "agreement": ("finegrained.commands.agreement", "inter-annotator agreement and majority-vote merge"),
}


# Hydra commands -> their config (conf/<name>.yaml); the cli checks their command line before their
# module (and torch) loads
HYDRA_CONFIGS: dict[str, str] = {spec.cli_name: name for name, spec in SETTINGS.items()}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: finegrained <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'finegrained <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"finegrained: unknown command {command!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USER_ERROR
    module_name, _ = COMMANDS[command]
    try:
        if command in HYDRA_CONFIGS and not _checked_first(HYDRA_CONFIGS[command], rest):
            return 0  # --help or --cfg, answered without importing the command (or torch)
        module = importlib.import_module(module_name)
        code = module.main(rest)
        _close_process_group(finished=True)
    except FinegrainedError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("finegrained: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
    return int(code or 0)


def _checked_first(config_name: str, argv: list[str]) -> bool:
    """Answer --help / --cfg and check the whole command line before the command's module (and torch)
    is imported: a bad setting is refused in a fraction of a second. False: nothing more to do."""
    from .config import compose_from_argv

    return compose_from_argv(config_name, argv) is not None


def _close_process_group(finished: bool = False) -> None:
    """Tear down torch.distributed before the interpreter exits. A gloo process group left alive at exit
    can abort a finished worker ("terminate called without an active exception", SIGABRT) after all its
    work succeeded, which fails the whole torchrun job; so can a rank that tears its connections down while
    its peer is still inside its last collective. ``finished``: every rank completed the command, so they
    meet at a barrier first (never after an error: a failed rank's peer may never arrive)."""
    if "torch.distributed" not in sys.modules:
        return  # never imported: nothing to close (and no reason to import torch for it)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if finished and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
