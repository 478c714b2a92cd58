"""Transfer vs from scratch, and forgetting, for EfficientNet-Lite0 on Fashion-MNIST.

For each technique and seed: test accuracy on the new task and, for techniques that start
from the pretrained weights, what the backbone still knows of ImageNet: on 34 crops of
scikit-learn's sample photos, the agreement of the original 1000-class top-1 (the
pretrained ``_fc`` re-attached to the fine-tuned backbone) with the pretrained model's,
and the relative drift of the backbone's weights. The rows are compatible with
``summarize.py`` (mean ± std over seeds).

    python bench/techniques/forgetting.py --techniques scratch full feature-extraction \
        --seeds 0 1 2 --image-size 64 --out bench/results/fmnist500-64px
"""
import argparse
import csv
import json
import time
from pathlib import Path

from ftlib.config import FinetuneConfig
from ftlib.data import load_dataset, split_dataset
from ftlib.evaluate import HeldOutTest
from ftlib.forgetting import forgetting_report, probe_photos
from ftlib.models import load_model
from ftlib.runner import build_loaders
from ftlib.techniques import TECHNIQUES
from ftlib.train import set_seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--techniques", nargs="+", default=["scratch", "full", "feature-extraction"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train-size", type=int, default=500)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.1, help="l2sp strength")
    parser.add_argument("--out", default="bench/results/forgetting")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = load_dataset("fashion-mnist")
    pretrained = load_model("efficientnet-lite0", num_classes=None)
    photos = probe_photos(num_crops=16)
    rows = []
    for seed in args.seeds:
        splits = split_dataset(raw, train_size=args.train_size, val_size=args.val_size, test_size=args.test_size,
                               seed=seed)
        for technique in args.techniques:
            cfg = FinetuneConfig(task="image", model="efficientnet-lite0", dataset="fashion-mnist",
                                 technique=technique, train_size=args.train_size, val_size=args.val_size,
                                 test_size=args.test_size, epochs=3, lr=1e-3, seed=seed, progress=False,
                                 image_size=args.image_size,
                                 technique_options={"alpha": args.alpha} if technique == "l2sp" else {})
            train, val, test = build_loaders(cfg, splits)
            set_seed(seed)
            model = load_model("efficientnet-lite0", len(raw.class_names))
            start = time.perf_counter()
            result = TECHNIQUES[technique].run(model, train, val, cfg)
            seconds = time.perf_counter() - start
            # Feature extraction wraps the (untouched) backbone; forgetting is measured on the backbone.
            backbone = model if technique == "feature-extraction" else result.get("model", model)
            report = forgetting_report(backbone, pretrained, photos) if technique != "scratch" else {}
            accuracy = HeldOutTest(test, raw.class_names).evaluate(result.get("model", model))["accuracy"]
            history = result["history"]
            row = {"technique": technique, "train_size": args.train_size, "seed": seed, "test_accuracy": accuracy,
                   "val_accuracy": history[history.best_epoch]["val_accuracy"], "train_seconds": seconds,
                   "epoch_seconds": sum(history["seconds"]) / len(history),
                   "trainable_parameters": result.get("trainable_parameters"),
                   "total_parameters": result.get("total_parameters"),
                   "imagenet_top1_agreement": report.get("top1_agreement"),
                   "imagenet_top5_overlap": report.get("top5_overlap"),
                   "imagenet_top1_agreement_pretrained_stats": report.get("top1_agreement_pretrained_stats"),
                   "weight_drift": report.get("weight_drift")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(out / "results.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


if __name__ == "__main__":
    main()
