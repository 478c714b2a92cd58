"""Memory of SmolLM2 LoRA training steps: peak and current RSS every 8 steps, one variant per process.

Frozen weights in bf16 (as `ftlib finetune` stores them where the CPU has native bf16),
LoRA r=16 on every linear layer, Rotten Tomatoes as instructions, batches from
`ftlib.generative.sft.make_sft_loader`. Variants: lengths padded to a multiple of 16 or not
(--no-multiple), --round N (pad further, to N), --max-tokens per batch, gradient
checkpointing (--ckpt), glibc's malloc_trim after every step (--trim), weights read
straight into bf16 (--load-bf16) or loaded in fp32 and converted (default, --fp32 keeps
fp32). Run the allocator under test with it: glibc by default,
LD_PRELOAD=libtcmalloc_minimal.so.4 for TCMalloc (what `ftlib finetune` uses), or glibc
tunables such as MALLOC_MMAP_THRESHOLD_=65536.

Run: .venv/bin/python bench/llm/bench_memory.py --n 192 [--no-multiple] [--max-tokens 128] ...
"""
import argparse
import ctypes
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=128)
ap.add_argument("--round", type=int, default=1)
ap.add_argument("--max-tokens", type=int, default=256)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--fp32", action="store_true")
ap.add_argument("--load-bf16", action="store_true")
ap.add_argument("--ckpt", action="store_true")
ap.add_argument("--trim", action="store_true")
ap.add_argument("--no-multiple", action="store_true")
args = ap.parse_args()


def rss():
    """(peak, current) resident memory in MB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * 4096 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, current


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ftlib.generative import sft  # noqa: E402
from ftlib.data import load_dataset, split_dataset  # noqa: E402
from ftlib.models import load_causal_lm  # noqa: E402
from ftlib.optim import adamw  # noqa: E402
from ftlib.pipeline_llm import INSTRUCTIONS, instruction_prompts  # noqa: E402

if args.load_bf16:
    model, tok = load_causal_lm("smollm2-135m", dtype=torch.bfloat16)
else:
    model, tok = load_causal_lm("smollm2-135m")
    if not args.fp32:
        model.to(torch.bfloat16)
print("loaded peak %.0f now %.0f" % rss(), flush=True)
splits = split_dataset(load_dataset("rotten-tomatoes"), train_size=args.n, val_size=32, test_size=64, seed=0)
ans = INSTRUCTIONS["rotten-tomatoes"]["answers"]
ex = [sft.build_sft_example(tok, p, ans[y], 256) for p, y in zip(instruction_prompts("rotten-tomatoes", splits.train.inputs), splits.train.labels)]
if args.ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model = sft.add_lora(model)
if args.ckpt:
    model.enable_input_require_grads()
model.train()
loader = sft.make_sft_loader(ex, tok.pad_token_id, batch_size=args.batch, shuffle=True, max_tokens=args.max_tokens, pad_to_multiple_of=None if args.no_multiple else 16)
libc = ctypes.CDLL("libc.so.6")
params=[p for p in model.parameters() if p.requires_grad]
opt = adamw(params, lr=2e-4)
w = sft.SFTModel(model)
shapes=set()
t0=time.time(); tokens=0
for i, b in enumerate(loader):
    m = args.round; T = b["input_ids"].shape[1]; extra = (-T) % m
    if extra:
        B = b["input_ids"].shape[0]
        b["input_ids"] = torch.cat([b["input_ids"], torch.full((B, extra), tok.pad_token_id)], 1)
        b["attention_mask"] = torch.cat([b["attention_mask"], torch.zeros(B, extra, dtype=torch.long)], 1)
        b["target_mask"] = torch.cat([b["target_mask"], torch.zeros(B, extra, dtype=torch.bool)], 1)
    shapes.add(tuple(b["input_ids"].shape)); tokens += b["input_ids"].numel()
    logits = w(b["input_ids"], b["attention_mask"], b["target_mask"])
    loss = F.cross_entropy(logits, b["labels"])
    opt.zero_grad(); loss.backward(); opt.step()
    del logits, loss
    if args.trim: libc.malloc_trim(0)
    if i % 8 == 7:
        print(f"step {i+1} shapes {len(shapes)} peak %.0f now %.0f" % rss(), flush=True)
dt=time.time()-t0
print(f"train {dt:.1f}s {tokens/dt:.0f} padded tok/s, {len(shapes)} shapes; peak %.0f now %.0f" % rss(), flush=True)
try:
    ctypes.CDLL("libc.so.6").malloc_trim(0); print("after malloc_trim now %.0f" % rss()[1])
except Exception as e: print(e)
