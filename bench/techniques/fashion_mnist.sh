#!/bin/sh
# Fashion-MNIST, 500 training examples: pretrained EfficientNet-Lite0 fine-tuned vs the same
# architecture from scratch vs frozen features + LogisticRegression, 3 seeds (96 px, 3 epochs).
set -e
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ftlib compare --task image --techniques scratch full feature-extraction --train-sizes 500 \
  --seeds 0 1 2 --val-size 500 --test-size 1000 --out bench/results/fmnist500
