import copy

import pytest
import torch
from torch import nn

from ftlib.freezing import (GradualUnfreezing, block_names, freeze_backbone, freeze_bottom, freeze_up_to,
                            recalibrate_batchnorm, set_frozen_batchnorm_eval, trainable_summary, unfreeze)
from ftlib.models import count_parameters, load_model
from ftlib.train import train_one_epoch


def test_block_names_bottom_to_top_without_head():
    assert block_names(load_model("tiny-cnn")) == ["blocks.0", "blocks.1", "blocks.2"]
    names = block_names(load_model("tiny-bert"))
    assert names == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler"]


def test_freeze_backbone_leaves_only_head_trainable(tiny_cnn):
    freeze_backbone(tiny_cnn)
    trainable = {n for n, p in tiny_cnn.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert count_parameters(tiny_cnn)[0] == 64 * 3 + 3
    assert "trainable 195 of" in trainable_summary(tiny_cnn)


def test_freeze_up_to_freezes_bottom_blocks_inclusive(tiny_cnn):
    freeze_up_to(tiny_cnn, "blocks.1")
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in tiny_cnn.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.0", "blocks.1"}
    assert all(p.requires_grad for p in tiny_cnn.blocks[2].parameters())
    unfreeze(tiny_cnn)
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_freeze_up_to_unknown_block_lists_available(tiny_cnn):
    with pytest.raises(ValueError, match=r"must be one of \['blocks.0', 'blocks.1', 'blocks.2'\]. Got 'layer9'"):
        freeze_up_to(tiny_cnn, "layer9")
    with pytest.raises(ValueError, match="num_blocks"):
        freeze_bottom(tiny_cnn, 4)


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


def test_frozen_parameters_do_not_move_and_trainable_ones_do(tiny_cnn, image_loader):
    freeze_up_to(tiny_cnn, "blocks.1")
    before = copy.deepcopy(tiny_cnn.state_dict())
    opt = torch.optim.SGD([p for p in tiny_cnn.parameters() if p.requires_grad], lr=0.1)
    train_one_epoch(tiny_cnn, image_loader, opt, nn.CrossEntropyLoss())
    after = tiny_cnn.state_dict()
    for name, param in tiny_cnn.named_parameters():
        moved = not torch.equal(before[name], after[name])
        assert moved == param.requires_grad, name


def test_batchnorm_statistics_unchanged_in_frozen_blocks(tiny_cnn, image_loader):
    freeze_up_to(tiny_cnn, "blocks.1")
    stats = _bn_stats(tiny_cnn)
    opt = torch.optim.SGD([p for p in tiny_cnn.parameters() if p.requires_grad], lr=0.1)
    train_one_epoch(tiny_cnn, image_loader, opt, nn.CrossEntropyLoss())
    after = _bn_stats(tiny_cnn)
    for name in stats:
        frozen = name.startswith(("blocks.0", "blocks.1"))
        assert torch.equal(stats[name], after[name]) == frozen, name


def test_without_the_handling_batchnorm_statistics_drift(tiny_cnn, image_loader):
    """What the handling prevents: model.train() alone moves frozen BatchNorm statistics."""
    freeze_up_to(tiny_cnn, "blocks.1")
    stats = _bn_stats(tiny_cnn)
    tiny_cnn.train()  # no set_frozen_batchnorm_eval
    with torch.no_grad():
        for batch in image_loader:
            tiny_cnn(batch["pixel_values"])
    assert not torch.equal(stats["blocks.0.1.running_mean"], tiny_cnn.blocks[0][1].running_mean)
    assert set_frozen_batchnorm_eval(tiny_cnn) == 2
    assert not tiny_cnn.blocks[0][1].training and tiny_cnn.blocks[2][1].training


def test_recalibrated_batchnorm_statistics_are_those_of_the_new_data(tiny_cnn, image_loader):
    batches = list(image_loader)
    x = torch.cat([b["pixel_values"] for b in batches])
    conv, bn = tiny_cnn.blocks[0][0], tiny_cnn.blocks[0][1]
    bn.running_mean.fill_(5.0)  # "pretrained" statistics of other data
    momentum, weights = bn.momentum, copy.deepcopy(tiny_cnn.state_dict())
    tiny_cnn.eval()
    assert recalibrate_batchnorm(tiny_cnn, batches) == 3
    with torch.no_grad():
        h = conv(x)  # (N, C, H, W): what the first BatchNorm normalizes
    # Equal batches: the cumulative average of the batch means is the mean over all data.
    torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == momentum and not tiny_cnn.training  # settings and mode restored
    for name, value in tiny_cnn.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, weights[name]), f"{name} changed: only statistics may"
    assert recalibrate_batchnorm(load_model("tiny-bert"), batches) == 0  # LayerNorm: nothing to do
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(tiny_cnn, [])


def test_layernorm_models_have_no_running_statistics():
    bert = load_model("tiny-bert")
    freeze_backbone(bert)
    assert set_frozen_batchnorm_eval(bert) == 0
    assert not [n for n, _ in bert.named_buffers() if "running" in n]


def test_gradual_unfreezing_opens_one_block_per_epoch(tiny_cnn):
    schedule = GradualUnfreezing(tiny_cnn)
    trainable_blocks = []
    for epoch in range(5):
        schedule.on_epoch_start(tiny_cnn, epoch)
        trainable_blocks.append([all(p.requires_grad for p in b.parameters()) for b in tiny_cnn.blocks])
        assert all(p.requires_grad for p in tiny_cnn.fc.parameters())
    assert trainable_blocks == [[False, False, False], [False, False, True], [False, True, True],
                                [True, True, True], [True, True, True]]
    with pytest.raises(ValueError, match="blocks_per_epoch"):
        GradualUnfreezing(tiny_cnn, 0)
