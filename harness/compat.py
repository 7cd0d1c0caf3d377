"""Library-version shims: each works around one behaviour of a pinned-range library, says which, and why.

Kept in one place so that a library upgrade means reading one file to see
what may be dropped.
"""

from __future__ import annotations

from torch import nn


def keep_4bit_weights_trainable_on_cpu(model: nn.Module) -> nn.Module:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode converts its
    weight once, for good, to an inference-only layout; the next training
    forward then fails ("a view of a leaf Variable ... in-place operation").
    A run evaluates at step 0 and then trains, so QLoRA on such a CPU always
    failed. Turning the repacking off keeps the one layout that trains; the
    arithmetic is the same.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model
