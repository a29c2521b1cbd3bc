"""The code paths that differ on CUDA, run on the CPU with CUDA emulated (tests/emulated_cuda.py): tensors that report
device cuda:0 and hold real values, so the results are checked against the CPU path, not only the devices.
What cannot be emulated (CUDA's own kernels, streams and events, its generator's state format, NCCL, torch.compile
for CUDA) is listed in emulated_cuda.py; the code around each of them runs here."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from emulated_cuda import CudaTensor, emulated_cuda

import bench
import classifier
import pictures
import predict
import train
from simsiam import dataset, devices, evaluate, recipe, runs
from simsiam.model import SimSiam, load_checkpoint

CUDA = torch.device("cuda", 0)
SMALL = ["--image-size", "32", "--labels", "6", "--test-fraction", "0.2", "--workers", "2"]


@pytest.fixture
def gpu():
    with emulated_cuda() as emulation:
        yield emulation


def host_images(n: int = 24, side: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def train_args(data: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out),
            "--epochs", "1", "--batch-size", "16", *SMALL, *extra]


def exit_status(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# ---------------------------------------------------------------- the emulation itself


def test_emulation_shows_what_a_gpu_would(gpu):
    """The emulation is faithful where the bugs hide: a tensor on the GPU reports a concrete cuda:0 (not equal to
    torch.device("cuda")), cannot be pinned, cannot meet a CPU tensor in an op, and refuses a CPU generator."""
    x = torch.ones(4).to(CUDA)
    assert isinstance(x, CudaTensor) and x.device == CUDA and x.device != torch.device("cuda")
    assert (x * 2).sum().item() == 8 and (x + 1).cpu().device.type == "cpu"
    with pytest.raises(RuntimeError, match="pinned"):
        x.pin_memory()
    with pytest.raises(RuntimeError, match="same device"):
        x + torch.ones(4)
    with pytest.raises(RuntimeError, match="generator"):
        torch.rand(4, generator=torch.Generator(), device=CUDA)
    assert x[torch.tensor([0, 2])].device == CUDA  # CPU indices into a GPU tensor are allowed, as on CUDA


# ---------------------------------------------------------------- one device model


def test_runtime_devices_are_concrete(monkeypatch):
    """auto and cuda resolve to cuda:0 (the current device), cuda:1 to itself; a GPU the machine lacks is refused
    in one line; auto precision is bf16 on CUDA; a tensor placed on the runtime's device is_on it."""
    with emulated_cuda(device_count=2):
        for name, expected in [("auto", CUDA), ("cuda", CUDA), ("cuda:1", torch.device("cuda", 1))]:
            runtime = devices.make_runtime(name)
            assert runtime.device == expected and runtime.precision == "bf16"
            assert devices.is_on(torch.zeros(2).to(runtime.device), runtime.device)
        assert devices.make_runtime("cuda", "fp32").precision == "fp32"
        with pytest.raises(devices.DeviceError, match="cuda:0 to cuda:1"):
            devices.make_runtime("cuda:2")
    assert devices.make_runtime("auto").device == torch.device("cpu")  # this machine, without the emulation


def test_cuda_and_unknown_devices_are_refused_without_a_gpu(class_tree, tmp_path, capsys):
    """Without a GPU, --device cuda and a name torch does not know each end in one line and exit 2."""
    for name, message in [("cuda", "sees no CUDA GPU"), ("tpu7", "not a device name")]:
        assert exit_status(train.main, train_args(class_tree, tmp_path, "run", "--device", name)) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1


# ---------------------------------------------------------------- batches


def test_gpu_resident_cache_is_gathered_on_the_gpu(gpu):
    """A cache placed on the GPU yields its batches there, without pinning anything, equal to the host's batches.
    (Before the one device model, the runtime's torch.device("cuda") differed from the cache's cuda:0, this path
    took the host branch and pinned a CUDA tensor: every GPU run stopped at its first batch.)"""
    runtime = devices.make_runtime("cuda")
    host = host_images()
    images = dataset.cache_on_device(host, runtime.device)
    assert devices.is_on(images, runtime.device)
    indices = torch.arange(len(host))
    batches = list(dataset.device_batches(images, indices, 8, devices.generator(images.device, 3), runtime.device))
    expected = list(dataset.device_batches(host, indices, 8, torch.Generator().manual_seed(3), torch.device("cpu")))
    assert len(batches) == 3 and all(batch.device == CUDA for batch in batches)
    assert all(torch.equal(batch.cpu(), want) for batch, want in zip(batches, expected))
    assert gpu.pins == 0


def test_host_cache_is_prefetched_through_pinned_memory(gpu):
    """A cache left in host memory (too large for the GPU) reaches the GPU as pinned batches, one pin per batch,
    copied asynchronously from pinned memory only; the values are the host's."""
    host = host_images()
    indices = torch.arange(len(host))
    batches = list(dataset.device_batches(host, indices, 8, torch.Generator().manual_seed(3), CUDA))
    expected = list(dataset.device_batches(host, indices, 8, torch.Generator().manual_seed(3), torch.device("cpu")))
    assert all(batch.device == CUDA for batch in batches)
    assert all(torch.equal(batch.cpu(), want) for batch, want in zip(batches, expected))
    assert gpu.pins == 3 and gpu.pageable_async_copies == 0


def test_a_prefetch_left_early_ends_its_thread(gpu):
    """A consumer that stops after the first batch (an early stop, bench's last epoch) leaves no thread behind,
    blocked on a full queue and holding pinned batches: the background thread ends once the batches are closed."""
    host = host_images(40)
    before = set(threading.enumerate())
    batches = dataset.device_batches(host, torch.arange(len(host)), 4, torch.Generator().manual_seed(3), CUDA,
                                     prefetch=1)
    next(batches)
    time.sleep(0.2)  # the thread has pinned the next batch and waits for room in the queue
    [producer] = set(threading.enumerate()) - before
    assert producer.is_alive()
    batches.close()
    producer.join(timeout=5)
    assert not producer.is_alive()


def test_cache_stays_on_the_host_when_the_gpu_is_full(gpu, monkeypatch):
    """cache_on_device leaves the cache in host memory when it does not fit beside the training reserve."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
    host = host_images()
    assert dataset.cache_on_device(host, CUDA) is host
    assert devices.is_on(dataset.cache_on_device(host, CUDA, reserve_bytes=0), CUDA)


def test_gather_pins_only_host_to_gpu_copies(gpu):
    """gather: host cache to GPU through pinned memory; a GPU cache is indexed where it is."""
    host = host_images()
    rows = torch.tensor([3, 1, 4])
    assert torch.equal(dataset.gather(host, rows, CUDA).cpu(), host[rows]) and gpu.pins == 1
    on_gpu = host.to(CUDA)
    assert torch.equal(dataset.gather(on_gpu, rows.to(CUDA), CUDA).cpu(), host[rows]) and gpu.pins == 1


# ---------------------------------------------------------------- the SimSiam step


def test_views_draw_from_a_generator_on_the_gpu(gpu):
    """The two views of a GPU batch come out on the GPU, drawn from a generator there, and equal the CPU's views
    from the same seed (the augmentation is the same code on both)."""
    batch = host_images()
    x1, x2 = recipe.views(batch.to(CUDA), 16, devices.generator(CUDA, 5))
    c1, c2 = recipe.views(batch, 16, torch.Generator().manual_seed(5))
    assert x1.device == CUDA
    assert torch.equal(x1.cpu(), c1) and torch.equal(x2.cpu(), c2)


def first_conv_calls(model: torch.nn.Module) -> list[tuple[torch.dtype, bool]]:
    """At every call of the model's first convolution: the dtype it computes in, and whether its input was
    channels_last."""
    seen = []
    model.backbone.conv1.register_forward_hook(lambda module, inputs, output: seen.append(
        (output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last))))
    return seen


def test_sgd_step_on_the_gpu_uses_bf16_channels_last_and_fused_sgd(gpu):
    """On CUDA the step runs under bf16 autocast on channels_last weights with the fused SGD kernel; the loss is
    finite and on the device, every parameter moves, and the weights keep their layout."""
    torch.manual_seed(0)
    runtime = devices.make_runtime("cuda")
    model = SimSiam().to(runtime.device, memory_format=runtime.memory_format)
    optimizer = recipe.make_optimizer(model, 0.05, 0.9, 5e-4)
    assert optimizer.defaults["fused"] is True
    calls = first_conv_calls(model)
    before = [p.detach().cpu().clone() for p in model.parameters()]
    x1, x2 = recipe.views(host_images(8).to(runtime.device), 32, devices.generator(runtime.device, 0))
    loss, std = recipe.sgd_step(model, optimizer, x1, x2, runtime)
    assert loss.device == CUDA and torch.isfinite(loss).item() and 0 < std.item() < 1
    assert calls == [(torch.bfloat16, True)] * 2
    assert all(not torch.equal(p.detach().cpu(), b) for p, b in zip(model.parameters(), before) if p.dim() > 1)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_cpu_step_in_bf16_is_channels_last_and_in_fp32_is_not():
    """On a CPU, bf16 runs as on a GPU: autocast and channels_last weights and views (oneDNN's bf16 convolutions
    want NHWC), a finite step computed in bf16; fp32 keeps the default layout, where NHWC does not pay."""
    for precision, channels_last in (("bf16", True), ("fp32", False)):
        torch.manual_seed(0)
        runtime = devices.Runtime(torch.device("cpu"), precision)
        assert (runtime.memory_format == torch.channels_last) == channels_last
        model = SimSiam().to(memory_format=runtime.memory_format)
        optimizer = recipe.make_optimizer(model, 0.05, 0.9, 5e-4)
        calls = first_conv_calls(model)
        x1, x2 = recipe.views(host_images(8), 32, torch.Generator().manual_seed(0))
        loss, _ = recipe.sgd_step(model, optimizer, x1, x2, runtime)
        computed_in = torch.bfloat16 if precision == "bf16" else torch.float32
        assert torch.isfinite(loss) and calls == [(computed_in, channels_last)] * 2
        assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_progress_readout_shows_a_landed_value(gpu):
    """On CUDA the readout never waits: each step's loss is copied asynchronously, and the bar shows the latest
    copy that has landed (the previous step's here, where every copy lands at once); on a CPU, the value itself."""
    readout = devices.Readout(CUDA)
    assert torch.isnan(torch.tensor(readout.update(torch.tensor(0.5).to(CUDA), 0)))
    assert readout.update(torch.tensor(0.25).to(CUDA), 1) == 0.5 and readout.step == 0
    assert readout.update(torch.tensor(0.125).to(CUDA), 2) == 0.25 and readout.step == 1
    on_cpu = devices.Readout(torch.device("cpu"))
    assert on_cpu.update(torch.tensor(0.5), 0) == 0.5 and on_cpu.step == 0


# ---------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_knn_embedding_and_closed_form_probe_on_the_gpu(gpu):
    """evaluate.embed, knn_accuracy and logistic_probe on a GPU cache give the CPU's results (fp32)."""
    torch.manual_seed(0)
    backbone = SimSiam().backbone
    images, labels = host_images(40), torch.arange(40) % 2
    train_rows, test_rows = torch.arange(0, 24), torch.arange(24, 40)
    on_cpu = devices.Runtime(torch.device("cpu"), "fp32")
    cpu_bank, cpu_queries = (evaluate.embed(backbone, images, rows, 32, on_cpu) for rows in (train_rows, test_rows))
    runtime = devices.Runtime(CUDA, "fp32")
    backbone = backbone.to(CUDA, memory_format=runtime.memory_format)
    gpu_images = images.to(CUDA)
    bank, queries = (evaluate.embed(backbone, gpu_images, rows, 32, runtime) for rows in (train_rows, test_rows))
    assert bank.device == CUDA and torch.allclose(bank.cpu(), cpu_bank, atol=1e-4)
    knn = evaluate.knn_accuracy(bank, labels[train_rows], queries, labels[test_rows], 2, k=5)
    assert knn.device == CUDA
    assert knn.item() == evaluate.knn_accuracy(cpu_bank, labels[train_rows], cpu_queries, labels[test_rows], 2,
                                               k=5).item()
    probe = evaluate.logistic_probe(bank, labels[train_rows], queries, labels[test_rows], 2, folds=3,
                                    penalties=(1e-2, 1.0))
    cpu_probe = evaluate.logistic_probe(cpu_bank, labels[train_rows], cpu_queries, labels[test_rows], 2, folds=3,
                                        penalties=(1e-2, 1.0))
    assert probe["test_accuracy"] == cpu_probe["test_accuracy"] and probe["penalty"] == cpu_probe["penalty"]


# ---------------------------------------------------------------- the scripts, end to end


@pytest.fixture
def pretrained_on_gpu(class_tree, tmp_path, monkeypatch):
    """train.py --device cuda, one epoch: the run folder."""
    with emulated_cuda() as emulation:
        train.main(train_args(class_tree, tmp_path, "simsiam", "--device", "cuda"))
    assert emulation.pins == 0  # the cache fitted on the GPU
    return tmp_path / "simsiam"


@pytest.mark.slow
def test_train_on_the_gpu_end_to_end(pretrained_on_gpu):
    """train.py on CUDA: bf16, the cache on the GPU, a finite epoch, and checkpoints that load on a CPU with
    weights_only=True."""
    record = json.loads((pretrained_on_gpu / "args.json").read_text())
    assert record["device"] == "cuda:0" and record["precision_used"] == "bf16" and record["cache_on"] == "cuda"
    epoch = runs.read_jsonl(pretrained_on_gpu / "metrics.jsonl")[-1]
    assert epoch["epoch"] == 1 and all(abs(epoch[key]) < 10 for key in ("loss", "z_std", "knn_accuracy"))
    state = load_checkpoint(pretrained_on_gpu / "siam.pt", "simsiam")
    assert all(value.device.type == "cpu" for value in state["model"].values())


def test_train_on_a_host_cache_prefetches_pinned_batches(class_tree, tmp_path, gpu, monkeypatch):
    """train.py with a cache that does not fit on the GPU trains from pinned, prefetched host batches."""
    monkeypatch.setattr(devices, "fits", lambda nbytes, device, reserve_bytes: False)
    train.main(train_args(class_tree, tmp_path, "run", "--device", "cuda"))
    record = json.loads((tmp_path / "run" / "args.json").read_text())
    steps = record["steps_per_epoch"]
    assert record["cache_on"] == "cpu" and gpu.pins >= steps and gpu.pageable_async_copies == 0


@pytest.mark.slow
def test_classifier_frozen_and_finetuned_on_the_gpu(pretrained_on_gpu, class_tree, tmp_path, gpu, capsys):
    """classifier.py on CUDA, frozen (with the closed-form probe) and fine-tuned, from a GPU-pretrained backbone."""
    for mode in ([], ["--finetune"]):
        out = tmp_path / f"classifier{len(mode)}"
        classifier.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                         "--checkpoint", str(pretrained_on_gpu / "siam.pt"), "--epochs", "2", "--batch-size", "6",
                         *SMALL, "--device", "cuda", *mode])
        final = runs.final_record(out / "metrics.jsonl")
        assert 0 <= final["test_accuracy"] <= 1
        assert ("closed_form_accuracy" in final) == (not mode)
    assert "test accuracy:" in capsys.readouterr().out


@pytest.mark.slow
def test_pictures_and_predict_on_the_gpu(pretrained_on_gpu, class_tree, tmp_path, gpu, capsys):
    """pictures.py and predict.py on CUDA: the pictures are written, every photo is classified."""
    pictures.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "pics"),
                   "--checkpoint", str(pretrained_on_gpu / "siam.pt"), "--labels", "6", "--test-fraction", "0.2",
                   "--workers", "2", "--device", "cuda"])
    assert all((tmp_path / "pics" / name).is_file() for name in ("views.png", "neighbours.png", "features.png"))
    classifier.main(["--data", str(class_tree), "--cache-dir", str(tmp_path / "cache"), "--out",
                     str(tmp_path / "classifier"), "--random", "--epochs", "1", "--batch-size", "6", *SMALL,
                     "--device", "cuda"])
    capsys.readouterr()
    predict.main([str(class_tree / "Cat"), "--checkpoint", str(tmp_path / "classifier" / "classifier.pt"),
                  "--device", "cuda"])
    assert "20 classified" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("host_cache", [False, True])
def test_bench_on_the_gpu(class_tree, tmp_path, gpu, host_cache):
    """bench.py on CUDA, the cache on the GPU or forced to the host (its pinned prefetch path measured)."""
    out = tmp_path / "bench.json"
    bench.main(["--data", str(class_tree), "--device", "cuda", "--image-size", "32", "--batch-size", "8",
                "--steps", "2", "--warmup", "1", "--baseline-workers", "1", "--json", str(out), "--labels", "6",
                "--test-fraction", "0.2", "--workers", "2", *(["--host-cache"] if host_cache else [])])
    result = json.loads(out.read_text())
    assert result["precision"] == "bf16" and result["pipeline_images_per_s"] > 0
    assert result["cache_on"] == ("host, pinned batches prefetched" if host_cache else "device")
    assert gpu.pageable_async_copies == 0  # the baseline's DataLoader pins its batches too


# ---------------------------------------------------------------- resuming on another device


@pytest.mark.slow
def test_epoch_end_checkpoint_from_a_cpu_resumes_on_the_gpu(class_tree, tmp_path, monkeypatch):
    """A last.pt written on a CPU at an epoch's end continues on CUDA; the momentum buffers take the layout of the
    channels_last parameters."""
    train.main(train_args(class_tree, tmp_path, "run", "--epochs", "2", "--device", "cpu", "--save-every", "1"))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    torch.save({**state, "epoch": 1}, tmp_path / "run" / "last.pt")
    seen = []
    real = recipe.match_layout

    def observed(optimizer):
        real(optimizer)
        seen.extend(all(optimizer.state[p]["momentum_buffer"].stride() == p.stride() for p in group["params"])
                    for group in optimizer.param_groups)

    monkeypatch.setattr(recipe, "match_layout", observed)
    with emulated_cuda():
        train.main(train_args(class_tree, tmp_path, "run", "--epochs", "2", "--device", "cuda", "--resume"))
    assert seen == [True, True]
    assert [record["epoch"] for record in runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_mid_epoch_checkpoint_from_a_cpu_is_refused_on_the_gpu(class_tree, tmp_path, monkeypatch, capsys):
    """A run interrupted mid-epoch on a CPU holds a CPU augmentation stream: resuming it on CUDA is refused in one
    line naming the device to resume on."""
    train.main(train_args(class_tree, tmp_path, "run", "--epochs", "2", "--device", "cpu"))
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    progress = train.EpochProgress.start(1, 0, devices.make_runtime("cpu"))
    progress.step = 1
    torch.save({**state, "epoch": 1, "progress": [progress.state()]}, last)
    capsys.readouterr()
    with emulated_cuda():
        status = exit_status(train.main, train_args(class_tree, tmp_path, "run", "--epochs", "2", "--device", "cuda",
                                                    "--resume"))
    error = capsys.readouterr().err
    assert status == 2 and "interrupted mid-epoch on cpu" in error and "--device cpu" in error
    assert len(error.strip().splitlines()) == 1


def test_deterministic_mode(class_tree, tmp_path):
    """--deterministic turns on deterministic algorithms (cuDNN without autotuning) and is recorded in args.json."""
    try:
        train.main(train_args(class_tree, tmp_path, "run", "--device", "cpu", "--deterministic"))
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert json.loads((tmp_path / "run" / "args.json").read_text())["deterministic"] is True
