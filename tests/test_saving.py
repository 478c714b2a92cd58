"""A fine-tuned model is kept in its ecosystem's format, reloads exactly, and predicts."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ftlib.models import load_model, load_tokenizer
from ftlib.saving import load_finetuned, save_finetuned

TEXTS = ["a wonderful, moving film", "dull and far too long", "I would watch it again", "no plot at all"]


def _fresh_process_probabilities(folder, inputs):
    code = ("import json, sys\nfrom ftlib.saving import load_finetuned\n"
            f"print(json.dumps(load_finetuned({str(folder)!r}).probabilities(json.loads(sys.argv[1])).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(inputs)], capture_output=True, text=True,
                         timeout=300, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}).stdout
    return np.array(json.loads(out.splitlines()[-1]))


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = load_model("tiny-bert", num_classes=2)
    folder = save_finetuned(model, tmp_path_factory.mktemp("text") / "model", model_name="tiny-bert",
                            class_names=["rotten", "fresh"], tokenizer=load_tokenizer("tiny-bert"))
    model.eval()
    with torch.no_grad():
        batch = load_tokenizer("tiny-bert")(TEXTS, padding="longest", truncation=True, max_length=64,
                                            return_tensors="pt")
        want = torch.softmax(model(**batch).logits, -1).numpy()
    return folder, want


@pytest.mark.slow
def test_text_model_reloads_in_a_fresh_process_with_identical_predictions(text_folder):
    folder, want = text_folder
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    np.testing.assert_allclose(_fresh_process_probabilities(folder, TEXTS), want, rtol=0, atol=1e-6)
    results = load_finetuned(folder).predict(TEXTS, top_k=2)
    assert [r["label"] for r in results] == [["rotten", "fresh"][i] for i in want.argmax(1)]
    assert all(len(r["top_k"]) == 2 and abs(sum(p for _, p in r["top_k"]) - 1) < 1e-5 for r in results)
    with pytest.raises(TypeError, match="text model"):
        load_finetuned(folder).predict([np.zeros((8, 8, 3), dtype=np.uint8)])


@pytest.mark.slow
def test_saved_text_model_loads_in_transformers_pipeline_without_ftlib(text_folder):
    folder, want = text_folder
    code = ("import json, sys\nfrom transformers import pipeline\n"
            f"clf = pipeline('text-classification', model={str(folder)!r}, top_k=None)\n"
            "out = clf(json.loads(sys.argv[1]))\n"
            "assert 'ftlib' not in sys.modules\n"
            "print(json.dumps([{d['label']: d['score'] for d in row} for row in out]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], capture_output=True, text=True,
                         timeout=300, check=True, cwd="/", env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    rows = json.loads(out.stdout.splitlines()[-1])
    got = np.array([[row["rotten"], row["fresh"]] for row in rows])  # id2label names, not LABEL_0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_image_model_reloads_and_predicts_image_files(tmp_path):
    torch.manual_seed(0)
    model = load_model("tiny-cnn", num_classes=3)
    folder = save_finetuned(model, tmp_path / "model", model_name="tiny-cnn", class_names=["a", "b", "c"],
                            image_size=32)
    manifest = json.loads((folder / "ftlib.json").read_text())
    assert manifest["task"] == "image" and manifest["image_size"] == 32 and manifest["class_names"] == ["a", "b", "c"]
    rng = np.random.default_rng(0)
    files = []
    for i, mode in enumerate(["RGB", "L"]):
        shape = (50, 40, 3) if mode == "RGB" else (28, 28)
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(files[-1])
    here = load_finetuned(folder).probabilities(files)
    assert here.shape == (2, 3)
    np.testing.assert_allclose(_fresh_process_probabilities(folder, files), here, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not an image"):
        load_finetuned(folder).predict([str(tmp_path / "model" / "ftlib.json")])


def test_predict_feeds_the_model_on_its_own_device(text_folder, tmp_path, moved_to):
    # `ftlib finetune` predicts with the model fit left on a GPU: CPU batches must follow it.
    folder, _ = text_folder
    kept = load_finetuned(folder)
    assert kept.probabilities(TEXTS, batch_size=2).shape == (4, 2)
    assert moved_to == [torch.device("cpu")] * 2
    image = load_finetuned(save_finetuned(load_model("tiny-cnn", num_classes=3), tmp_path / "image",
                                          model_name="tiny-cnn", class_names=["a", "b", "c"], image_size=32))
    moved_to.clear()
    assert image.probabilities([np.zeros((32, 32, 3), dtype=np.uint8)]).shape == (1, 3)
    assert moved_to == [torch.device("cpu")]


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no saved model"):
        load_finetuned(tmp_path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ftlib.cli", "predict", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_ftlib_predict_on_texts_a_file_and_as_json(text_folder, tmp_path):
    folder, want = text_folder
    labels = [["rotten", "fresh"][i] for i in want.argmax(1)]
    r = _cli(folder, TEXTS[0], TEXTS[1], "--top-k", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines] == labels[:2] and TEXTS[0] in lines[0] and "(" in lines[0]
    table = tmp_path / "new.csv"
    table.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    r = _cli(folder, "--file", table, "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["input"] for row in rows] == TEXTS and [row["label"] for row in rows] == labels
    np.testing.assert_allclose([row["probability"] for row in rows], want.max(1), atol=1e-6)


@pytest.mark.slow
def test_ftlib_predict_refuses_the_wrong_modality(text_folder, tmp_path):
    folder, _ = text_folder
    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    r = _cli(folder, image)
    assert r.returncode == 2 and "This is a text model" in r.stderr and r.stderr.count("\n") == 1
    torch.manual_seed(0)
    image_folder = save_finetuned(load_model("tiny-cnn", num_classes=2), tmp_path / "img", model_name="tiny-cnn",
                                  class_names=["a", "b"], image_size=32)
    r = _cli(image_folder, "a sentence, not an image")
    assert r.returncode == 2 and "This is an image model" in r.stderr
    r = _cli(image_folder, tmp_path, "--json")  # a folder of images
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["input"] == str(image)
    r = _cli(tmp_path / "nothing-here", "text")
    assert r.returncode == 2 and "holds no saved model" in r.stderr


def test_a_lora_model_on_a_random_base_is_saved_merged_and_reloads_exactly(tmp_path):
    from ftlib.techniques import lora

    torch.manual_seed(0)
    model = load_model("tiny-bert", num_classes=2)  # no pretrained weights: an adapter alone would not do
    tokenizer = load_tokenizer("tiny-bert")
    batches = [{**tokenizer(TEXTS, padding="longest", return_tensors="pt"), "labels": torch.tensor([1, 0, 1, 0])}]
    peft_model = lora(model, batches, epochs=1, progress=False)["model"]
    folder = save_finetuned(peft_model, tmp_path / "model", model_name="tiny-bert", class_names=["a", "b"],
                            tokenizer=load_tokenizer("tiny-bert"))
    assert (folder / "adapter").is_dir() and (folder / "model.safetensors").is_file()
    peft_model.eval()
    with torch.no_grad():
        batch = load_tokenizer("tiny-bert")(TEXTS, padding="longest", return_tensors="pt")
        want = torch.softmax(peft_model(**batch).logits, -1).numpy()
    np.testing.assert_allclose(load_finetuned(folder).probabilities(TEXTS), want, atol=1e-5)
