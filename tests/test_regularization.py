import copy

import pytest
import torch
from torch import nn

from ftlib.heads import set_dropout
from ftlib.models import load_model
from ftlib.techniques.l2sp import backbone_state, l2sp, l2sp_penalty, weight_distance
from ftlib.techniques.label_smoothing import label_smoothing_loss
from ftlib.train import EarlyStopping, fit
from tiny_data import make_image_loader


def _shift(model, deltas):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in deltas:
                p.add_(deltas[name])


def test_l2sp_zero_at_pretrained_weights(tiny_cnn):
    w0 = backbone_state(tiny_cnn)
    assert "fc.weight" not in w0 and "blocks.0.0.weight" in w0
    assert l2sp_penalty(tiny_cnn, w0, alpha=0.5).item() == 0.0


def test_l2sp_equals_formula_and_excludes_head(tiny_cnn):
    w0 = backbone_state(tiny_cnn)
    g = torch.Generator().manual_seed(0)
    deltas = {n: torch.randn(p.shape, generator=g) * 0.1 for n, p in tiny_cnn.named_parameters()}
    _shift(tiny_cnn, deltas)
    alpha = 0.3
    expected = alpha / 2 * sum((d ** 2).sum() for n, d in deltas.items() if not n.startswith("fc."))
    got = l2sp_penalty(tiny_cnn, w0, alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # The head is excluded even when the snapshot carries it.
    with_head = {**w0, **{n: p.detach().clone() * 0 for n, p in tiny_cnn.named_parameters() if n.startswith("fc.")}}
    assert l2sp_penalty(tiny_cnn, with_head, alpha).item() == pytest.approx(got.item())
    with torch.no_grad():
        tiny_cnn.fc.weight.add_(10.0)
    assert l2sp_penalty(tiny_cnn, w0, alpha).item() == pytest.approx(got.item())


def test_l2sp_gradient_pulls_towards_pretrained(tiny_cnn):
    w0 = backbone_state(tiny_cnn)
    _shift(tiny_cnn, {"blocks.0.0.weight": torch.full_like(tiny_cnn.blocks[0][0].weight, 0.2)})
    l2sp_penalty(tiny_cnn, w0, alpha=2.0).backward()
    grad = tiny_cnn.blocks[0][0].weight.grad
    assert torch.allclose(grad, torch.full_like(grad, 2.0 * 0.2), atol=1e-6)  # alpha * (w - w0)
    assert tiny_cnn.fc.weight.grad is None


def test_l2sp_penalty_helper_works_in_fit(tiny_cnn):
    callback = l2sp(tiny_cnn, alpha=0.01)
    assert callback.penalty(tiny_cnn).item() == 0.0
    fit(tiny_cnn, make_image_loader(), None, epochs=1, lr=1e-2, callbacks=[callback], progress=False)
    assert callback.penalty(tiny_cnn).item() > 0.0


def test_l2sp_bad_inputs():
    model = load_model("tiny-cnn", num_classes=3)
    w0 = backbone_state(model)
    with pytest.raises(ValueError, match="alpha must be a number >= 0.*-0.1"):
        l2sp_penalty(model, w0, alpha=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        l2sp(model, alpha=-1)
    with pytest.raises(TypeError, match="pretrained_state must be a mapping"):
        l2sp_penalty(model, [1, 2], alpha=0.1)
    with pytest.raises(ValueError, match="shares no backbone parameter"):
        l2sp_penalty(model, {"other.weight": torch.zeros(1)}, alpha=0.1)
    bad = {**w0, "blocks.0.0.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"blocks.0.0.weight.*shape"):
        l2sp_penalty(model, bad, alpha=0.1)


def test_weight_distance_is_relative_norm(tiny_cnn):
    w0 = backbone_state(tiny_cnn)
    assert weight_distance(tiny_cnn, w0)["relative"] == 0.0
    with torch.no_grad():
        for name, p in tiny_cnn.named_parameters():
            p.mul_(1.1)  # every weight 10% larger: relative drift exactly 0.1
    result = weight_distance(tiny_cnn, w0)
    assert result["relative"] == pytest.approx(0.1, rel=1e-4)
    assert set(result["per_block"]) == {"blocks.0", "blocks.1", "blocks.2"}


def _reference_smoothed_ce(logits, labels, eps):
    """Explicit targets: 1 - eps + eps/K on the true class, eps/K elsewhere."""
    k = logits.shape[1]
    target = torch.full_like(logits, eps / k)
    target[torch.arange(len(labels)), labels] += 1.0 - eps
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_loss_matches_reference_and_pytorch(eps):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 5, generator=g) * 3, torch.randint(0, 5, (16,), generator=g)
    ours = label_smoothing_loss(logits, labels, eps)
    assert ours.item() == pytest.approx(_reference_smoothed_ce(logits, labels, eps).item(), rel=1e-6)
    assert ours.item() == pytest.approx(nn.CrossEntropyLoss(label_smoothing=eps)(logits, labels).item(), rel=1e-6)
    if eps:  # a plausible wrong version spreads eps over the K-1 other classes only
        k = 5
        wrong_target = torch.full_like(logits, eps / (k - 1))
        wrong_target[torch.arange(16), labels] = 1.0 - eps
        wrong = -(wrong_target * torch.log_softmax(logits, 1)).sum(1).mean()
        assert abs(ours.item() - wrong.item()) > 1e-4


def test_fit_label_smoothing_uses_the_smoothed_loss(tiny_cnn):
    loader = make_image_loader(n=16, batch_size=16)
    batch = loader[0]
    eps = 0.2
    history = fit(tiny_cnn, loader, loader, epochs=1, lr=1e-3, loss_fn=nn.CrossEntropyLoss(label_smoothing=eps),
                  progress=False)
    with torch.no_grad():
        tiny_cnn.eval()
        logits = tiny_cnn(batch["pixel_values"])
    smoothed = label_smoothing_loss(logits, batch["labels"], eps).item()
    plain = nn.functional.cross_entropy(logits, batch["labels"]).item()
    assert history[0]["val_loss"] == pytest.approx(smoothed, rel=1e-5)
    assert history[0]["val_loss"] != pytest.approx(plain, rel=1e-3)


def test_label_smoothing_bad_inputs():
    with pytest.raises(ValueError, match="smoothing must be in"):
        label_smoothing_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="expected logits"):
        label_smoothing_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), 0.1)


def test_dropout_is_reexported(tiny_cnn):
    from ftlib.heads import replace_head

    replace_head(tiny_cnn, 3, dropout=0.2)
    assert set_dropout(tiny_cnn, 0.5) == 1 and tiny_cnn.fc[0].p == 0.5


def test_early_stopping_is_fits_patience(tiny_cnn):
    # No epoch can beat the first by min_delta=10, so patience 1 stops after the second.
    history = fit(tiny_cnn, make_image_loader(), make_image_loader(seed=1), epochs=10, lr=1e-3,
                  callbacks=[EarlyStopping(patience=1, min_delta=10.0)], progress=False)
    assert history.stopped_early and len(history) == 2


def test_forgetting_report_on_a_tiny_model():
    from ftlib.forgetting import forgetting_report, reattach_head
    from ftlib.heads import replace_head

    torch.manual_seed(0)
    pretrained = load_model("tiny-cnn", num_classes=10)
    finetuned = replace_head(copy.deepcopy(pretrained), 3)
    images = torch.randn(64, 3, 16, 16)
    same = forgetting_report(finetuned, pretrained, images)
    assert same["top1_agreement"] == 1.0 and same["top5_overlap"] == 1.0 and same["weight_drift"] == 0.0
    with torch.no_grad():
        finetuned.blocks[0][0].weight.normal_()  # a backbone rewritten by "fine-tuning"
    changed = forgetting_report(finetuned, pretrained, images)
    assert changed["top1_agreement"] < 1.0 and changed["weight_drift"] > 0.0
    assert finetuned.fc.out_features == 3  # the report copies; the fine-tuned model keeps its head
    assert reattach_head(finetuned, pretrained).fc.out_features == 10


def test_forgetting_separates_batchnorm_statistics_from_weights():
    from ftlib.forgetting import forgetting_report
    from ftlib.heads import replace_head

    torch.manual_seed(0)
    pretrained = load_model("tiny-cnn", num_classes=10)
    finetuned = replace_head(copy.deepcopy(pretrained), 3)
    with torch.no_grad():
        finetuned.blocks[0][1].running_mean.fill_(3.0)  # only the statistics moved, as on new data
        finetuned.blocks[0][1].running_var.fill_(0.1)
    report = forgetting_report(finetuned, pretrained, torch.randn(64, 3, 16, 16))
    assert report["top1_agreement"] < 1.0 and report["weight_drift"] == 0.0
    assert report["top1_agreement_pretrained_stats"] == 1.0
