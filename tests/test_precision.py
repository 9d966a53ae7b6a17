"""``trainer.precision=auto`` chooses by measurement (mae_zoo/utils/precision.py); no test here times anything:
the clock is replaced wherever a choice depends on it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.train import build
from mae_zoo.utils import precision as P
from mae_zoo.utils.checks import check_values
from mae_zoo.utils.instantiate import instantiate_checked
from tests.conftest import compose_cfg

TINY = [
    "model=vit_micro",
    "debug=smoke",
    "print_config=false",
    "logger=none",
    "callbacks=none",
    "data.batch_size=4",
    "data.num_train=16",
    "data.num_val=8",
    "data.num_workers=0",
    "precision_probe.enabled=true",  # debug=smoke turns it off
    "precision_probe.warmup=1",
    "precision_probe.steps=2",
]
BOTH = ["bf16-mixed", "32-true"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache file; none touches ~/.cache. The CI machine's load must not
    decide whether answers are cached: it counts as quiet unless a test says otherwise."""
    path = tmp_path / "cache" / "precision.json"
    monkeypatch.setenv(P.CACHE_ENV, str(path))
    monkeypatch.setattr(P, "machine_busy", lambda device: None)
    return path


@pytest.fixture
def both_candidates(monkeypatch):
    """This CPU's flags must not decide what the tests see: pretend it has fast bf16."""
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)


class Spy:
    """Stands in for the timed steps: records what it was given, answers the given medians."""

    def __init__(self, answer: dict[str, float]) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, Any, list[str]]] = []

    def __call__(self, model, batch, names, device, settings):
        self.calls.append((model, batch, list(names)))
        return {n: self.answer[n] for n in names}


def _build(tmp_path: Path, *overrides: str, run: str = "run"):
    cfg = compose_cfg([*TINY, *overrides], tmp_path / run)
    return build(cfg, measure_precision=True)


def test_the_probe_times_the_real_model_on_a_real_batch_picks_the_faster_and_caches_it(
    tmp_path, monkeypatch, both_candidates, private_cache, caplog
):
    spy = Spy({"bf16-mixed": 0.010, "32-true": 0.020})
    monkeypatch.setattr(P, "time_steps", spy)
    with caplog.at_level(logging.INFO, logger="mae_zoo"):
        module, _, trainer = _build(tmp_path)
    assert len(spy.calls) == 1
    model, batch, names = spy.calls[0]
    assert model is module and names == BOTH
    assert tuple(batch[0].shape) == (4, 3, 32, 32)  # the configured batch as the training loader gives it
    assert str(trainer.precision) == "bf16-mixed"
    assert "precision=auto -> bf16-mixed (measured)" in caplog.text and "bf16-mixed 10.0 ms" in caplog.text
    record = json.loads((tmp_path / "run" / P.RECORD_NAME).read_text())
    assert record["precision"] == "bf16-mixed" and record["how"] == "measured"
    cache = json.loads(private_cache.read_text())
    (entry,) = cache.values()
    assert entry["precision"] == "bf16-mixed" and entry["candidates"] == BOTH
    assert entry["batch"][0] == [[4, 3, 32, 32], "float32"] and entry["machine"]["device"] == "cpu"

    # A second run of the same job: the cached answer, nothing timed (a slower fake would change it).
    monkeypatch.setattr(P, "time_steps", Spy({"bf16-mixed": 0.030, "32-true": 0.020}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mae_zoo"):
        _, _, trainer = _build(tmp_path, run="run2")
    assert P.time_steps.calls == [] and str(trainer.precision) == "bf16-mixed"
    assert "(cached)" in caplog.text

    # Another model shape is another key: measured again, and this fake says fp32.
    _, _, trainer = _build(tmp_path, "model.encoder.depth=1", run="run3")
    assert len(P.time_steps.calls) == 1 and str(trainer.precision) == "32-true"
    assert len(json.loads(private_cache.read_text())) == 2

    # Measured on a crowded machine: used, logged, not cached (the next run measures again).
    monkeypatch.setattr(P, "machine_busy", lambda device: "1-min load average 20.0 on 2 cores")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mae_zoo"):
        _, _, trainer = _build(tmp_path, "model.encoder.depth=2", run="run4")
    assert len(P.time_steps.calls) == 2 and str(trainer.precision) == "32-true"
    assert "not cached: machine busy" in caplog.text
    assert len(json.loads(private_cache.read_text())) == 2


def test_explicit_precision_and_smoke_runs_bypass_the_probe(tmp_path, monkeypatch, both_candidates):
    spy = Spy({"bf16-mixed": 0.01, "32-true": 0.02})
    monkeypatch.setattr(P, "time_steps", spy)
    _, _, trainer = _build(tmp_path, "trainer.precision=32-true")
    assert spy.calls == [] and str(trainer.precision) == "32-true"
    assert not (tmp_path / "run" / P.RECORD_NAME).exists()
    # debug=smoke keeps precision_probe.enabled=false: auto follows the hardware rule, unmeasured
    cfg = compose_cfg([*TINY[:-3], "precision_probe.warmup=1"], tmp_path / "smoke")
    assert cfg.precision_probe.enabled is False
    _, _, trainer = build(cfg, measure_precision=True)
    assert spy.calls == [] and str(trainer.precision) == "bf16-mixed"
    assert json.loads((tmp_path / "smoke" / P.RECORD_NAME).read_text())["how"] == "rule"


def test_several_processes_use_the_rule_and_a_resumed_run_keeps_its_precision(tmp_path, monkeypatch, both_candidates):
    monkeypatch.setattr(P, "time_steps", Spy({"bf16-mixed": 0.03, "32-true": 0.02}))
    model = torch.nn.Linear(2, 2)
    settings = P.ProbeSettings()
    many = P.resolve_auto(model, None, "cpu", settings, measure=True, single_process=False)
    assert (many.precision, many.how) == ("bf16-mixed", "rule")  # ranks cannot measure and agree
    run = tmp_path / "resumed"
    P.write_record(P.Choice("32-true", "measured", "x"), run)
    kept = P.resolve_auto(model, None, "cpu", settings, measure=True, single_process=True, run_dir=run)
    assert (kept.precision, kept.how) == ("32-true", "resumed")
    assert P.time_steps.calls == []


def test_candidate_lists(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    assert P.candidates(torch.device("cpu")) == ["32-true"]  # emulated bf16 is never worth timing
    only = P.choose_precision(torch.nn.Linear(2, 2), None, "cpu", P.ProbeSettings())
    assert (only.precision, only.how) == ("32-true", "only")
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    assert P.candidates(torch.device("cpu")) == BOTH
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.candidates(torch.device("cuda", 0)) == ["16-mixed", "32-true"]  # V100/T4: fp16 autocast
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.candidates(torch.device("cuda", 0)) == BOTH
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.probe_device("gpu").type == "cpu" and P.probe_device("cpu").type == "cpu"


def test_the_cache_key_holds_machine_model_batch_and_candidates():
    cpu = P.machine_signature(torch.device("cpu"))
    assert {"cpu", "threads", "torch", "matmul_precision"} <= set(cpu)
    small, wide = P.model_signature(torch.nn.Linear(4, 4)), P.model_signature(torch.nn.Linear(4, 8))
    assert small != wide and small["params"] == 20
    batch = P.batch_signature((torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)))
    key = P.cache_key(cpu, small, batch, BOTH)
    assert key == P.cache_key(dict(cpu), dict(small), batch, list(BOTH))
    other_machine = {**cpu, "cpu": "another CPU"}
    other_batch = P.batch_signature((torch.zeros(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)))
    variants = [
        P.cache_key(other_machine, small, batch, BOTH),
        P.cache_key({**cpu, "threads": 99}, small, batch, BOTH),
        P.cache_key(cpu, wide, batch, BOTH),
        P.cache_key(cpu, small, other_batch, BOTH),
        P.cache_key(cpu, small, batch, ["16-mixed", "32-true"]),
    ]
    assert len({key, *variants}) == 6


class FakeClock:
    """Each step's end reads ``cost[precision]`` seconds after its start; the precision is the one the
    probe's autocast was last entered for."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.cost, self.now, self.calls, self.current = cost, 0.0, 0, ""
        self.steps: dict[str, int] = {}

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # a step's end
            self.now += self.cost[self.current]
            self.steps[self.current] = self.steps.get(self.current, 0) + 1
        return self.now


@pytest.mark.parametrize(
    "step_s,expected",
    [
        ({"bf16-mixed": 1.0, "32-true": 2.0}, "bf16-mixed"),
        ({"bf16-mixed": 2.0, "32-true": 1.0}, "32-true"),
        ({"bf16-mixed": 0.98, "32-true": 1.0}, "32-true"),  # 2 % < min_gain: not worth bf16's rounding
        ({"16-mixed": 0.5, "32-true": 1.0}, "16-mixed"),
    ],
)
def test_pick_takes_the_faster_unless_the_gain_is_below_min_gain(step_s, expected):
    assert P.pick(step_s, 0.05)[0] == expected


def test_forced_timings_decide_and_the_probe_leaves_no_trace(monkeypatch):
    cfg = compose_cfg(["model=vit_micro", "data.image_size=16", "model.encoder.depth=1", "model.decoder.depth=1"])
    torch.manual_seed(0)
    model = instantiate_checked(cfg.module, _recursive_=False, _convert_="all")
    batch = (torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))
    fake = FakeClock({"bf16-mixed": 2.0, "32-true": 1.0})
    real_autocast = P.autocast_for

    def autocast_for(name, device):
        fake.current = name
        return real_autocast(name, device)

    monkeypatch.setattr(P, "clock", fake)
    monkeypatch.setattr(P, "autocast_for", autocast_for)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    settings = P.ProbeSettings(warmup=1, steps=2)
    step_s = P.time_steps(model, batch, BOTH, torch.device("cpu"), settings)
    assert step_s == fake.cost  # the medians of what the clock said, per candidate
    assert fake.steps == {"bf16-mixed": 3, "32-true": 3}  # warm-up and timed steps, each candidate
    assert P.pick(step_s, settings.min_gain)[0] == "32-true"
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_an_unreadable_cache_is_remeasured_and_rewritten(tmp_path, private_cache, caplog):
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="mae_zoo"):
        assert P.read_cache(private_cache) == {}
    assert "unreadable" in caplog.text
    P.write_cache(private_cache, "k", {"precision": "32-true"})
    assert json.loads(private_cache.read_text()) == {"k": {"precision": "32-true"}}


@pytest.mark.parametrize(
    "override,key",
    [
        ("precision_probe.steps=0", "precision_probe.steps"),
        ("precision_probe.min_gain=1.5", "precision_probe.min_gain"),
        ("precision_probe.enabled=maybe", "precision_probe.enabled"),
    ],
)
def test_bad_probe_settings_fail_at_start_up(override, key):
    with pytest.raises(ConfigError, match=key):
        check_values(compose_cfg([override]))
