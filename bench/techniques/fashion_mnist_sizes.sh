#!/bin/sh
# Fashion-MNIST data efficiency: EfficientNet-Lite0 at 64 px from scratch vs pretrained
# (full fine-tune, LP-FT) vs frozen features + LogisticRegression, at 100, 500 and 2,000
# training examples (500 validation, 1,000 test), seeds 0-2: the table, the CSV and the
# accuracy-vs-training-size plot land in bench/results/fmnist-sizes/.
set -e
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ftlib compare --task image --techniques scratch full feature-extraction lp-ft --train-sizes 100 500 2000 \
  --seeds 0 1 2 --image-size 64 --out bench/results/fmnist-sizes
