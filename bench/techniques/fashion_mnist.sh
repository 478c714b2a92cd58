#!/bin/sh
# Fashion-MNIST, 500 training examples (200 validation, 500 test), EfficientNet-Lite0 at 64 px,
# 3 epochs, lr 1e-3: pretrained fine-tuning vs the same architecture from scratch vs frozen
# features + LogisticRegression, seeds 0-2, with ImageNet forgetting for the pretrained runs.
# Then the forgetting of L2-SP and LP-FT next to full fine-tuning (seed 0).
# (`ftlib compare --task image --techniques scratch full feature-extraction --train-sizes 500`
# gives the same comparison at 96 px, without the forgetting columns.)
set -e
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python bench/techniques/forgetting.py --techniques full scratch feature-extraction --seeds 0 1 2 \
  --image-size 64 --out bench/results/fmnist500-64px
python bench/techniques/summarize.py bench/results/fmnist500-64px --out bench/results/fmnist500-64px-summary
python bench/techniques/forgetting.py --techniques full l2sp lp-ft --seeds 0 --alpha 0.1 --image-size 64 \
  --out bench/results/forgetting-64px
