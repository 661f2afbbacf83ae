"""Hydra composition for the training commands.

We use Hydra's compose API rather than ``@hydra.main``: the output directory is resolved once, in the
launching process, before any accelerate worker starts (no per-process ``${now:}``), and we keep control
of error messages. ``finegrained <command> key=value group=option ...`` composes ``conf/<command>.yaml``.
``--cfg`` (or ``--cfg job``) prints the composed config and exits; ``--help`` lists the command's groups and
keys (``finegrained.settings``). Every command line is checked (``finegrained.config_checks``) before any
work starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config_checks import compose, compose_checked, render_help  # noqa: F401  (compose: the same without the checks)
from .errors import FinegrainedError


CFG_CHOICES = ("job", "hydra", "all")


def read_flags(config_name: str, argv: list[str]) -> tuple[set[str], list[str]]:
    """Split the command line into flags (``--help``, ``--cfg [job]``, ``--resolve``) and overrides."""
    command = config_name.replace("_", "-")  # as typed: train-rm, not train_rm
    flags, overrides = set(), []
    items = iter(range(len(argv)))
    for i in items:
        arg = argv[i]
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        name, _, value = arg.partition("=")
        if name == "--cfg" and not value and i + 1 < len(argv) and argv[i + 1] in CFG_CHOICES:
            value = argv[i + 1]
            next(items)
        if name == "--cfg" and value in ("hydra", "all"):
            raise FinegrainedError(
                f"finegrained {command}: --cfg {value}: finegrained composes with Hydra's compose API, so there is "
                "no Hydra runtime config to print; --cfg (or --cfg job) prints the command's config"
            )
        if name == "--cfg" and value not in ("", "job"):
            raise FinegrainedError(f"finegrained {command}: --cfg {value}: expected --cfg or --cfg job")
        if name not in ("-h", "--help", "--cfg", "--resolve"):
            raise FinegrainedError(
                f"finegrained {command}: unknown option {arg!r}; settings are Hydra overrides such as key=value "
                "(options: --help, --cfg [job])"
            )
        flags.add(name)
    return flags, overrides


def compose_from_argv(config_name: str, argv: list[str], usage: str = "") -> DictConfig | None:
    """Handle ``--help`` / ``--cfg [job]``, compose, and check the result (``config_checks``): unknown
    keys and bad values are refused, all at once, before any work starts. Returns None when the command
    should just exit 0. ``usage`` is kept for callers; the help comes from ``finegrained.settings``."""
    flags, overrides = read_flags(config_name, list(argv))
    if "-h" in flags or "--help" in flags:
        print(render_help(config_name, overrides))
        return None
    cfg = compose_checked(config_name, overrides)
    if "--cfg" in flags:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def log(message: str) -> None:
    """Progress messages go to stderr so stdout stays for tables and machine-readable output."""
    print(message, file=sys.stderr, flush=True)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (tokenizer training and initialisation change with
    them), recorded next to demo and benchmark results."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("finegrained", "torch", "transformers", "tokenizers", "accelerate", "spacy", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def cpu_lacks_bf16(cpu_flags: dict[str, bool] | None = None) -> bool:
    """True on an x86 CPU without bf16 instructions (neither AVX512-BF16 nor AMX), where torch emulates bf16.

    ``cpu_flags`` (tests) stands in for torch's probes: ``{"x86": ..., "avx512_bf16": ..., "amx": ...}``. Other
    architectures (ARM has bf16 in many cores) are not judged: False."""
    import platform

    import torch

    if cpu_flags is None:
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
        try:
            cpu_flags = {"x86": x86, "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
                         "amx": bool(torch.cpu._is_amx_tile_supported())}  # fmt: skip
        except AttributeError:  # a torch without these (private) probes: do not guess
            return False
    return bool(cpu_flags["x86"] and not cpu_flags["avx512_bf16"] and not cpu_flags["amx"])


def warn_if_slow_bf16(device_type: str, mixed_precision: str, who: str, cpu_flags: dict[str, bool] | None = None) -> str | None:
    """bf16 autocast on a CPU without bf16 instructions runs many times slower than fp32 (the PPO bench: 488 s
    against 36 s for one iteration on an AVX2 EPYC). Prints a warning to stderr and returns it; None otherwise."""
    if mixed_precision != "bf16" or device_type != "cpu" or not cpu_lacks_bf16(cpu_flags):
        return None
    message = (f"WARNING: {who}: bf16 autocast on a CPU without bf16 instructions (no AVX512-BF16, no AMX): torch "
               "emulates bf16 here, many times slower than fp32 (README, Performance). Drop bf16 on this machine.")  # fmt: skip
    print(message, file=sys.stderr, flush=True)
    return message


def machine_description() -> dict[str, object]:
    """The CPU a result was computed on. Float results (and so the demo's figures) depend on it, not only on
    the library versions: torch picks its kernels by the CPU's vector instructions (``cpu_capability``, e.g.
    AVX2 or AVX512), and the order of a reduction changes with the thread count."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
