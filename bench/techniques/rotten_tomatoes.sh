#!/bin/sh
# Rotten Tomatoes, 2,000 training examples: every technique next to full fine-tuning.
# One `ftlib compare` per seed, so each seed's results land on disk as soon as it is done;
# bench/techniques/summarize.py pools them. About 20 min per seed on an idle 2-core CPU.
set -e
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SEEDS=${SEEDS:-"0 1 2"}
TECHNIQUES=${TECHNIQUES:-"full feature-extraction lp-ft discriminative gradual l2sp lora frozen"}
for seed in $SEEDS; do
  ftlib compare --task text --techniques $TECHNIQUES --train-sizes 2000 --seeds "$seed" \
    --val-size 500 --test-size 2000 --out "bench/results/rt2000-seed$seed"
done
python bench/techniques/summarize.py bench/results/rt2000-seed* --out bench/results/rt2000
