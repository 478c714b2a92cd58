"""How much ImageNet knowledge survives fine-tuning EfficientNet-Lite0 on Fashion-MNIST.

For each technique: test accuracy on the new task, and on 34 crops of scikit-learn's
sample photos the agreement of the original 1000-class top-1 (the pretrained ``_fc``
re-attached to the fine-tuned backbone) with the pretrained model's, plus the relative
drift of the backbone's weights.

    OMP_NUM_THREADS=1 python bench/techniques/forgetting.py --seeds 0 --out bench/results/forgetting
"""
import argparse
import csv
import json
import time
from pathlib import Path

from ftlib.data import load_dataset, split_dataset
from ftlib.evaluate import HeldOutTest
from ftlib.forgetting import forgetting_report, probe_photos
from ftlib.models import load_model
from ftlib.pipeline import FinetuneConfig, build_loaders
from ftlib.techniques import TECHNIQUES
from ftlib.train import set_seed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--techniques", nargs="+", default=["frozen", "lp-ft", "l2sp", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--train-size", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=1000)
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
        splits = split_dataset(raw, train_size=args.train_size, val_size=500, test_size=args.test_size, seed=seed)
        for technique in args.techniques:
            cfg = FinetuneConfig(task="image", model="efficientnet-lite0", dataset="fashion-mnist",
                                 technique=technique, train_size=args.train_size, val_size=500,
                                 test_size=args.test_size, epochs=3, lr=1e-3, seed=seed, progress=False,
                                 technique_options={"alpha": args.alpha} if technique == "l2sp" else {})
            train, val, test = build_loaders(cfg, splits)
            set_seed(seed)
            model = load_model("efficientnet-lite0", len(raw.class_names))
            start = time.perf_counter()
            result = TECHNIQUES[technique].run(model, train, val, cfg)
            seconds = time.perf_counter() - start
            model = result.get("model", model)
            accuracy = HeldOutTest(test, raw.class_names).evaluate(model)["accuracy"]
            report = forgetting_report(model, pretrained, photos)
            row = {"technique": technique, "seed": seed, "test_accuracy": accuracy,
                   "imagenet_top1_agreement": report["top1_agreement"], "imagenet_top5_overlap": report["top5_overlap"],
                   "weight_drift": report["weight_drift"], "train_seconds": seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(out / "results.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, list(row))
                writer.writeheader()
                writer.writerows(rows)


if __name__ == "__main__":
    main()
