"""Hydra composition for the training commands.

We use Hydra's compose API rather than ``@hydra.main``: the output directory is resolved once, in the
launching process, before any accelerate worker starts (no per-process ``${now:}``), and we keep control
of error messages. ``finegrained <command> key=value group=option ...`` composes ``conf/<command>.yaml``.
``--cfg`` prints the composed config and exits; ``--help`` lists groups and options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import FinegrainedError
from .paths import CONF_DIR


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides; bad overrides become user errors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise FinegrainedError(f"finegrained {config_name}: bad configuration: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def compose_from_argv(config_name: str, argv: list[str], usage: str = "") -> DictConfig | None:
    """Handle ``--help`` / ``--cfg`` and compose. Returns None when the command should just exit 0."""
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    unknown = [f for f in flags if f not in ("-h", "--help", "--cfg")]
    if unknown:
        raise FinegrainedError(
            f"finegrained {config_name}: unknown option {unknown[0]!r}; settings are Hydra overrides such as key=value"
        )
    if "-h" in flags or "--help" in flags:
        print(usage or f"usage: finegrained {config_name} [key=value ...] [group=option ...]")
        groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
        for g in groups:
            options = sorted(f.stem for f in (CONF_DIR / g).glob("*.yaml"))
            print(f"  {g}: {', '.join(options)}")
        print(f"\nDefaults: finegrained {config_name} --cfg")
        return None
    cfg = compose(config_name, overrides)
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
