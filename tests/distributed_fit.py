"""A short fit run by tests/test_distributed.py, once per process, under `accelerate launch`.

Each process writes what it ended with into OUT (argv[1]): its weights and its history;
the main process also evaluates the final weights alone on the whole validation set.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ftlib.models import load_model  # noqa: E402
from ftlib.train import evaluate, fit  # noqa: E402
from tiny_data import make_image_dataset  # noqa: E402

out = Path(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
torch.manual_seed(0)
model = load_model("tiny-cnn", num_classes=3)  # has BatchNorm: its buffers must agree too
train = DataLoader(make_image_dataset(n=96, signal=0.1), batch_size=8, shuffle=True, generator=torch.Generator())
# 45 examples in batches of 8 over 2 processes: the last round is padded with repeats,
# which the gathered metrics must not count.
val = DataLoader(make_image_dataset(n=45, seed=1, signal=0.1), batch_size=8)
history = fit(model, train, val, epochs=3, lr=3e-3, seed=0, progress=True)
torch.save(model.state_dict(), out / f"weights{rank}.pt")
(out / f"history{rank}.json").write_text(json.dumps({"epochs": history.to_list(), "best_epoch": history.best_epoch,
                                                     "precision": history.precision}))
if rank == 0:
    alone = evaluate(model, DataLoader(make_image_dataset(n=45, seed=1, signal=0.1), batch_size=8))
    (out / "alone.json").write_text(json.dumps({"accuracy": alone["accuracy"], "loss": alone["loss"],
                                                "examples": len(alone["y_true"])}))

# The whole job, as `ftlib finetune --data IMAGES --model tiny-cnn` runs it, in the current folder.
from ftlib.pipeline import finetune  # noqa: E402

finetune(data=sys.argv[2], model="tiny-cnn", epochs=1, image_size=32, batch_size=4, progress=False)
