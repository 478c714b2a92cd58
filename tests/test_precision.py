"""Mixed precision: what "auto" picks on each kind of hardware (faked), and that fit runs it."""
import pytest
import torch
from ftlib import devices, train
from ftlib.devices import Runtime
from ftlib.models import TinyCNN
from tiny_data import make_image_loader


def _cpu(monkeypatch, *, flags: bool, capability: str = "AVX512"):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda cpuinfo="/proc/cpuinfo": flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


@pytest.mark.parametrize("flags, capability, expected", [
    (True, "AVX512", "bf16"),   # AVX-512 BF16 or AMX: bf16 matrix products in hardware
    (False, "AVX512", "fp32"),  # AVX-512 without BF16: bf16 emulated
    (False, "AVX2", "fp32"),    # AVX2 only: bf16 is slower than fp32
    (True, "AVX2", "fp32"),     # PyTorch told not to use AVX-512 (ATEN_CPU_CAPABILITY)
])
def test_auto_on_a_cpu_follows_its_flags(monkeypatch, flags, capability, expected):
    _cpu(monkeypatch, flags=flags, capability=capability)
    assert devices.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_from_ampere_on_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 and not including_emulation)
    assert devices.resolve_precision("auto", "cuda:0") == expected


def test_forced_precisions_and_bad_names(monkeypatch):
    assert devices.resolve_precision("auto", "mps") == "fp32"
    for name in ("fp32", "bf16", "fp16"):
        assert devices.resolve_precision(name, "cpu") == name
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\]; got 'half'"):
        devices.resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\]; got 'half'"):
        Runtime(precision="half")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    for name, flags in {"zen4": "fpu avx2 avx512f avx512_bf16", "sapphire": "avx512f amx_bf16 amx_tile",
                        "avx2": "fpu sse avx2 fma"}.items():
        (tmp_path / name).write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert devices.cpu_has_native_bf16(str(tmp_path / "zen4"))
    assert devices.cpu_has_native_bf16(str(tmp_path / "sapphire"))
    assert not devices.cpu_has_native_bf16(str(tmp_path / "avx2"))
    assert not devices.cpu_has_native_bf16(str(tmp_path / "missing"))  # macOS, or no /proc


class _Recorder(TinyCNN):
    """TinyCNN that notes the autocast dtype its forward pass runs under."""

    def __init__(self):
        super().__init__(num_classes=3)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return super().forward(x)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_fit_runs_forward_passes_at_the_precision_and_records_it(precision, dtype):
    torch.manual_seed(0)
    model = _Recorder()
    # The CPU's autocast, also where a GPU is present (its autocast casts other operations).
    history = train.fit(model, make_image_loader(n=48), make_image_loader(n=24, seed=1), epochs=2, lr=3e-3,
                        progress=False, runtime=Runtime("cpu", precision), clip_grad_norm=1.0)
    assert history.precision == precision
    assert set(model.seen) == {dtype} and len(model.seen) == 2 * (6 + 3)  # training and validation
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_fp16_scales_the_loss_and_unscales_before_clipping(monkeypatch):
    scaled, unscaled = [], []
    real_scale, real_unscale = torch.amp.GradScaler.scale, torch.amp.GradScaler.unscale_
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, x: scaled.append(1) or real_scale(self, x))
    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", lambda self, o: unscaled.append(1) or real_unscale(self, o))
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        clipped.append(len(unscaled))  # unscaled before each clip
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    train.fit(TinyCNN(num_classes=3), make_image_loader(n=24), epochs=1, progress=False,
              runtime=Runtime(precision="fp16"))
    assert len(scaled) == 3 and clipped == [1, 2, 3]


def test_auto_is_what_the_hardware_gives(monkeypatch):
    _cpu(monkeypatch, flags=False, capability="AVX2")
    assert train.fit(TinyCNN(num_classes=3), make_image_loader(n=16), epochs=1, progress=False,
                     runtime=Runtime("cpu", "auto")).precision == "fp32"
    _cpu(monkeypatch, flags=True)
    assert train.fit(TinyCNN(num_classes=3), make_image_loader(n=16), epochs=1, progress=False,
                     runtime=Runtime("cpu", "auto")).precision == "bf16"


def test_the_command_line_knows_every_precision_without_importing_torch():
    from ftlib.cli import PRECISION_NAMES

    assert PRECISION_NAMES == devices.PRECISIONS


def test_precision_reaches_fit_from_finetune_and_compare_configs(monkeypatch):
    from ftlib import techniques
    from ftlib.compare import CompareConfig
    from ftlib.pipeline import FinetuneConfig

    assert FinetuneConfig().resolved().precision == "auto"  # the text job: bf16 where the CPU runs it natively
    assert FinetuneConfig(task="image").resolved().precision == "fp32"  # where the image defaults were measured
    assert FinetuneConfig(precision="bf16").resolved().precision == "bf16"
    assert CompareConfig(precision="fp16").resolved().precision == "fp16"
    # The Python API names the argument; the CLI names the flag (tests/test_cli.py).
    with pytest.raises(ValueError, match="^precision must be one of"):
        FinetuneConfig(precision="half").resolved()
    got = []
    monkeypatch.setattr(train, "fit", lambda *a, **k: got.append(k["runtime"]) or train.History())
    cfg = FinetuneConfig(task="image", model="tiny-cnn", dataset="fashion-mnist", precision="bf16").resolved()
    techniques.TECHNIQUES["full"].run(TinyCNN(num_classes=3), make_image_loader(), None, cfg)
    assert got == [Runtime(precision="bf16")]
