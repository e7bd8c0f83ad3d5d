"""CPU speed-ups (train_mrpc/cpu_speed.py): dropout that drops at the asked rate and scales as torch's does,
attention that equals BERT's math with the same mask, models that save and reload as before, runs that say
what they used and refuse to resume across the choice."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from train_mrpc import cpu_speed
from train_mrpc.errors import UserError

from conftest import assert_error_after_loading, assert_one_line_error, run_cli, tiny_args


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_drops_at_the_asked_rate(p):
    torch.manual_seed(0)
    mask = cpu_speed.keep_mask((1000, 1001), p)  # an odd count: the last int64 word is only partly used
    assert mask.shape == (1000, 1001) and mask.dtype == torch.bool
    dropped = 1 - mask.float().mean().item()
    assert abs(dropped - p) < 0.003  # ~1M draws: the standard error is ~0.0005
    # Every 16-bit lane of the 64-bit words is random (a source that leaves the top bit 0, as torch's default
    # random_ range does, would always keep the 4th lane): each lane drops at the same rate.
    lanes = mask.flatten()[: 4 * (mask.numel() // 4)].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), 1 - p), atol=0.006), lanes


def test_keep_mask_follows_the_global_seed():
    torch.manual_seed(3)
    first, second = cpu_speed.keep_mask((64, 64), 0.1), cpu_speed.keep_mask((64, 64), 0.1)
    torch.manual_seed(3)
    assert torch.equal(cpu_speed.keep_mask((64, 64), 0.1), first)  # a checkpoint's RNG state replays it
    assert not torch.equal(first, second)


def test_dropout_scales_kept_values_and_passes_the_mask_to_the_gradient():
    torch.manual_seed(1)
    x = torch.randn(32, 50, 64, requires_grad=True)
    layer = cpu_speed.FastCPUDropout(0.1).train()
    out = layer(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.9)
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.01
    out.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.9)
    assert torch.equal(layer.eval()(x), x)  # evaluation: identity, as nn.Dropout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.train()(x.bfloat16()).dtype == torch.bfloat16


def test_attention_equals_bert_math_with_the_same_mask(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(2)
    module = torch.nn.Module()
    module.is_causal = False
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    padding = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    padding[1, ..., 5:] = False  # the second pair has 2 padding tokens
    # Without dropout (evaluation) it is transformers' SDPA function itself.
    plain, _ = cpu_speed.cpu_attention_forward(module, q, k, v, padding, dropout=0.0, scaling=8**-0.5)
    expected, _ = sdpa_attention_forward(module, q, k, v, padding, dropout=0.0, scaling=8**-0.5)
    assert torch.equal(plain, expected)
    # With dropout: BERT's eager attention with this mask.
    mask = torch.rand(2, 4, 7, 7) > 0.3
    monkeypatch.setattr(cpu_speed, "keep_mask", lambda shape, p: mask)
    out, _ = cpu_speed.cpu_attention_forward(module, q, k, v, padding, dropout=0.3, scaling=8**-0.5)
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    probs = torch.softmax(scores.masked_fill(~padding, torch.finfo(scores.dtype).min), -1) * mask / 0.7
    assert torch.allclose(out, (probs @ v).transpose(1, 2), atol=1e-6)
    assert not torch.allclose(out, plain, atol=1e-6)  # the mask did drop something


def test_bf16_training_attention_without_dropout_is_the_math_with_sdpas_values_and_gradients():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(3)
    module = torch.nn.Module()
    module.is_causal = False
    padding = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    padding[1, ..., 5:] = False

    def attention(function):
        q, k, v = (t.clone().requires_grad_() for t in qkv)
        out, _ = function(module, q, k, v, padding, dropout=0.0, scaling=8**-0.5)
        out.float().square().sum().backward()
        return out, [t.grad for t in (q, k, v)]

    qkv = [torch.randn(2, 4, 7, 8).bfloat16() for _ in range(3)]
    ours, sdpa = attention(cpu_speed.cpu_attention_forward), attention(sdpa_attention_forward)
    for got, expected in zip([ours[0], *ours[1]], [sdpa[0], *sdpa[1]]):  # bf16 rounding apart
        assert torch.allclose(got.float(), expected.float(), atol=0.03, rtol=0.03)
    assert not torch.equal(ours[0], sdpa[0])  # the math path ran (SDPA's CPU backward is ~4x slower in bf16)
    module.eval()  # evaluation keeps SDPA itself
    assert torch.equal(attention(cpu_speed.cpu_attention_forward)[0], sdpa[0])


def test_model_keeps_its_weights_and_saves_as_before(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    used = cpu_speed.use_cpu_speedups(model)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert used["dropout_modules"] == len(dropouts) > 0
    assert all(type(m) is cpu_speed.FastCPUDropout for m in dropouts)
    assert model.config._attn_implementation == cpu_speed.ATTENTION_NAME == used["attention"]
    assert used["allocator_tuned"] is True  # glibc on Linux
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())

    model.train()
    ids = torch.randint(5, 100, (4, 12))
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    model.save_pretrained(tmp_path / "saved")
    assert cpu_speed.ATTENTION_NAME not in (tmp_path / "saved" / "config.json").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_choice_follows_the_device_and_refuses_what_cannot_run():
    assert cpu_speed.resolve_cpu_speedups("auto", "cpu", torch_compile=False) == (True, "auto: CPU training")
    assert cpu_speed.resolve_cpu_speedups("auto", "cuda", torch_compile=False)[0] is False
    assert cpu_speed.resolve_cpu_speedups("auto", "cpu", torch_compile=True)[0] is False
    assert cpu_speed.resolve_cpu_speedups("off", "cpu", torch_compile=False)[0] is False
    with pytest.raises(UserError, match="this run trains on cuda"):
        cpu_speed.resolve_cpu_speedups("on", "cuda", torch_compile=False)


def test_run_says_what_it_used_and_resumes_only_with_the_same_choice(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, "--max_train_steps", "6", "--checkpointing_steps", "3")
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    speed = json.loads((out / "all_results.json").read_text())["speed"]
    assert speed["cpu_speedups"] is True and speed["cpu_speedups_reason"] == "auto: CPU training"
    assert "CPU speed-ups (auto: CPU training)" in " ".join(proc.stdout.split())

    # Another dropout random stream: resuming across the choice is a changed setting, refused by default.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    proc = run_cli(
        [
            *tiny_args(tiny_model_dir, resumed, "--max_train_steps", "6", "--checkpointing_steps", "3"),
            "--resume_from_checkpoint",
            str(resumed / "checkpoints" / "step_000003"),
            "--cpu_speedups",
            "off",
        ]
    )
    assert_error_after_loading(proc.returncode, proc.stderr, "cpu_speedups True -> False")

    proc = run_cli(tiny_args(tiny_model_dir, tmp_path / "compiled", "--cpu_speedups", "on", "--torch_compile", "true"))
    assert_one_line_error(proc.returncode, proc.stderr, "--cpu_speedups on is for eager CPU training")
