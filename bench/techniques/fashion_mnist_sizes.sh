#!/bin/sh
# Fashion-MNIST data efficiency: EfficientNet-Lite0 at 64 px from scratch vs pretrained
# (full fine-tune, LP-FT) vs frozen features + LogisticRegression (500 validation, 1,000
# test): 100 and 500 training examples over seeds 0-2, 2,000 examples (scratch, full,
# features) on seed 0 only, to fit the session's CPU budget. Each `ftlib compare` writes
# its own folder; summarize.py pools them into one table and an accuracy-vs-size plot.
set -e
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=bench/results/fmnist-sizes
ftlib compare --task image --techniques scratch full feature-extraction lp-ft --train-sizes 100 500 \
  --seeds 0 1 2 --image-size 64 --out $OUT-small
ftlib compare --task image --techniques scratch full feature-extraction --train-sizes 2000 \
  --seeds 0 --image-size 64 --out $OUT-2000
python bench/techniques/summarize.py $OUT-small $OUT-2000 --out $OUT
