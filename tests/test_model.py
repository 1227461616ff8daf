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
