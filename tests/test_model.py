"""The from-scratch transformer: size presets, pooling, token dropout."""

import torch

from ftvs.cli import main
from ftvs.model import PRESETS, ScratchClassifier


def test_models_command_prints_every_preset(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for preset in PRESETS:
        assert preset in out


def test_pooling_variants_ignore_padding():
    from ftvs.model import ScratchConfig

    for pooling in ("last", "mean", "max"):
        torch.manual_seed(0)
        model = ScratchClassifier(
            ScratchConfig(vocab_size=50, num_labels=3, pooling=pooling, max_position=16)
        ).eval()
        ids = torch.tensor([[5, 6, 7, 8]])
        padded = torch.tensor([[5, 6, 7, 8, 0, 0, 0]])
        with torch.no_grad():
            a = model(ids, torch.ones_like(ids))
            b = model(padded, (padded != 0).long())
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_token_dropout_replaces_real_tokens_in_training_only():
    from ftvs.model import ScratchConfig

    torch.manual_seed(0)
    model = ScratchClassifier(
        ScratchConfig(
            vocab_size=50, num_labels=3, pooling="mean", max_position=64, dropout=0.0, token_dropout=0.5
        )
    )
    seen = []
    model.tok_emb.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    ids = torch.cat([torch.randint(2, 50, (4, 48)), torch.zeros(4, 16, dtype=torch.long)], dim=1)
    mask = (ids != 0).long()
    model.train()(ids, mask)
    dropped = seen[-1]
    assert (dropped[:, 48:] == 0).all(), "pads must stay pads"
    share = (dropped[:, :48] == 1).float().mean().item()  # 1 = <unk>
    assert 0.35 < share < 0.65, share
    with torch.no_grad():
        model.eval()
        a, b = model(ids, mask), model(ids, mask)
    assert torch.equal(seen[-1], ids) and torch.equal(a, b), "no word dropout at evaluation"


def test_under_bf16_autocast_the_blocks_run_in_bf16_and_the_head_in_fp32():
    """bf16 logits round the small class differences the loss is made of (the wider seed spread of bf16
    scratch runs, benchmarks/RESULTS.md): the blocks' matmuls run in bf16, the pooled vector, the head and
    the logits in fp32."""
    from ftvs.model import ScratchConfig

    torch.manual_seed(0)
    model = ScratchClassifier(ScratchConfig(vocab_size=50, num_labels=3, max_position=16, dropout=0.0)).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, out):
            seen[name] = out.dtype

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(record(name))
    ids = torch.randint(2, 50, (4, 8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.ones_like(ids))
    bf16_ran = {n for n, dtype in seen.items() if dtype == torch.bfloat16}
    assert bf16_ran == {
        f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert seen["head.0"] == seen["head.3"] == logits.dtype == torch.float32
    with torch.no_grad():
        fp32 = model(ids, torch.ones_like(ids))
    torch.testing.assert_close(logits, fp32, atol=5e-3, rtol=5e-2)
    assert not torch.equal(logits, fp32)  # the blocks did compute in bf16
