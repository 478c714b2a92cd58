"""Plausible wrong implementations of the course exercises: every check must reject each one.

``WRONG[exercise]`` lists ``(description, function)`` pairs. Each function is what a learner
might really write: it runs, returns the right kind of value, and is wrong in one way.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ftlib import data as ref_data
import ftlib.evaluate as ref_eval
from ftlib import freezing as ref_freezing
from ftlib import optim as ref_optim
from ftlib import train as ref_train
from ftlib import weights as ref_weights
from ftlib.freezing import layer_blocks, set_frozen_batchnorm_eval
from ftlib.heads import find_head


# 01 count_parameters -------------------------------------------------------------------------
def count_with_buffers(model):
    total = sum(v.numel() for v in model.state_dict().values())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def count_shared_twice(model):
    params = [p for m in model.modules() for p in m.parameters(recurse=False)]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def count_ignoring_frozen(model):
    total = sum(p.numel() for p in model.parameters())
    return total, total


# 02 stratified_split -------------------------------------------------------------------------
def split_not_stratified(labels, val_fraction=0.1, test_fraction=0.2, seed=0, groups=None):
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(test_fraction * n), int(val_fraction * n)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def split_overlapping(labels, val_fraction=0.1, test_fraction=0.2, seed=0, groups=None):
    train, val, test = ref_data.stratified_split(labels, val_fraction, test_fraction, seed)
    return np.concatenate([train, val]), val, test  # validation examples also train


def split_ignoring_groups(labels, val_fraction=0.1, test_fraction=0.2, seed=0, groups=None):
    return ref_data.stratified_split(labels, val_fraction, test_fraction, seed)


def split_global_seed(labels, val_fraction=0.1, test_fraction=0.2, seed=0, groups=None):
    labels = np.asarray(labels)
    parts = [[], [], []]
    for c in np.unique(labels):
        idx = np.random.permutation(np.flatnonzero(labels == c))  # ignores seed
        n_test, n_val = int(test_fraction * len(idx)), int(val_fraction * len(idx))
        parts[2] += idx[:n_test].tolist()
        parts[1] += idx[n_test:n_test + n_val].tolist()
        parts[0] += idx[n_test + n_val:].tolist()
    return tuple(np.array(p) for p in parts)


# 02 prepare_images ---------------------------------------------------------------------------
def images_fixed_stats(images, size, mean, std):
    return ref_data.prepare_images(images, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def images_no_scaling(images, size, mean, std):
    x = torch.as_tensor(np.asarray(images)).float()  # forgets to divide uint8 by 255
    return ref_data.prepare_images(x, size, mean, std)


def images_nearest(images, size, mean, std):
    x = torch.as_tensor(np.asarray(images))
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(size, size), mode="nearest")
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# 02 collate_text -----------------------------------------------------------------------------
def collate_max_length_padding(batch, tokenizer, max_length=64):
    out = dict(tokenizer([t for t, _ in batch], padding="max_length", truncation=True, max_length=max_length,
                         return_tensors="pt"))
    out["labels"] = torch.tensor([y for _, y in batch])
    return out


def collate_no_truncation(batch, tokenizer, max_length=64):
    out = dict(tokenizer([t for t, _ in batch], padding="longest", return_tensors="pt"))
    out["labels"] = torch.tensor([y for _, y in batch])
    return out


def collate_float_labels(batch, tokenizer, max_length=64):
    out = ref_data.collate_text(batch, tokenizer, max_length)
    out["labels"] = out["labels"].float()
    return out


# 03 load_pretrained_weights ------------------------------------------------------------------
def load_strict_false(model, state_dict):
    result = model.load_state_dict(state_dict, strict=False)
    return result.missing_keys, result.unexpected_keys


def load_skip_mismatches(model, state_dict):
    own = model.state_dict()
    keep = {k: v for k, v in state_dict.items() if k not in own or own[k].shape == v.shape}
    result = model.load_state_dict(keep, strict=False)
    return result.missing_keys, result.unexpected_keys


def load_parameters_only(model, state_dict):
    own = model.state_dict()
    for k, v in state_dict.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}")
    names = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state_dict.items():
            if k in names:
                names[k].copy_(v)  # forgets BatchNorm running statistics
    return [k for k in own if k not in state_dict], [k for k in state_dict if k not in own]


# 03 top_k_classes ----------------------------------------------------------------------------
def top_k_train_mode(model, images, k=5, class_names=None):
    with torch.no_grad():
        probs = model(images).softmax(-1)
    top = probs.topk(k, dim=-1)
    return [[(class_names[i] if class_names else int(i), float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
            for ps, ids in zip(top.values, top.indices)]


def top_k_no_restore(model, images, k=5, class_names=None):
    model.eval()
    return top_k_train_mode(model, images, k, class_names)


def top_k_with_grad(model, images, k=5, class_names=None):
    was = model.training
    model.eval()
    probs = model(images).softmax(-1)
    model.train(was)
    top = probs.topk(k, dim=-1)
    return [[(class_names[i] if class_names else int(i), float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
            for ps, ids in zip(top.values, top.indices)]


def top_k_logits(model, images, k=5, class_names=None):
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(images)
    model.train(was)
    top = logits.topk(k, dim=-1)  # raw logits reported as probabilities
    return [[(class_names[i] if class_names else int(i), float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
            for ps, ids in zip(top.values, top.indices)]


# 04 replace_head -----------------------------------------------------------------------------
def head_hard_coded_width(model, num_classes, dropout=0.0):
    name, _ = find_head(model)
    setattr(model, name, nn.Linear(1280, num_classes))
    return model


def head_dropout_after(model, num_classes, dropout=0.0):
    name, old = find_head(model)
    linear = nn.Linear(ref_freezing.find_head(model)[1].in_features if isinstance(old, nn.Linear) else 5, num_classes)
    setattr(model, name, nn.Sequential(linear, nn.Dropout(dropout)) if dropout else linear)
    if getattr(model, "config", None) is not None:
        model.config.num_labels = num_classes
    return model


def head_no_config(model, num_classes, dropout=0.0):
    name, old = find_head(model)
    in_features = next(m for m in old.modules() if isinstance(m, nn.Linear)).in_features
    linear = nn.Linear(in_features, num_classes)
    setattr(model, name, nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear)
    return model


# 04 freezing ---------------------------------------------------------------------------------
def freeze_everything(model):
    model.requires_grad_(False)
    return model


def freeze_without_unfreezing_head(model):
    _, head = find_head(model)
    for p in model.parameters():
        if not any(p is q for q in head.parameters()):
            p.requires_grad_(False)
    return model


def freeze_up_to_exclusive(model, block_name):
    names = ref_freezing.block_names(model)
    if block_name not in names:
        raise ValueError(f"unknown block {block_name!r}; one of {names}")
    return ref_freezing.freeze_bottom(model, names.index(block_name))


def freeze_up_to_no_unfreeze(model, block_name):
    names = ref_freezing.block_names(model)
    if block_name not in names:
        raise ValueError(f"unknown block {block_name!r}; one of {names}")
    for name, block in layer_blocks(model)[: names.index(block_name) + 1]:
        block.requires_grad_(False)
    return model


def freeze_up_to_silent(model, block_name):
    names = ref_freezing.block_names(model)
    if block_name not in names:
        return model
    return ref_freezing.freeze_up_to(model, block_name)


def bn_all_eval(model):
    count = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            count += 1
    return count


def bn_model_eval(model):
    model.eval()
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def bn_any_frozen(model):
    count = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and any(not p.requires_grad for p in m.parameters()):
            m.eval()
            count += 1
    return count


def bn_requires_grad_only(model):
    return 0  # believes requires_grad=False already freezes BatchNorm


# 05 param_groups / warmup_cosine -------------------------------------------------------------
def groups_decay_everything(model, base_lr, head_lr_multiplier=10.0, layer_decay=1.0, weight_decay=0.01):
    groups = ref_optim.param_groups(model, base_lr, head_lr_multiplier, layer_decay, weight_decay)
    for g in groups:
        g["weight_decay"] = weight_decay
    return groups


def groups_no_head_multiplier(model, base_lr, head_lr_multiplier=10.0, layer_decay=1.0, weight_decay=0.01):
    return ref_optim.param_groups(model, base_lr, 1.0, layer_decay, weight_decay)


def groups_decay_reversed(model, base_lr, head_lr_multiplier=10.0, layer_decay=1.0, weight_decay=0.01):
    groups = ref_optim.param_groups(model, base_lr, head_lr_multiplier, 1.0, weight_decay)
    blocks = [name for name, _ in layer_blocks(model)]
    for g in groups:
        name = g["name"].split(" ")[0]
        if name in blocks:
            g["lr"] = base_lr * layer_decay ** blocks.index(name)  # bottom block fastest
    return groups


def groups_with_frozen(model, base_lr, head_lr_multiplier=10.0, layer_decay=1.0, weight_decay=0.01):
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(True)
    groups = ref_optim.param_groups(model, base_lr, head_lr_multiplier, layer_decay, weight_decay)
    for p, f in flags.items():
        p.requires_grad_(f)
    return groups


def cosine_warmup_off_by_one(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return ref_optim.warmup_cosine(step, total_steps, warmup_steps, base_lr)


def cosine_no_clip(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_from_zero(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, step / total_steps)  # progress counted from step 0, not from the end of warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


# 06 train_one_epoch / evaluate / EarlyStopping -----------------------------------------------
def train_no_zero_grad(model, loader, optimizer, loss_fn, scheduler=None):
    model.train()
    set_frozen_batchnorm_eval(model)
    total, correct, seen = 0.0, 0, 0
    for batch in loader:
        logits, labels = ref_train.logits_and_labels(model, batch)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(labels)
        correct += (logits.argmax(-1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total / seen, "accuracy": correct / seen}


def train_frozen_bn_moves(model, loader, optimizer, loss_fn, scheduler=None):
    model.train()
    total, correct, seen = 0.0, 0, 0
    for batch in loader:
        logits, labels = ref_train.logits_and_labels(model, batch)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(labels)
        correct += (logits.argmax(-1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total / seen, "accuracy": correct / seen}


def train_batch_mean_loss(model, loader, optimizer, loss_fn, scheduler=None):
    result = ref_train.train_one_epoch(model, loader, optimizer, loss_fn, scheduler)
    return dict(result, loss=result["loss"] * 1.0001 + 1e-3)  # stands for averaging batch means


def train_scheduler_per_epoch(model, loader, optimizer, loss_fn, scheduler=None):
    result = ref_train.train_one_epoch(model, loader, optimizer, loss_fn, None)
    if scheduler is not None:
        scheduler.step()
    return result


def evaluate_train_mode(model, loader, loss_fn):
    total, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            logits, labels = ref_train.logits_and_labels(model, batch)
            total += loss_fn(logits, labels).item() * len(labels)
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
    return {"loss": total / seen, "accuracy": correct / seen}


def evaluate_no_restore(model, loader, loss_fn):
    model.eval()
    return evaluate_train_mode(model, loader, loss_fn)


def evaluate_with_grad(model, loader, loss_fn):
    was = model.training
    model.eval()
    total, correct, seen = 0.0, 0, 0
    for batch in loader:
        logits, labels = ref_train.logits_and_labels(model, batch)
        total += loss_fn(logits, labels).item() * len(labels)
        correct += (logits.argmax(-1) == labels).sum().item()
        seen += len(labels)
    model.train(was)
    return {"loss": total / seen, "accuracy": correct / seen}


def evaluate_batch_mean(model, loader, loss_fn):
    was = model.training
    model.eval()
    losses, correct, seen = [], 0, 0
    with torch.no_grad():
        for batch in loader:
            logits, labels = ref_train.logits_and_labels(model, batch)
            losses.append(loss_fn(logits, labels).item())
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
    model.train(was)
    return {"loss": sum(losses) / len(losses), "accuracy": correct / seen}


class StoppingLessOrEqual(ref_train.EarlyStopping):
    def improved(self, value):
        return self.best_ is None or value <= self.best_ - self.min_delta


class StoppingOffByOne(ref_train.EarlyStopping):
    def step(self, value):
        self.epoch_ += 1
        if self.improved(value):
            self.best_, self.best_epoch_, self.bad_epochs_ = value, self.epoch_, 0
        else:
            self.bad_epochs_ += 1
        return self.bad_epochs_ > self.patience


class StoppingIgnoresDelta(ref_train.EarlyStopping):
    def improved(self, value):
        return self.best_ is None or value < self.best_


# 07 metrics and the held-out test --------------------------------------------------------------
def confusion_transposed(y_true, y_pred, num_classes):
    return ref_eval.confusion_matrix(y_pred, y_true, num_classes)


def confusion_present_only(y_true, y_pred, num_classes):
    k = int(max(np.max(y_true), np.max(y_pred))) + 1
    return ref_eval.confusion_matrix(y_true, y_pred, k)


def f1_micro(y_true, y_pred):
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean())


def f1_weighted(y_true, y_pred):
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="weighted"))


def f1_of_means(y_true, y_pred):
    from sklearn.metrics import precision_score, recall_score

    p = precision_score(y_true, y_pred, average="macro", zero_division=0)
    r = recall_score(y_true, y_pred, average="macro", zero_division=0)
    return float(2 * p * r / (p + r))


def bootstrap_without_replacement(correct, num_resamples=1000, seed=0):
    correct = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = [rng.permutation(correct).mean() for _ in range(num_resamples)]  # always the same mean
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_std_interval(correct, num_resamples=1000, seed=0):
    correct = np.asarray(correct, dtype=float)
    acc, sd = correct.mean(), correct.std()  # the spread of single examples, not of the mean
    return float(acc - 1.96 * sd), float(acc + 1.96 * sd)


def bootstrap_unseeded(correct, num_resamples=1000, seed=0):
    return ref_eval.bootstrap_interval(correct, num_resamples, seed=np.random.randint(1 << 30))


def select_on_test(candidates, val_loader, test):
    results = {name: test.evaluate(model, allow_reuse=True) for name, model in candidates.items()}
    best = max(results, key=lambda n: results[n]["accuracy"])
    return best, results[best]


def select_then_test_twice(candidates, val_loader, test):
    scores = {n: ref_train.evaluate(m, val_loader)["accuracy"] for n, m in candidates.items()}
    best = max(scores, key=scores.get)
    test.evaluate(candidates[best])
    return best, test.evaluate(candidates[best], allow_reuse=True)


def select_worst(candidates, val_loader, test):
    scores = {n: ref_train.evaluate(m, val_loader)["loss"] for n, m in candidates.items()}
    best = max(scores, key=scores.get)  # highest loss
    return best, test.evaluate(candidates[best])


# 08 extract_features / l2sp_penalty -------------------------------------------------------------
def _features_with(model, loader, pool, train_mode=False):
    from ftlib.techniques.features import text_encoder

    was = model.training
    model.train(train_mode)
    X, y = [], []
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            if "input_ids" in inputs:
                hidden = text_encoder(model)(**inputs).last_hidden_state
                X.append(pool(hidden, inputs["attention_mask"]))
            else:
                _, head = find_head(model)
                seen = []
                hook = head.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
                model(inputs["pixel_values"])
                hook.remove()
                X.append(seen[0].flatten(1))
            y.append(batch["labels"])
    model.train(was)
    return torch.cat(X).numpy(), torch.cat(y).numpy()


def _mean_pool(hidden, mask):
    from ftlib.techniques.features import mean_pool

    return mean_pool(hidden, mask)


def features_train_mode(backbone, loader):
    return _features_with(backbone, loader, _mean_pool, train_mode=True)


def features_cls_token(backbone, loader):
    return _features_with(backbone, loader, lambda hidden, mask: hidden[:, 0])


def features_pool_with_padding(backbone, loader):
    return _features_with(backbone, loader, lambda hidden, mask: hidden.mean(dim=1))


def features_logits(backbone, loader):
    from ftlib.techniques.features import extract_features

    X, y = extract_features(backbone, loader)
    if X.shape[1] == 6:  # the image case: return the head's outputs instead of its inputs
        _, head = find_head(backbone)
        with torch.no_grad():
            X = head(torch.as_tensor(X)).numpy()
    return X, y


def l2sp_with_head(model, pretrained_state, alpha):
    terms = [(p - pretrained_state[n]).pow(2).sum() for n, p in model.named_parameters() if n in pretrained_state]
    return 0.5 * alpha * torch.stack(terms).sum()


def l2sp_to_zero(model, pretrained_state, alpha):
    head, _ = find_head(model)
    terms = [p.pow(2).sum() for n, p in model.named_parameters() if not n.startswith(head + ".")]
    return 0.5 * alpha * torch.stack(terms).sum()


def l2sp_no_half(model, pretrained_state, alpha):
    from ftlib.techniques.l2sp import l2sp_penalty

    return 2 * l2sp_penalty(model, pretrained_state, alpha)


def l2sp_detached(model, pretrained_state, alpha):
    from ftlib.techniques.l2sp import l2sp_penalty

    return torch.tensor(float(l2sp_penalty(model, pretrained_state, alpha)))


WRONG = {
    "count_parameters": [("counts buffers", count_with_buffers), ("counts shared weights twice", count_shared_twice),
                         ("ignores requires_grad", count_ignoring_frozen)],
    "stratified_split": [("not stratified", split_not_stratified), ("train overlaps val", split_overlapping),
                         ("ignores groups", split_ignoring_groups), ("ignores the seed", split_global_seed)],
    "prepare_images": [("fixed statistics instead of the given ones", images_fixed_stats),
                       ("no division by 255", images_no_scaling), ("nearest-neighbour resize", images_nearest)],
    "collate_text": [("pads to max_length", collate_max_length_padding), ("no truncation", collate_no_truncation),
                     ("float labels", collate_float_labels)],
    "load_pretrained_weights": [("strict=False, no shape check", load_strict_false),
                                ("silently skips mismatches", load_skip_mismatches),
                                ("copies parameters but not buffers", load_parameters_only)],
    "top_k_classes": [("predicts in train mode", top_k_train_mode), ("does not restore the mode", top_k_no_restore),
                      ("records gradients", top_k_with_grad), ("logits, not probabilities", top_k_logits)],
    "replace_head": [("hard-coded in_features", head_hard_coded_width), ("dropout after the linear", head_dropout_after),
                     ("config.num_labels not updated", head_no_config)],
    "freeze_backbone": [("freezes the head too", freeze_everything),
                        ("leaves a frozen head frozen", freeze_without_unfreezing_head)],
    "freeze_up_to": [("excludes block_name", freeze_up_to_exclusive), ("never unfreezes the top", freeze_up_to_no_unfreeze),
                     ("ignores unknown names", freeze_up_to_silent)],
    "set_frozen_batchnorm_eval": [("every BatchNorm to eval", bn_all_eval), ("model.eval()", bn_model_eval),
                                  ("partly frozen counts as frozen", bn_any_frozen),
                                  ("BatchNorm left in train mode", bn_requires_grad_only)],
    "param_groups": [("weight decay on biases and norms", groups_decay_everything),
                     ("no head multiplier", groups_no_head_multiplier),
                     ("layer decay upside down", groups_decay_reversed),
                     ("frozen parameters included", groups_with_frozen)],
    "warmup_cosine": [("warmup off by one", cosine_warmup_off_by_one), ("no clip past the end", cosine_no_clip),
                      ("cosine progress from step 0", cosine_from_zero)],
    "train_one_epoch": [("no zero_grad", train_no_zero_grad), ("frozen BatchNorm in train mode", train_frozen_bn_moves),
                        ("loss averaged over batches", train_batch_mean_loss),
                        ("scheduler stepped per epoch", train_scheduler_per_epoch)],
    "evaluate": [("evaluates in train mode", evaluate_train_mode), ("does not restore the mode", evaluate_no_restore),
                 ("records gradients", evaluate_with_grad), ("loss averaged over batches", evaluate_batch_mean)],
    "EarlyStopping": [("<= counts ties as improvements", StoppingLessOrEqual), ("patience off by one", StoppingOffByOne),
                      ("ignores min_delta", StoppingIgnoresDelta)],
    "confusion_matrix": [("transposed", confusion_transposed), ("drops absent classes", confusion_present_only)],
    "macro_f1": [("micro F1 (accuracy)", f1_micro), ("weighted F1", f1_weighted),
                 ("F1 of macro precision and recall", f1_of_means)],
    "bootstrap_interval": [("resamples without replacement", bootstrap_without_replacement),
                           ("spread of single examples", bootstrap_std_interval), ("unseeded", bootstrap_unseeded)],
    "select_and_test": [("chooses on the test set", select_on_test), ("tests twice", select_then_test_twice),
                        ("picks the highest loss", select_worst)],
    "extract_features": [("train mode", features_train_mode), ("[CLS] token, not mean pooling", features_cls_token),
                         ("mean over padding too", features_pool_with_padding), ("logits, not features", features_logits)],
    "l2sp_penalty": [("head included", l2sp_with_head), ("distance to zero", l2sp_to_zero),
                     ("no factor 1/2", l2sp_no_half), ("detached", l2sp_detached)],
}


# 09 llm_finetuning ---------------------------------------------------------------------------
# Each is a real mistake from the trl / peft / transformers issue trackers (see the checks).
def _sft():
    from ftlib.generative import sft

    return sft


def _prompt_tokens(tokenizer, prompt, messages=None):
    sft = _sft()
    text = tokenizer.apply_chat_template(messages or sft.chat_messages(prompt), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _answer_tokens(tokenizer, completion):
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def sft_loss_on_prompt(tokenizer, prompt, completion, max_length):
    ids = (_prompt_tokens(tokenizer, prompt) + _answer_tokens(tokenizer, completion))[-max_length:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def sft_no_end_of_turn(tokenizer, prompt, completion, max_length):
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"]
    context = _prompt_tokens(tokenizer, prompt)[-(max_length - len(answer)):]
    return {"input_ids": context + answer, "attention_mask": [1] * (len(context) + len(answer)),
            "labels": [-100] * len(context) + answer}


def sft_end_of_turn_masked(tokenizer, prompt, completion, max_length):
    example = _sft().build_sft_example(tokenizer, prompt, completion, max_length)
    example["labels"][-1] = -100
    return example


def sft_cuts_the_completion(tokenizer, prompt, completion, max_length):
    context, answer = _prompt_tokens(tokenizer, prompt), _answer_tokens(tokenizer, completion)
    ids = (context + answer)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": ([-100] * len(context) + answer)[:max_length]}


def sft_never_refuses(tokenizer, prompt, completion, max_length):
    # The reference without its ValueError: with no room, [-room:] keeps part of the prompt anyway.
    answer = _answer_tokens(tokenizer, completion)
    context = _prompt_tokens(tokenizer, prompt)[-(max_length - len(answer)):]
    return {"input_ids": context + answer, "attention_mask": [1] * (len(context) + len(answer)),
            "labels": [-100] * len(context) + answer}


def sft_default_system_prompt(tokenizer, prompt, completion, max_length):
    answer = _answer_tokens(tokenizer, completion)
    context = _prompt_tokens(tokenizer, prompt, [{"role": "user", "content": prompt}])[-(max_length - len(answer)):]
    return {"input_ids": context + answer, "attention_mask": [1] * (len(context) + len(answer)),
            "labels": [-100] * len(context) + answer}


def sft_no_template(tokenizer, prompt, completion, max_length):
    answer = _answer_tokens(tokenizer, completion)
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"][-(max_length - len(answer)):]
    return {"input_ids": context + answer, "attention_mask": [1] * (len(context) + len(answer)),
            "labels": [-100] * len(context) + answer}


def _pad(rows, value, left=False):
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r))
                         for r in rows])


def collate_left_padding(examples, pad_token_id):
    return {"input_ids": _pad([e["input_ids"] for e in examples], pad_token_id, left=True),
            "attention_mask": _pad([e["attention_mask"] for e in examples], 0, left=True),
            "labels": _pad([e["labels"] for e in examples], -100, left=True)}


def collate_masks_pad_token_id(examples, pad_token_id):
    input_ids = _pad([e["input_ids"] for e in examples], pad_token_id)
    labels = input_ids.masked_fill(_pad([e["labels"] for e in examples], -100) == -100, -100)
    labels[input_ids == pad_token_id] = -100  # also masks every real end-of-turn token
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad_token_id).long(), "labels": labels}


def collate_pads_labels_with_pad_id(examples, pad_token_id):
    return {"input_ids": _pad([e["input_ids"] for e in examples], pad_token_id),
            "attention_mask": _pad([e["attention_mask"] for e in examples], 0),
            "labels": _pad([e["labels"] for e in examples], pad_token_id)}


def collate_attends_to_padding(examples, pad_token_id):
    batch = _sft().collate_sft(examples, pad_token_id)
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    return batch


def loss_not_shifted(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def loss_shifted_twice(logits, labels):
    labels = labels[:, 1:]  # "shift the labels" ...
    return F.cross_entropy(logits[:, :-2].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)  # ... again


def loss_counts_ignored_positions(logits, labels):
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                                reduction="none")
    return per_token.mean()  # divides by every position, padding and prompt included


def loss_per_sequence_mean(logits, labels):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    counts = (labels[:, 1:] != -100).sum(1).clamp(min=1)
    return (per_token.sum(1) / counts).mean()


def _scores(model, tokenizer, prompt, choices, *, with_eot=False, reduce="sum"):
    sft = _sft()
    out = []
    for choice in choices:
        ex = sft.build_sft_example(tokenizer, prompt, choice, 10**9)
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor(ex["labels"][1:])
        if not with_eot:
            labels[-1] = -100
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        picked = log_probs[torch.arange(len(labels)), labels.clamp(min=0)][labels != -100]
        out.append(picked.sum() if reduce == "sum" else picked.mean())
    return torch.stack(out)


def score_in_train_mode(model, tokenizer, prompt, choices):
    with torch.no_grad():
        return _scores(model, tokenizer, prompt, choices)


def score_with_grad(model, tokenizer, prompt, choices):
    was = model.training
    model.eval()
    scores = _scores(model, tokenizer, prompt, choices).detach()
    model.train(was)
    return scores


def score_leaves_eval_mode(model, tokenizer, prompt, choices):
    model.eval()
    with torch.no_grad():
        return _scores(model, tokenizer, prompt, choices)


def score_includes_end_of_turn(model, tokenizer, prompt, choices):
    was = model.training
    model.eval()
    with torch.no_grad():
        scores = _scores(model, tokenizer, prompt, choices, with_eot=True)
    model.train(was)
    return scores


def score_mean_not_sum(model, tokenizer, prompt, choices):
    was = model.training
    model.eval()
    with torch.no_grad():
        scores = _scores(model, tokenizer, prompt, choices, reduce="mean")
    model.train(was)
    return scores


def _generate(model, tokenizer, prompt, max_new_tokens, *, stop=True, strip_prompt=True, skip_special=True):
    ids = torch.tensor([_prompt_tokens(tokenizer, prompt)])
    was = model.training
    model.eval()
    with torch.no_grad():
        options = {"eos_token_id": tokenizer.eos_token_id} if stop else {"eos_token_id": None}
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, **options)
    model.train(was)
    tokens = out[0, ids.shape[1]:] if strip_prompt else out[0]
    return tokenizer.decode(tokens, skip_special_tokens=skip_special)


def generate_never_stops(model, tokenizer, prompt, max_new_tokens):
    return _generate(model, tokenizer, prompt, max_new_tokens, stop=False, skip_special=True)


def generate_returns_the_prompt(model, tokenizer, prompt, max_new_tokens):
    return _generate(model, tokenizer, prompt, max_new_tokens, strip_prompt=False)


def generate_keeps_special_tokens(model, tokenizer, prompt, max_new_tokens):
    return _generate(model, tokenizer, prompt, max_new_tokens, skip_special=False)


def generate_without_template(model, tokenizer, prompt, max_new_tokens):
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


WRONG_LLM = {
    "build_sft_example": [("loss on the prompt", sft_loss_on_prompt), ("no end-of-turn token", sft_no_end_of_turn),
                          ("end of turn masked out", sft_end_of_turn_masked),
                          ("truncation cuts the completion", sft_cuts_the_completion),
                          ("no ValueError when the prompt cannot fit", sft_never_refuses),
                          ("the template's default system prompt", sft_default_system_prompt),
                          ("no chat template", sft_no_template)],
    "collate_sft": [("left padding during training", collate_left_padding),
                    ("masks by pad token id (and so the end of turn)", collate_masks_pad_token_id),
                    ("labels padded with the pad id", collate_pads_labels_with_pad_id),
                    ("attention on padding", collate_attends_to_padding)],
    "causal_lm_loss": [("labels not shifted", loss_not_shifted), ("labels shifted twice", loss_shifted_twice),
                       ("padding and prompt counted in the mean", loss_counts_ignored_positions),
                       ("mean of per-sequence means", loss_per_sequence_mean)],
    "score_choices": [("scores in train mode", score_in_train_mode), ("records gradients", score_with_grad),
                      ("leaves the model in eval mode", score_leaves_eval_mode),
                      ("scores the end of turn too", score_includes_end_of_turn),
                      ("mean instead of sum", score_mean_not_sum)],
    "greedy_generate": [("never stops at the end of turn", generate_never_stops),
                        ("returns the prompt too", generate_returns_the_prompt),
                        ("keeps special tokens", generate_keeps_special_tokens),
                        ("no chat template", generate_without_template)],
}

WRONG.update(WRONG_LLM)


# 10 generative_tasks -------------------------------------------------------------------------
# Each is a mistake the trl / transformers issue trackers and LLMs-from-scratch readers report.
def _turns(tokenizer, messages):
    """``(role, header, content, end)`` token lists of each turn, as the chat template renders them
    (the first turn's header holds the template's default system turn when there is none)."""
    out, done = [], ""
    for i, m in enumerate(messages):
        text = tokenizer.apply_chat_template(list(messages[:i + 1]), tokenize=False)
        ids = tokenizer(text[len(done):], add_special_tokens=False)["input_ids"]
        content = tokenizer(m["content"], add_special_tokens=False)["input_ids"]
        header = len(ids) - len(content) - 2  # then the content, <|im_end|> and a newline
        out.append((m["role"], ids[:header], content, ids[header + len(content):]))
        done = text
    return out


def _chat(tokenizer, messages, max_length, *, learn=("assistant",), header=False, end_of_turn=True,
          only_last=False, keep_system=True, cut=None):
    """A conversation as an example, labelled per the options; too long: drop the oldest exchanges
    (``cut="left"``/``"right"``: cut tokens instead)."""
    messages = list(messages)
    system = messages[:1] if keep_system and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while True:
        ids, labels = [], []
        turns = _turns(tokenizer, system + rest)
        last = max(i for i, t in enumerate(turns) if t[0] == "assistant")
        for i, (role, head, content, end) in enumerate(turns):
            learned = role in learn and (not only_last or i == last)
            end = end[:1] if i == len(turns) - 1 else end  # no newline after the last end of turn
            ids += head + content + end
            labels += (head if learned and header else [-100] * len(head)) + (content if learned else [-100] * len(content))
            labels += (end[:1] if learned and end_of_turn else [-100]) + [-100] * (len(end) - 1)
        if len(ids) <= max_length or cut is not None or len(rest) <= 2:
            break
        rest = rest[1:] if not system and rest[0]["role"] == "system" else rest[2:]
    if cut == "left":
        ids, labels = ids[-max_length:], labels[-max_length:]
    elif cut == "right":
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def chat_labels_user_turns(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, learn=("user", "assistant"))


def chat_labels_system_turn(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, learn=("system", "assistant"))


def chat_end_of_turn_unlabelled(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, end_of_turn=False)


def chat_labels_assistant_header(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, header=True)


def chat_only_last_reply(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, only_last=True)


def chat_cuts_from_the_left(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, cut="left")


def chat_cuts_from_the_right(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, cut="right")


def chat_drops_the_system_turn(tokenizer, messages, max_length):
    return _chat(tokenizer, messages, max_length, keep_system=False)


def chat_keeps_the_last_newline(tokenizer, messages, max_length):
    from ftlib.generative.chat import build_chat_example

    example = build_chat_example(tokenizer, messages, max_length - 1)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    example["input_ids"] += newline  # what apply_chat_template(messages) ends with
    example["labels"] += [-100] * len(newline)
    example["attention_mask"] += [1] * len(newline)
    return example


def chat_drops_exchanges_in_place(tokenizer, messages, max_length):
    from ftlib.generative.chat import build_chat_example

    example = build_chat_example(tokenizer, messages, 10**6)
    while len(example["input_ids"]) > max_length and len(messages) > 3:
        del messages[1:3]  # the oldest exchange after the system turn: from the caller's list too
        example = build_chat_example(tokenizer, messages, 10**6)
    if len(example["input_ids"]) > max_length:
        raise ValueError("the last exchange does not fit")
    return example


def _nucleus_sample(logits, temperature, top_p, generator, *, temperature_last=False, strict=False,
                    use_generator=True, greedy=True, keepdim=False):
    if greedy and temperature == 0:
        return logits.argmax(dim=-1, keepdim=keepdim)
    scaled = logits if temperature_last else logits / temperature
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        keep = cumulative < top_p if strict else cumulative - sorted_probs < top_p
        if not strict:
            keep[:, 0] = True
        kept = torch.zeros_like(keep).scatter(-1, order, keep)
        scaled = scaled.masked_fill(~kept, float("-inf"))
    if temperature_last:
        scaled = scaled / temperature  # the nucleus was cut on the untempered distribution
    probs = torch.softmax(scaled, dim=-1)
    draw = torch.multinomial(probs, 1, generator=generator) if use_generator else torch.multinomial(probs, 1)
    return draw if keepdim else draw.squeeze(-1)


def sample_temperature_after_top_p(logits, temperature, top_p, generator):
    return _nucleus_sample(logits, temperature, top_p, generator, temperature_last=True)


def sample_top_p_can_keep_nothing(logits, temperature, top_p, generator):
    return _nucleus_sample(logits, temperature, top_p, generator, strict=True)


def sample_ignores_the_generator(logits, temperature, top_p, generator):
    return _nucleus_sample(logits, temperature, top_p, generator, use_generator=False)


def sample_divides_by_zero_temperature(logits, temperature, top_p, generator):
    return _nucleus_sample(logits, temperature, top_p, generator, greedy=False)


def sample_returns_a_column(logits, temperature, top_p, generator):
    return _nucleus_sample(logits, temperature, top_p, generator, keepdim=True)


def sample_divides_logits_in_place(logits, temperature, top_p, generator):
    if temperature > 0:
        logits /= temperature
    return _nucleus_sample(logits, 1.0 if temperature > 0 else 0.0, top_p, generator)


@torch.no_grad()
def _decode(model, input_ids, max_new_tokens, eos_token_id, *, cache=True, steps=None, keep_eos=True,
            stop=True, with_prompt=False):
    ids = input_ids.reshape(1, -1)
    new = []
    out = model(input_ids=ids, use_cache=cache)
    for _ in range(max_new_tokens if steps is None else steps(max_new_tokens)):
        token = int(out.logits[0, -1].argmax())
        if token == eos_token_id and stop and not keep_eos:
            break
        new.append(token)
        if token == eos_token_id and stop:
            break
        if cache:
            out = model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
        else:
            out = model(input_ids=torch.cat([ids, torch.tensor([new])], dim=1))
    return ids[0].tolist() + new if with_prompt else new


def generate_without_cache(model, input_ids, max_new_tokens, eos_token_id):
    return _decode(model, input_ids, max_new_tokens, eos_token_id, cache=False)


def generate_one_token_short(model, input_ids, max_new_tokens, eos_token_id):
    return _decode(model, input_ids, max_new_tokens, eos_token_id, steps=lambda n: n - 1)


def generate_leaves_out_eos(model, input_ids, max_new_tokens, eos_token_id):
    return _decode(model, input_ids, max_new_tokens, eos_token_id, keep_eos=False)


def generate_past_eos(model, input_ids, max_new_tokens, eos_token_id):
    return _decode(model, input_ids, max_new_tokens, eos_token_id, stop=False)


def generate_returns_prompt_and_new(model, input_ids, max_new_tokens, eos_token_id):
    return _decode(model, input_ids, max_new_tokens, eos_token_id, with_prompt=True)


@torch.no_grad()
def generate_forgets_the_cache(model, input_ids, max_new_tokens, eos_token_id):
    new, out = [], model(input_ids=input_ids.reshape(1, -1))
    while len(new) < max_new_tokens:
        new.append(int(out.logits[0, -1].argmax()))
        if new[-1] == eos_token_id:
            break
        out = model(input_ids=torch.tensor([[new[-1]]]))  # one token, and no cache: no context
    return new


def generate_with_gradients(model, input_ids, max_new_tokens, eos_token_id):
    return _decode.__wrapped__(model, input_ids, max_new_tokens, eos_token_id)


def _lcs(a, b):
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_f1(p, r, *, recall_only=False, precision_only=False):
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    if recall_only:
        return recall
    if precision_only:
        return precision
    return 2 * precision * recall / (precision + recall)


def _rouge_words(text):
    import re

    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_on_characters(prediction, reference):
    return _rouge_f1(list(prediction.lower()), list(reference.lower()))


def rouge_recall_only(prediction, reference):
    return _rouge_f1(_rouge_words(prediction), _rouge_words(reference), recall_only=True)


def rouge_both_over_the_prediction(prediction, reference):
    p, r = _rouge_words(prediction), _rouge_words(reference)
    lcs = _lcs(p, r)
    precision = recall = lcs / len(p) if p else 0.0  # "recall" divided by the wrong length
    return 2 * precision * recall / (precision + recall) if lcs else 0.0


def rouge_not_lower_cased(prediction, reference):
    import re

    return _rouge_f1(re.sub(r"[^A-Za-z0-9]+", " ", prediction).split(), re.sub(r"[^A-Za-z0-9]+", " ", reference).split())


def rouge_bag_of_words(prediction, reference):
    from collections import Counter

    p, r = Counter(_rouge_words(prediction)), Counter(_rouge_words(reference))
    shared = sum((p & r).values())
    if not shared:
        return 0.0
    precision, recall = shared / sum(p.values()), shared / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def rouge_split_on_spaces(prediction, reference):
    return _rouge_f1(prediction.lower().split(), reference.lower().split())


WRONG_GENERATIVE = {
    "build_chat_example": [("labels on the user's turns", chat_labels_user_turns),
                           ("labels on the system turn", chat_labels_system_turn),
                           ("end of turn unlabelled", chat_end_of_turn_unlabelled),
                           ("labels on the assistant header", chat_labels_assistant_header),
                           ("only the last reply labelled", chat_only_last_reply),
                           ("too long: tokens cut from the left", chat_cuts_from_the_left),
                           ("too long: tokens cut from the right", chat_cuts_from_the_right),
                           ("too long: the system turn dropped too", chat_drops_the_system_turn),
                           ("the template's last newline kept", chat_keeps_the_last_newline),
                           ("drops exchanges from the caller's list", chat_drops_exchanges_in_place)],
    "sample_next_token": [("temperature after top-p", sample_temperature_after_top_p),
                          ("top-p can keep no token", sample_top_p_can_keep_nothing),
                          ("ignores the generator", sample_ignores_the_generator),
                          ("temperature 0 divides by zero", sample_divides_by_zero_temperature),
                          ("shape (B, 1)", sample_returns_a_column),
                          ("divides the logits in place", sample_divides_logits_in_place)],
    "generate_with_cache": [("no cache: the whole sequence every step", generate_without_cache),
                            ("one token short", generate_one_token_short),
                            ("eos left out", generate_leaves_out_eos),
                            ("does not stop at eos", generate_past_eos),
                            ("returns the prompt too", generate_returns_prompt_and_new),
                            ("feeds one token without the cache", generate_forgets_the_cache),
                            ("records gradients", generate_with_gradients)],
    "rouge_l": [("characters, not words", rouge_on_characters), ("recall only", rouge_recall_only),
                ("precision and recall both over the prediction", rouge_both_over_the_prediction),
                ("not lower-cased", rouge_not_lower_cased), ("common words, not the LCS (ROUGE-1)", rouge_bag_of_words),
                ("split on spaces: punctuation sticks to words", rouge_split_on_spaces)],
}

WRONG.update(WRONG_GENERATIVE)


# 11 preference_tuning ------------------------------------------------------------------------
# Each is a mistake reported on the trl issue tracker or in DPO-from-scratch write-ups.
def _logprobs(logits, labels, *, shift=1, mask=True, reduce="sum", scores="log_softmax", shift_mask=True):
    """The summed log-probabilities of the labelled next tokens, with one mistake by option."""
    if shift:
        logits, shifted = logits[:, :-shift], labels[:, shift:]
    else:
        shifted = labels
    keep = (shifted if shift_mask else labels[:, :shifted.shape[1]]) != -100
    if not mask:
        keep = torch.ones_like(keep)
    table = torch.log_softmax(logits, dim=-1) if scores == "log_softmax" else logits
    picked = table.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return picked.sum(-1) / keep.sum(-1) if reduce == "mean" else picked.sum(-1)


def logprobs_include_prompt_and_padding(logits, labels):
    return _logprobs(logits, labels, mask=False)


def logprobs_mean_not_sum(logits, labels):
    return _logprobs(logits, labels, reduce="mean")


def logprobs_not_shifted(logits, labels):
    return _logprobs(logits, labels, shift=0)


def logprobs_shifted_twice(logits, labels):
    return _logprobs(logits[:, :-1], labels[:, 1:])  # the caller's labels were already aligned


def logprobs_mask_not_shifted(logits, labels):
    return _logprobs(logits, labels, shift_mask=False)


def logprobs_cross_entropy(logits, labels):
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return loss.sum(-1)  # the negative log-likelihood, not the log-probability


def logprobs_raw_logits(logits, labels):
    return _logprobs(logits, labels, scores="raw")


def logprobs_summed_over_the_batch(logits, labels):
    return _logprobs(logits, labels).sum()


def logprobs_labels_in_place(logits, labels):
    mask = labels != -100
    labels[~mask] = 0  # gather needs valid ids: changes the caller's batch
    picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (picked * mask[:, 1:]).sum(-1)


@torch.no_grad()
def logprobs_without_gradients(logits, labels):
    return _logprobs(logits, labels)


def _dpo(pc, pr, rc, rr, beta, *, sign=1, loss_beta=1.0, detach=True, reference=True, reduce="mean",
         reward_beta=True, loss_from_rewards=False, mean_rewards=False):
    chosen = (pc - rc) if reference else pc
    rejected = (pr - rr) if reference else pr
    r_chosen, r_rejected = beta * chosen, beta * rejected
    if loss_from_rewards:
        r_chosen, r_rejected = r_chosen.detach(), r_rejected.detach()
    losses = -F.logsigmoid(sign * loss_beta * (r_chosen - r_rejected))
    loss = losses.mean() if reduce == "mean" else losses.sum()
    out_chosen, out_rejected = (r_chosen, r_rejected) if reward_beta else (chosen, rejected)
    if detach:
        out_chosen, out_rejected = out_chosen.detach(), out_rejected.detach()
    if mean_rewards:
        out_chosen, out_rejected = out_chosen.mean(), out_rejected.mean()
    return loss, out_chosen, out_rejected


def dpo_margin_flipped(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, sign=-1)


def dpo_beta_twice(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, loss_beta=beta)


def dpo_rewards_not_detached(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, detach=False)


def dpo_without_the_reference(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, reference=False)


def dpo_sum_over_pairs(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, reduce="sum")


def dpo_rewards_without_beta(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, reward_beta=False)


def dpo_loss_from_detached_rewards(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, loss_from_rewards=True)


def dpo_mean_rewards(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    return _dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, mean_rewards=True)


def _forward_logprobs(model, batch):
    from ftlib.generative.preference import completion_logprobs

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return completion_logprobs(logits, batch["labels"])


def reference_adapter_on(model, batch):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = _forward_logprobs(model.get_base_model(), batch)  # the adapter's layers are still in it
    model.train(was_training)
    return out


def reference_with_gradients(model, batch):
    was_training = model.training
    model.eval()
    with model.disable_adapter():
        out = _forward_logprobs(model, batch).detach()  # the graph was built all the same
    model.train(was_training)
    return out


def reference_adapter_left_disabled(model, batch):
    was_training = model.training
    model.eval()
    model.disable_adapter_layers()
    with torch.no_grad():
        out = _forward_logprobs(model, batch)
    model.train(was_training)
    return out


def reference_in_train_mode(model, batch):
    with torch.no_grad(), model.disable_adapter():
        return _forward_logprobs(model, batch)


def reference_leaves_eval_mode(model, batch):
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        return _forward_logprobs(model, batch)


def reference_always_back_to_train(model, batch):
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        out = _forward_logprobs(model, batch)
    model.train()
    return out


def reference_unloads_the_adapter(model, batch):
    was_training = model.training
    base = model.unload()  # removes the LoRA layers for good
    base.eval()
    with torch.no_grad():
        out = _forward_logprobs(base, batch)
    model.train(was_training)
    return out


def accuracy_ties_count_as_right(chosen_rewards, rejected_rewards):
    return (chosen_rewards >= rejected_rewards).float().mean().item()


def accuracy_as_a_tensor(chosen_rewards, rejected_rewards):
    return (chosen_rewards > rejected_rewards).float().mean()


def accuracy_a_count(chosen_rewards, rejected_rewards):
    return float((chosen_rewards > rejected_rewards).sum())


def accuracy_reversed(chosen_rewards, rejected_rewards):
    return (chosen_rewards < rejected_rewards).float().mean().item()


def accuracy_of_the_means(chosen_rewards, rejected_rewards):
    return float(chosen_rewards.mean() > rejected_rewards.mean())


WRONG_PREFERENCE = {
    "completion_logprobs": [("the prompt and padding counted", logprobs_include_prompt_and_padding),
                            ("mean instead of sum", logprobs_mean_not_sum),
                            ("the shift missing", logprobs_not_shifted),
                            ("shifted twice", logprobs_shifted_twice),
                            ("the mask not shifted with the labels", logprobs_mask_not_shifted),
                            ("the cross-entropy: negative", logprobs_cross_entropy),
                            ("raw logits, no log_softmax", logprobs_raw_logits),
                            ("summed over the batch too", logprobs_summed_over_the_batch),
                            ("labels modified in place", logprobs_labels_in_place),
                            ("no gradients", logprobs_without_gradients)],
    "dpo_loss": [("the margin's sign flipped", dpo_margin_flipped), ("beta applied twice", dpo_beta_twice),
                 ("rewards not detached", dpo_rewards_not_detached),
                 ("no reference", dpo_without_the_reference), ("sum over pairs", dpo_sum_over_pairs),
                 ("rewards without beta", dpo_rewards_without_beta),
                 ("loss from the detached rewards", dpo_loss_from_detached_rewards),
                 ("mean rewards, not one per pair", dpo_mean_rewards)],
    "reference_logprobs": [("the adapter on (get_base_model)", reference_adapter_on),
                           ("computed with gradients", reference_with_gradients),
                           ("the adapter left disabled", reference_adapter_left_disabled),
                           ("in train mode", reference_in_train_mode),
                           ("leaves the model in eval mode", reference_leaves_eval_mode),
                           ("always back to train mode", reference_always_back_to_train),
                           ("unloads the adapter", reference_unloads_the_adapter)],
    "preference_accuracy": [("ties count as right", accuracy_ties_count_as_right),
                            ("a tensor, not a float", accuracy_as_a_tensor), ("a count, not a share", accuracy_a_count),
                            ("reversed", accuracy_reversed), ("compares the mean rewards", accuracy_of_the_means)],
}

WRONG.update(WRONG_PREFERENCE)
