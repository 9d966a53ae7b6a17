"""``trainer.precision=auto``: choose the faster precision by measuring it, as cudnn's benchmark mode does.

Whether bf16 autocast pays off depends on the model size as much as on the hardware: on an
AVX512-BF16 CPU it makes a ViT-B step 2.5x faster but a vit_mini step slower (bf16's backward is
relatively slow and small GEMMs gain little; issue 18). No rule of hardware flags alone gets both
right, so at start-up :func:`choose_precision` times a few forward/backward steps of the actual model
on an actual training batch in each candidate precision, interleaved, and keeps the fastest. A
reduced precision must win by ``min_gain`` (default 5 %) or fp32 is kept: within the noise of a few
steps the exact arithmetic is worth more than a gain nobody can show.

Answers are cached per machine, model shape, batch shape and candidate list in
``~/.cache/mae_zoo/precision.json`` (``$MAE_ZOO_PRECISION_CACHE`` names another file), so a second
run of the same job measures nothing; an answer measured while other processes crowded the CPU is
used but not cached (under a load of 20 on 2 cores a probe step took 60x its quiet time). The
choice and its reason are logged and written to ``<run>/precision.json``; a resumed run keeps the
precision its folder records.

Without a measurement (``precision_probe.enabled=false``, several processes, whose ranks must agree
without talking, or :func:`mae_zoo.train.build` called without ``measure_precision``) ``auto`` falls
back to the hardware rule: bf16-mixed on bf16 GPUs and AVX512-BF16/AMX CPUs, else fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

log = logging.getLogger(__name__)

CACHE_ENV = "MAE_ZOO_PRECISION_CACHE"
CACHE_VERSION = 1  # bump when what a probe measures changes: older answers are then ignored
FP32 = "32-true"
RECORD_NAME = "precision.json"

# The clock the probe reads; tests replace it to force an answer.
clock: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class ProbeSettings:
    """``precision_probe`` in conf/train.yaml."""

    enabled: bool = True
    warmup: int = 2  # untimed steps per candidate (first-call allocations, oneDNN kernel selection)
    steps: int = 5  # timed steps per candidate, interleaved with the other candidates'
    min_gain: float = 0.05  # a reduced precision must be this much faster than fp32 to be chosen
    cache: bool = True  # read and write the per-machine cache

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> ProbeSettings:
        values = dict(node or {})
        return cls(**{k: values[k] for k in asdict(cls()) if k in values})


@dataclass
class Choice:
    """What ``auto`` resolved to, how (``measured``, ``cached``, ``rule``, ``only``, ``resumed``), and why."""

    precision: str
    how: str
    reason: str
    candidates: list[str] = field(default_factory=list)
    step_s: dict[str, float] = field(default_factory=dict)  # median probe step per candidate
    key: str | None = None

    def message(self) -> str:
        return f"precision=auto -> {self.precision} ({self.how}): {self.reason}"


# ------------------------------------------------------------------------------------- candidates
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def probe_device(accelerator: str) -> torch.device:
    """The device Lightning will train on for ``trainer.accelerator`` (one process)."""
    wants_gpu = str(accelerator) in ("auto", "gpu", "cuda")
    return (
        torch.device("cuda", torch.cuda.current_device())
        if wants_gpu and torch.cuda.is_available()
        else torch.device("cpu")
    )


def candidates(device: torch.device) -> list[str]:
    """Precisions worth timing on ``device``, reduced first.

    CUDA: bf16-mixed where the GPU has bf16, else 16-mixed (fp16 autocast with a loss scaler, what
    the official MAE code trains with); CPU: bf16-mixed only with native bf16 matmul (elsewhere it is
    emulated, many times slower); fp32 always."""
    if device.type == "cuda":
        return ["bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed", FP32]
    if device.type == "cpu" and cpu_has_fast_bf16():
        return ["bf16-mixed", FP32]
    return [FP32]


def rule_precision(accelerator: str) -> str:
    """The hardware rule, used when nothing is measured: bf16-mixed where the hardware has fast bf16."""
    device = probe_device(accelerator)
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else FP32
    return "bf16-mixed" if cpu_has_fast_bf16() else FP32


# ------------------------------------------------------------------------------------- cache key
def machine_signature(device: torch.device) -> dict[str, Any]:
    """What makes a timing hold on another run: the processor, threads, torch and the fp32 matmul mode."""
    sig: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        sig.update(
            gpu=torch.cuda.get_device_name(index),
            capability=list(torch.cuda.get_device_capability(index)),
            cuda=torch.version.cuda,
        )
    else:
        sig.update(cpu=_cpu_name(), cpu_count=os.cpu_count(), threads=torch.get_num_threads())
    return sig


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + (" bf16" if cpu_has_fast_bf16() else "")
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_signature(model: torch.nn.Module) -> dict[str, Any]:
    """The class and every parameter's and buffer's name, shape and dtype (digested)."""
    digest = hashlib.sha256()
    count = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{tensor.requires_grad};".encode())
        count += tensor.numel() if isinstance(tensor, torch.nn.Parameter) else 0
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "params": count,
        "shapes": digest.hexdigest()[:16],
    }


def batch_signature(batch: Any) -> Any:
    """Shapes and dtypes of every tensor in a (nested) batch; other leaves by type."""
    if isinstance(batch, torch.Tensor):
        return [list(batch.shape), str(batch.dtype).removeprefix("torch.")]
    if isinstance(batch, Mapping):
        return {str(k): batch_signature(v) for k, v in sorted(batch.items(), key=lambda kv: str(kv[0]))}
    if isinstance(batch, (list, tuple)):
        return [batch_signature(v) for v in batch]
    to_dict = getattr(batch, "to_dict", None)  # torch-geometric's Data / Batch
    if callable(to_dict):
        return {type(batch).__name__: batch_signature(to_dict())}
    return type(batch).__name__


def cache_key(machine: Mapping[str, Any], model: Mapping[str, Any], batch: Any, names: list[str]) -> str:
    text = json.dumps(
        {"v": CACHE_VERSION, "machine": machine, "model": model, "batch": batch, "candidates": names}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mae_zoo" / "precision.json"


def read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("precision cache %s is unreadable (%s); it will be rewritten", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add one answer; re-read first so that runs finishing together lose as little as possible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_cache(path)
        data[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # a read-only home must not stop a training run
        log.warning("could not write the precision cache %s: %s", path, err)


# ------------------------------------------------------------------------------------- the probe
def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast Lightning's precision plugin runs the forward under."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _untouched(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """The probe leaves no trace: global RNG, buffers (BatchNorm statistics), gradients and device
    are as before, so a run whose answer came from the cache trains exactly like one that measured."""
    home = next(iter(model.parameters())).device
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        model.zero_grad(set_to_none=True)
        model.to(home)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        if device.type == "cuda":
            torch.cuda.empty_cache()


def time_steps(
    model: torch.nn.Module, batch: Any, names: list[str], device: torch.device, settings: ProbeSettings
) -> dict[str, float]:
    """Median seconds of one forward + backward per candidate: ``warmup`` untimed steps each, then
    ``steps`` rounds with one timed step per candidate, the order rotated every round so that
    machine drift hits every candidate alike. A candidate that runs out of memory is left out."""
    step_s: dict[str, list[float]] = {name: [] for name in names}
    failed: set[str] = set()
    generator = torch.Generator().manual_seed(0)

    def step(name: str) -> float:
        _sync(device)
        start = clock()
        with autocast_for(name, device):
            loss = model(batch, generator=generator).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        return clock() - start

    with _untouched(model, device):
        model.to(device)
        batch = move_data_to_device(batch, device)
        for name in names:
            try:
                for _ in range(settings.warmup):
                    step(name)
            except torch.OutOfMemoryError:
                failed.add(name)
                log.warning("precision probe: %s ran out of memory; it is not a candidate", name)
        live = [n for n in names if n not in failed]
        for r in range(settings.steps):
            k = r % max(1, len(live))
            for name in live[k:] + live[:k]:
                step_s[name].append(step(name))
    return {name: statistics.median(v) for name, v in step_s.items() if v}


def pick(step_s: Mapping[str, float], min_gain: float) -> tuple[str, str]:
    """The fastest candidate, unless it is a reduced precision less than ``min_gain`` faster than fp32."""
    fastest = min(step_s, key=lambda n: step_s[n])
    times = ", ".join(f"{n} {1e3 * s:.1f} ms" for n, s in step_s.items())
    if fastest == FP32 or FP32 not in step_s:
        return fastest, f"median forward+backward step {times}"
    gain = 1 - step_s[fastest] / step_s[FP32]
    if gain < min_gain:
        return (
            FP32,
            f"median forward+backward step {times}; {fastest} is only {100 * gain:.1f}% faster "
            f"(< min_gain {100 * min_gain:.0f}%)",
        )
    return fastest, f"median forward+backward step {times}; {fastest} is {100 * gain:.1f}% faster"


def machine_busy(device: torch.device) -> str | None:
    """Why a CPU timing may not hold for a later run: other processes were competing for the cores
    (1-minute load average above 1.5x the core count; this run's own threads count for up to one)."""
    if device.type != "cpu":
        return None
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    cores = os.cpu_count() or 1
    return f"1-min load average {load:.1f} on {cores} cores" if load > 1.5 * cores else None


def first_batch(datamodule: Any) -> Any:
    """One training batch as the loader gives it (set up, augmented, collated), without leaving the
    probe's loader as the one checkpoints record."""
    datamodule.setup("fit")
    held = getattr(datamodule, "train_loader", None)
    loader = datamodule.train_dataloader()
    try:
        return next(iter(loader))
    finally:
        if hasattr(datamodule, "train_loader"):
            datamodule.train_loader = held


def choose_precision(model: torch.nn.Module, datamodule: Any, accelerator: str, settings: ProbeSettings) -> Choice:
    """Measure (or recall from the cache) the faster precision for this model and batch on this machine."""
    device = probe_device(accelerator)
    names = candidates(device)
    if len(names) == 1:
        return Choice(names[0], "only", f"the only candidate on {device.type} (no fast bf16 here)", names)
    if not settings.enabled:
        return Choice(rule_precision(accelerator), "rule", "precision_probe.enabled=false: hardware rule", names)
    # The data set-up happens here rather than in trainer.fit, in the same order relative to the
    # model's initialisation, so the global RNG stream is the same as without a probe.
    datamodule.setup("fit")
    with torch.random.fork_rng(devices=[]):  # augmentation in the main process draws from it
        batch = first_batch(datamodule)
    key = cache_key(machine_signature(device), model_signature(model), batch_signature(batch), names)
    path = cache_path()
    if settings.cache:
        hit = read_cache(path).get(key)
        if isinstance(hit, dict) and hit.get("precision") in names:
            return Choice(
                hit["precision"],
                "cached",
                f"{path} [{key}], measured {hit.get('measured_at', '?')}: {hit.get('reason', '')}",
                names,
                dict(hit.get("step_s", {})),
                key,
            )
    start = clock()
    step_s = time_steps(model, batch, names, device, settings)
    if not step_s:
        return Choice(FP32, "measured", "every candidate ran out of memory in the probe; fp32 kept", names, {}, key)
    precision, reason = pick(step_s, settings.min_gain)
    log.info("precision probe: %d steps per candidate in %.1f s", settings.warmup + settings.steps, clock() - start)
    busy = machine_busy(device)
    if busy:  # a coin flip on a crowded machine must not become every later run's answer
        log.warning("precision probe: the machine was busy (%s); the answer is used but not cached", busy)
        reason += f"; not cached: machine busy ({busy})"
    choice = Choice(precision, "measured", reason, names, step_s, key)
    if settings.cache and not busy:
        write_cache(
            path,
            key,
            {
                "precision": precision,
                "reason": reason,
                "step_s": step_s,
                "candidates": names,
                "model": model_signature(model),
                "batch": batch_signature(batch),
                "machine": machine_signature(device),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return choice


def recorded_choice(run_dir: Path) -> str | None:
    """The precision a run folder's earlier start resolved ``auto`` to, if it recorded one."""
    try:
        data = json.loads((run_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("precision") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def write_record(choice: Choice, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECORD_NAME).write_text(json.dumps(asdict(choice), indent=2, sort_keys=True) + "\n")


def resolve_auto(
    model: torch.nn.Module,
    datamodule: Any,
    accelerator: str,
    settings: ProbeSettings,
    *,
    measure: bool,
    single_process: bool,
    run_dir: Path | None = None,
) -> Choice:
    """``auto`` for one training run. ``measure``: allowed to time steps (``train`` is, a bare ``build``
    is not); ``single_process``: several ranks would each measure and might disagree, so they use the
    rule; ``run_dir``: a folder being resumed keeps the precision it recorded."""
    device = probe_device(accelerator)
    names = candidates(device)
    recorded = recorded_choice(run_dir) if run_dir is not None else None
    if run_dir is not None and recorded is not None:
        return Choice(recorded, "resumed", f"{run_dir / RECORD_NAME} records it for this run", names)
    if not measure:
        return Choice(rule_precision(accelerator), "rule", "not measured (build without measure_precision)", names)
    if str(accelerator) not in ("auto", "cpu", "gpu", "cuda"):
        return Choice(rule_precision(accelerator), "rule", f"no probe on {accelerator}", names)
    if not single_process:
        return Choice(
            rule_precision(accelerator),
            "rule",
            "several processes would each measure and might disagree: hardware rule (set trainer.precision to choose)",
            names,
        )
    return choose_precision(model, datamodule, accelerator, settings)
