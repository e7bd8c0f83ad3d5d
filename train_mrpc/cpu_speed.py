"""Training on CPUs: dropout masks that cost a fifth of torch's, attention that keeps them, and an allocator that
keeps freed memory.

Profiling the default all-MiniLM-L6-v2 fine-tune on a 2-core Xeon (AMX, bf16; `--profile`) put dropout's
random mask second only to the matmuls: `aten::bernoulli_` took ~96 ms of a ~445 ms step (20 calls, one
Mersenne-Twister draw and a float conversion per element, on one core). Attention dropout also pushes
`scaled_dot_product_attention` off its fused CPU kernel onto the math path, which upcasts bf16 to fp32 in
the backward pass. And the 47 MB gradient of the word embeddings, allocated anew every step, is mmapped
by glibc and page-faulted in again: zeroing it took 12.8 ms instead of 1.9 ms.

Here:
- `keep_mask` draws 64 random bits per four elements from numpy's SFC64, seeded by one draw from torch's
  global generator (so seeds, checkpoints and resumes work as before), and keeps an element when its 16 bits
  clear a threshold: the drop rate is p to within 1/131072, the kept values are scaled by 1/(1-p), as torch's
  dropout does. ~0.5 ms for a 32 x 56 x 384 mask and its scale against bernoulli's 4.2 ms.
- `FastCPUDropout` replaces the model's `nn.Dropout` modules; on other devices, in evaluation and at p=0 it is
  `nn.Dropout` itself.
- `cpu_attention_forward` is registered with transformers' AttentionInterface: with dropout on a CPU it computes
  softmax(q k^T * scale + mask) in the input's precision (fp32 sums inside the kernel, no fp32 copies), with
  the boolean mask turned into an additive one (masked_fill_ costs 5x an add here, and again backward), drops
  with `keep_mask` and multiplies by v. Without dropout it does the same in bf16 training (no mask to draw),
  where SDPA's CPU backward pass took ~4x as long (the figures at the choice, in the function);
  otherwise (evaluation, fp32 without dropout, GPUs, causal or GQA attention) it is transformers' own SDPA function.
- `keep_freed_memory` tells glibc not to hand large blocks back to the kernel (`mallopt`), as PyTorch's CPU
  performance guide gets from jemalloc or tcmalloc.

Measured on that Xeon: ~445 ms a step with torch's dropout, ~318 ms with all of these over whole 3-epoch runs
(quiet, 3 runs). Of that, SFC64 masks with the uint8 route to their scale took ~13 ms and the additive attention
mask ~4 ms (A/B in one process on a busier day; ~12 ms by the kernels' own times). See benchmarks/README.md for
the end-to-end figures.
"""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np
import torch

ATTENTION_NAME = "sdpa_fast_cpu_dropout"


def keep_mask(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """Bool mask of `shape`, each element True (kept) with probability 1 - p, from the global CPU generator."""
    count = math.prod(shape)
    # SFC64 fills all 64 bits of a word: 0.24 ms for a 32 x 56 x 384 mask, where torch's Mersenne Twister
    # (random_ over the int64 range) takes 0.68 ms. Seeded from torch's generator, so its state replays it.
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)
    lanes = torch.from_numpy(words.view(np.int16))[:count].view(shape)
    return lanes >= -32768 + round(p * 65536)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout as torch's (zero with probability p, scale the rest by 1/(1-p)), with `keep_mask`."""
    # Through uint8: torch converts bool to bf16 ~5x slower than uint8 (0.30 vs 0.06 ms for 32 x 56 x 384).
    scale = keep_mask(tuple(x.shape), p).view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * scale


class FastCPUDropout(torch.nn.Dropout):
    """`nn.Dropout` whose training-mode mask on a CPU comes from `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        if self.p == 1:
            return torch.zeros_like(x)
        return fast_dropout(x, self.p)


def cpu_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Bidirectional attention on a CPU with dropout or in bf16 training (the math of BERT's eager attention);
    SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Without dropout the math still wins in bf16 training: SDPA's CPU backward pass in bf16 took 47-51 ms for
    # 32 x 12 x 56 x 32 heads against 12.5-13 ms for these matmuls (fp32: 15 against 30 ms, so SDPA stays there).
    math_wins = dropout > 0.0 or (module.training and query.dtype == torch.bfloat16)
    plain = (
        not math_wins
        or query.device.type != "cpu"
        or getattr(module, "is_causal", False)
        or getattr(module, "num_key_value_groups", 1) > 1
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or key.shape[-2] != query.shape[-2]
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            # An additive mask the size of one head: adding it costs 0.16 ms for 32 x 12 x 56 x 56 scores in
            # bf16, where masked_fill_ costs 0.78 ms and again in the backward pass (~12 ms a step in all).
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype).masked_fill_(
                ~attention_mask, torch.finfo(scores.dtype).min
            )
        scores.add_(attention_mask)
    with torch.autocast("cpu", enabled=False):  # softmax reads and writes bf16 and sums in fp32 inside
        probs = torch.softmax(scores, dim=-1)
    if dropout > 0.0:
        probs = fast_dropout(probs, dropout)
    output = torch.matmul(probs, value)
    return output.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Make ATTENTION_NAME a transformers attention implementation, with SDPA's (boolean) masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, cpu_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def use_cpu_speedups(model) -> dict:
    """Swap the model's dropout modules for FastCPUDropout and its SDPA attention for `cpu_attention_forward`;
    glibc keeps freed memory from here on.

    Returns what changed. Parameters, state dict and saved config are untouched (transformers does not save
    the attention implementation), so the saved model loads as before.
    """
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, FastCPUDropout(child.p, inplace=child.inplace))
                replaced += 1
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attention == "sdpa" and getattr(model, "_can_set_attn_implementation", lambda: False)():
        register_attention()
        model.set_attn_implementation(ATTENTION_NAME)
        attention = ATTENTION_NAME
    return {"dropout_modules": replaced, "attention": attention, "allocator_tuned": keep_freed_memory()}


def keep_freed_memory() -> bool:
    """Ask glibc to serve every allocation from its heap and keep freed memory (Linux only; True if it took)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to tune
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # Without mmap, a freed block goes back to the heap and the next step's block of that size reuses the
    # pages: no page faults for the 47 MB embedding gradient or the activations every step.
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def resolve_cpu_speedups(requested: str, device_type: str, torch_compile: bool) -> tuple[bool, str]:
    """Whether this run uses this module's speed-ups, and why (for the summary)."""
    from train_mrpc.errors import UserError

    if requested == "off":
        return False, "--cpu_speedups off"
    if requested == "on":
        if device_type != "cpu":
            raise UserError(
                f"--cpu_speedups on speeds up CPU training, and this run trains on {device_type}, "
                "whose dropout kernels are already fused: drop the flag (auto chooses)"
            )
        return True, "--cpu_speedups on"
    if device_type != "cpu":
        return False, f"auto: torch's dropout on {device_type}"
    if torch_compile:
        return False, "auto: torch.compile makes its own dropout kernels"
    return True, "auto: CPU training"
