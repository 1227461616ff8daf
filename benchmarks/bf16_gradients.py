"""How far bf16 autocast moves the from-scratch arm's gradients from fp32, per parameter group and with
parts of the model kept in fp32: `python benchmarks/bf16_gradients.py PREPARED_DATA [FP32_STEPS]`.

Builds the tiny preset on the data, trains it FP32_STEPS steps in fp32 (default 300; dropout off), then
computes the gradient of the same 20 batches of 32 in fp32 and under bf16 autocast, with nothing, the head,
the attention, the MLP or head and attention forced to fp32, and prints the relative error
||g_bf16 - g_fp32|| / ||g_fp32|| per parameter group and the cosine of the whole gradient. The model keeps
its head in fp32 under autocast since issue #22, so "bf16" and "head" now print the same row; the table in
benchmarks/RESULTS.md ("bf16 and the scratch arm") was taken before that change.
"""

import contextlib
import sys

import torch
import torch.nn.functional as F

from ftvs.arms import build_arm
from ftvs.config import TrainConfig
from ftvs.data import load_metadata, load_split

torch.manual_seed(0)
data = sys.argv[1]
cfg = TrainConfig(
    arm="scratch", data=data, output_dir="/tmp/x", preset="tiny", mixed_precision="no", dropout=0.0
)
texts, labels = load_split(data, "train")
names = load_metadata(data)["label_names"]
arm = build_arm(cfg, texts, names)
m = arm.model
ex = arm.encode(texts)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
# train fp32 a bit so the state is not the init
g = torch.Generator().manual_seed(0)


def batch(i):
    idx = torch.randint(len(ex), (32,), generator=g).tolist()
    b = arm.collate([ex[j] for j in idx])
    b["labels"] = torch.tensor([labels[j] for j in idx])
    return b


for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 300):
    b = batch(i)
    y = b.pop("labels")
    loss = F.cross_entropy(m(**b).float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("trained loss", loss.item())
m.eval()


def fp32(mod):
    f = mod.forward

    def wrapped(*a, **k):
        with torch.autocast("cpu", enabled=False):
            return f(*[t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in a], **k)

    return wrapped


def grads(variant, b):
    saved = {}
    if variant != "fp32":
        for name, mod in m.named_modules():
            if (
                variant in ("head", "head+attn")
                and name == "head"
                or variant in ("attn", "head+attn")
                and name.endswith("attn")
                or variant == "mlp"
                and name.endswith("mlp")
            ):
                saved[mod] = mod.forward
                mod.forward = fp32(mod)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if variant != "fp32" else contextlib.nullcontext()
    b = dict(b)
    y = b.pop("labels")
    m.zero_grad()
    with ctx:
        logits = m(**b)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    for mod, f in saved.items():
        mod.forward = f
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, logits.dtype


groups = [
    "tok_emb",
    "pos_emb",
    "blocks.0.attn",
    "blocks.0.mlp",
    "blocks.0.ln",
    "blocks.1",
    "ln_f",
    "head.0",
    "head.3",
]
variants = ["bf16", "head", "attn", "mlp", "head+attn"]
err = {v: {gname: 0.0 for gname in groups} for v in variants}
cos = {v: 0.0 for v in variants}
N = 20
for i in range(N):
    b = batch(i)
    ref, _ = grads("fp32", b)
    for v in variants:
        gv, dt = grads(v, b)
        for gname in groups:
            keys = [k for k in ref if k.startswith(gname)]
            num = sum((gv[k] - ref[k]).norm() ** 2 for k in keys) ** 0.5
            den = sum(ref[k].norm() ** 2 for k in keys) ** 0.5
            err[v][gname] += (num / den).item() / N
        a = torch.cat([gv[k].flatten() for k in ref])
        r = torch.cat([ref[k].flatten() for k in ref])
        cos[v] += F.cosine_similarity(a, r, dim=0).item() / N
print("relative grad error (mean over", N, "batches)")
print("variant".ljust(10), *[gname[:12].rjust(13) for gname in groups], "cos".rjust(8))
for v in variants:
    print(v.ljust(10), *[f"{err[v][gname]:13.4f}" for gname in groups], f"{cos[v]:8.5f}")
