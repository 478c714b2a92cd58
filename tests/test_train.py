import pytest
import torch
from torch import nn

from ftlib.models import load_model
from ftlib.train import EarlyStopping, History, evaluate, fit, logits_and_labels, train_one_epoch
from tiny_data import make_image_loader


def test_fit_learns_and_records_history(tiny_cnn):
    train, val = make_image_loader(n=96, seed=0), make_image_loader(n=48, seed=1)
    history = fit(tiny_cnn, train, val, epochs=4, lr=3e-3, progress=False)
    assert len(history) == 4
    assert set(History.KEYS) <= set(history[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.6  # three classes: chance is 0.33
    assert all(e["seconds"] > 0 for e in history.to_list())


def test_same_seed_same_history():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = load_model("tiny-cnn", num_classes=3)
        runs.append(fit(model, make_image_loader(), make_image_loader(seed=1), epochs=2, lr=1e-2, progress=False,
                        seed=7).to_list())
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


@pytest.mark.parametrize("style", ["bars", "lines"])
def test_progress_bars_do_not_change_results(tokenizer, capsys, monkeypatch, style):
    # A shuffled, length-grouped text loader, as `ftlib finetune` uses: showing bars must
    # not consume the loader's random generator (tqdm.auto's terminal bar did).
    import numpy as np

    monkeypatch.setenv("FTLIB_PROGRESS", style)

    from ftlib.data import TaskData, make_loader

    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(1, 30, size=96))]
    data = TaskData("t", "text", texts, np.arange(96) % 2, ["a", "b"])
    runs = []
    for progress in (False, True):
        torch.manual_seed(0)
        model = load_model("tiny-bert", num_classes=2)
        loader = make_loader(data, "tiny-bert", batch_size=16, shuffle=True, tokenizer=tokenizer)
        runs.append([{k: v for k, v in e.items() if k != "seconds"}
                     for e in fit(model, loader, epochs=2, lr=1e-3, progress=progress, seed=3).to_list()])
    assert runs[0] == runs[1]


def test_early_stopping_restores_best_weights(tiny_cnn):
    train, val = make_image_loader(n=96), make_image_loader(n=48, seed=1)
    # A huge learning rate diverges after a good first epoch or two.
    history = fit(tiny_cnn, train, val, epochs=8, lr=0.5, schedule="constant", clip_grad_norm=None,
                  callbacks=[EarlyStopping(patience=2, mode="max")], progress=False)
    best = history.best_epoch
    assert history.stopped_early or len(history) == 8
    final = evaluate(tiny_cnn, val)
    assert final["accuracy"] == pytest.approx(history[best]["val_accuracy"])


def test_early_stopping_mode_chooses_what_is_monitored(tiny_cnn):
    train, val = make_image_loader(n=96), make_image_loader(n=48, seed=1)
    history = fit(tiny_cnn, train, val, epochs=3, lr=3e-3, callbacks=[EarlyStopping(patience=5, mode="min")],
                  progress=False)
    losses = history["val_loss"]
    assert history.best_epoch == losses.index(min(losses))
    assert evaluate(tiny_cnn, val)["loss"] == pytest.approx(min(losses))  # its weights were put back


def test_the_last_epoch_is_never_copied(tiny_cnn, monkeypatch):
    copies = []
    real = tiny_cnn.state_dict
    monkeypatch.setattr(tiny_cnn, "state_dict", lambda *a, **k: copies.append(1) or real(*a, **k))
    fit(tiny_cnn, make_image_loader(), make_image_loader(seed=1), epochs=1, progress=False)
    assert copies == []  # one epoch: nothing could be restored over it, so no copy of the weights


def test_a_schedule_can_be_any_scheduler(tiny_cnn, image_loader):
    from ftlib.optim import make_scheduler

    seen = []

    def schedule(optimizer, total_steps):
        seen.append(total_steps)
        return make_scheduler(optimizer, "cosine", total_steps=total_steps, warmup_steps=0)

    history = fit(tiny_cnn, image_loader, None, epochs=2, lr=1e-3, schedule=schedule, progress=False)
    assert seen == [2 * len(image_loader)]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine down to 0, without warmup


def test_early_stopping_counts_patience():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert [stopper.step(v) for v in [1.0, 0.95, 0.8, 0.85, 0.79]] == [False, False, False, False, True]
    assert stopper.best_ == 0.8 and stopper.best_epoch_ == 2
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_train_one_epoch_zeroes_gradients_and_steps_scheduler(tiny_cnn, image_loader):
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    result = train_one_epoch(tiny_cnn, image_loader, optimizer, nn.CrossEntropyLoss(), scheduler)
    assert result["steps"] == len(image_loader)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** len(image_loader))
    assert 0 <= result["accuracy"] <= 1 and result["loss"] > 0


def test_evaluate_restores_mode_and_uses_no_grad(tiny_cnn, image_loader):
    tiny_cnn.train()
    result = evaluate(tiny_cnn, image_loader)
    assert tiny_cnn.training
    assert len(result["y_pred"]) == sum(len(b["labels"]) for b in image_loader)
    assert all(p.grad is None for p in tiny_cnn.parameters())


def test_callbacks_add_penalties_and_run_before_each_epoch(tiny_cnn, image_loader):
    calls = []

    class Penalty:
        def penalty(self, model):
            calls.append("penalty")
            return sum((p ** 2).sum() for p in model.parameters()) * 0.0

    class Hook:
        def on_epoch_start(self, model, epoch):
            calls.append(epoch)

    fit(tiny_cnn, image_loader, None, epochs=2, callbacks=[Penalty(), Hook()], progress=False)
    steps = ["penalty"] * len(image_loader)
    assert calls == [0, *steps, 1, *steps]
    with pytest.raises(TypeError, match=r"a callback needs an on_epoch_start\(model, epoch\) or a penalty"):
        fit(tiny_cnn, image_loader, None, epochs=1, callbacks=[lambda model: 0.0], progress=False)


def test_bad_inputs_get_clear_errors(tiny_cnn, image_loader):
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(tiny_cnn, image_loader, epochs=0, progress=False)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        fit(tiny_cnn, image_loader, lr=0, progress=False)
    with pytest.raises(ValueError, match=r"schedule must be one of \['linear', 'cosine', 'constant'\] or a callable"):
        fit(tiny_cnn, image_loader, schedule="onecycle", progress=False)
    with pytest.raises(TypeError, match="runtime must be an ftlib.devices.Runtime"):
        fit(tiny_cnn, image_loader, runtime="cpu", progress=False)
    used = EarlyStopping()
    used.step(1.0)
    with pytest.raises(ValueError, match="early stopper has been used already"):
        fit(tiny_cnn, image_loader, image_loader, callbacks=[used], progress=False)
    with pytest.raises(ValueError, match="callbacks hold 2 early stoppers"):
        fit(tiny_cnn, image_loader, image_loader, callbacks=[EarlyStopping(), EarlyStopping()], progress=False)
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="a learning-rate scheduler is not a callback"):
        fit(tiny_cnn, image_loader, image_loader, callbacks=[torch.optim.lr_scheduler.StepLR(optimizer, 1)],
            progress=False)
    with pytest.raises(TypeError, match="callbacks must be a list"):
        fit(tiny_cnn, image_loader, callbacks=EarlyStopping, progress=False)
    with pytest.raises(TypeError, match="dicts with a 'labels' entry"):
        logits_and_labels(tiny_cnn, (torch.randn(1, 3, 8, 8), torch.tensor([0])))


_FIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from ftlib.models import load_model
from ftlib.train import fit
from tiny_data import make_image_loader
torch.manual_seed(0)
fit(load_model("tiny-cnn", num_classes=3), make_image_loader(n=96), make_image_loader(n=48, seed=1),
    epochs=2, lr=1e-2, progress=True)
"""


def _run_fit(stderr, env_extra=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "FTLIB_PROGRESS"}
    env.update(env_extra or {})
    script = _FIT_SCRIPT.format(tests=str(Path(__file__).parent))
    return subprocess.run([sys.executable, "-c", script], stdout=stderr, stderr=stderr, env=env,
                          timeout=300, check=True)


@pytest.mark.slow
def test_progress_off_a_terminal_is_one_line_per_phase(tmp_path):
    # `ftlib finetune > log 2>&1`, CI, nohup: no carriage-return fragments, one line per
    # phase with its time, then the epoch's summary.
    log = tmp_path / "log"
    with open(log, "wb") as stderr:
        _run_fit(stderr)
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "epoch 1/2", "validate", "epoch 1/2", "epoch 2/2", "validate", "epoch 2/2", "epochs"], text
    assert lines[0].startswith("epoch 1/2: 12 batches in ") and lines[0].endswith("s")
    assert lines[1].startswith("validate: 6 batches in ")
    assert "train loss" in lines[2] and "val loss" in lines[2]
    assert lines[-1].startswith("epochs: 2 epochs in ")


@pytest.mark.slow
def test_progress_in_a_terminal_keeps_the_bars():
    import fcntl
    import os
    import struct
    import termios
    import threading

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    chunks = []

    def read():  # drain the terminal while the run writes, so a full buffer cannot block it
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _run_fit(follower)
    finally:
        os.close(follower)
        reader.join(timeout=30)
        os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "batch/s" in text  # tqdm redrawing its bar
    assert "train loss" in text
