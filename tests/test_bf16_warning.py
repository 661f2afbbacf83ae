"""bf16 autocast on an x86 CPU without bf16 instructions is emulated by torch, many times slower than fp32
(README, Performance): every trainer's accelerator says so before the work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from finegrained.config import cpu_lacks_bf16, warn_if_slow_bf16

AVX2_ONLY = {"x86": True, "avx512_bf16": False, "amx": False}


@pytest.mark.parametrize(
    ("flags", "lacks"),
    [(AVX2_ONLY, True), ({**AVX2_ONLY, "avx512_bf16": True}, False), ({**AVX2_ONLY, "amx": True}, False),
     ({"x86": False, "avx512_bf16": False, "amx": False}, False)],  # fmt: skip
)
def test_only_an_x86_cpu_without_bf16_instructions_lacks_bf16(flags, lacks):
    assert cpu_lacks_bf16(flags) is lacks


def test_the_warning_needs_bf16_on_a_cpu_that_lacks_it(capsys):
    message = warn_if_slow_bf16("cpu", "bf16", "ppo bf16=true", AVX2_ONLY)
    assert message and "ppo bf16=true" in message and "AVX512-BF16" in message
    assert message in capsys.readouterr().err
    assert warn_if_slow_bf16("cpu", "no", "ppo", AVX2_ONLY) is None
    assert warn_if_slow_bf16("cuda", "bf16", "ppo", AVX2_ONLY) is None
    assert warn_if_slow_bf16("cpu", "bf16", "ppo", {**AVX2_ONLY, "amx": True}) is None
    assert capsys.readouterr().err == ""


def test_the_rl_accelerator_warns_on_this_machine_exactly_when_it_lacks_bf16():
    # a process of its own: accelerate's state is process-wide and other tests already set it to fp32
    code = ("from omegaconf import OmegaConf\nfrom finegrained.rl.runs import make_accelerator\n"
            "a = make_accelerator(OmegaConf.create({'accelerate': {'cpu': True}, 'bf16': True}))\n"
            "assert a.mixed_precision == 'bf16'\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("without bf16 instructions" in done.stderr) is cpu_lacks_bf16()
