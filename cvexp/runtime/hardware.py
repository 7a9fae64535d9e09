"""What this machine's CPU computes natively: the one check behind the choices that depend on
it (the CPU presets' precision, the options cvexp-bench measures)."""

from __future__ import annotations

import torch


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN reports it.

    Elsewhere (AVX2 only: most laptops, many cloud machines) bf16 is emulated and slower than
    float32: one VGG16-BN benchmark fit took 13 minutes on an AVX2 AMD EPYC.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN's check
        return False
