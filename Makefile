# mae_zoo: `make train` and `make test` install everything they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist workers for make test: a test file stays on one worker (its module fixtures are built once).
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install lint format train test test-fast smoke bench bench-graph record-fashion-mnist record-mnist record-distill-fashion-mnist record-finetune-fashion-mnist record-graphmae-planetoid record-graphmae-tu check-graphmae-official record-slurm-sweep clean help

help:
	@echo "make train   - install, then pre-train an image MAE on the embedded shapes dataset (a few CPU minutes)"
	@echo "make test    - install, then run the test suite (what .ci/run runs, after make lint)"
	@echo "make lint    - ruff (lint, import order, format check) and mypy"
	@echo "make format  - ruff: fix what it can (imports too), then format"
	@echo "make smoke   - a few training steps through the CLI"
	@echo "make bench   - step-time benchmarks (bench/)"
	@echo "make record-fashion-mnist - the experiments/mae_fashion_mnist record run (about 25 min)"
	@echo "make record-mnist - the experiments/mae_mnist pre-training run (about 35 min; evaluation commands in its README)"
	@echo "make record-distill-fashion-mnist - experiments/distill_fashion_mnist: teacher + 6 students + probes (SEED=0; about 1 h on a quiet 2-core CPU)"
	@echo "make record-finetune-fashion-mnist - experiments/finetune_fashion_mnist: MAE pre-training, then fine-tuning vs random init on 1 000 labels, blr sweep + 3 seeds (about 1.5 h on a busy 2-core CPU)"
	@echo "make record-graphmae-planetoid - GraphMAE Cora + CiteSeer, 20 seeds each (hours on 2 cores; SEEDS=range(0,5) for fewer)"
	@echo "make record-graphmae-tu - GraphMAE MUTAG, 5 seeds (about 3 min)"
	@echo "make check-graphmae-official OFFICIAL=DIR - our GraphMAE vs a checkout of the official code (branch pyg): same loss/gradients"
	@echo "make record-slurm-sweep - the experiments/slurm_sweep record on a local one-node Slurm cluster (about 11 min)"
	@echo "make bench-graph - GraphMAE Cora epoch time, mae_zoo vs a plain torch-geometric loop"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

train: install
	$(PY) -m mae_zoo.train experiment=mae_shapes $(ARGS)

smoke: install
	$(PY) -m mae_zoo.train debug=smoke $(ARGS)

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: install
	$(PY) bench/step_time.py $(ARGS)

record-fashion-mnist: install
	$(PY) -m mae_zoo.train experiment=mae_fashion_mnist $(ARGS)

record-mnist: install
	$(PY) -m mae_zoo.train experiment=mae_mnist hydra.run.dir=runs/record_mnist $(ARGS)

record-distill-fashion-mnist: install
	PY=$(PY) bash experiments/distill_fashion_mnist/run.sh $(or $(SEED),0)

record-finetune-fashion-mnist: install
	PY=$(PY) bash experiments/finetune_fashion_mnist/run.sh

# Seeds accumulate in runs/results/<task>.{jsonl,md}: a partial sweep can be continued with other SEEDS.
SEEDS ?= range(0,20)
record-graphmae-planetoid: install
	$(PY) -m mae_zoo.train -m experiment=graphmae_citeseer 'seed=$(SEEDS)' print_config=false hydra.sweep.dir=runs/record_graphmae_citeseer $(ARGS)
	$(PY) -m mae_zoo.train -m experiment=graphmae_cora 'seed=$(SEEDS)' print_config=false hydra.sweep.dir=runs/record_graphmae_cora $(ARGS)

record-graphmae-tu: install
	$(PY) -m mae_zoo.train -m experiment=graphmae_mutag 'seed=range(0,5)' print_config=false hydra.sweep.dir=runs/record_graphmae_mutag $(ARGS)

# OFFICIAL: a checkout of THUDM/GraphMAE, branch pyg (experiments/graphmae_official_check/README.md).
check-graphmae-official: install
	@test -n "$(OFFICIAL)" || { echo "set OFFICIAL=<checkout of THUDM/GraphMAE, branch pyg>"; exit 2; }
	$(PY) experiments/graphmae_official_check/compare_official.py --official $(OFFICIAL) --dataset MUTAG --data-root ../shared/data/tudataset --stub-missing
	$(PY) experiments/graphmae_official_check/compare_official.py --official $(OFFICIAL) --dataset Cora --data-root ../shared/data/planetoid --stub-missing
	$(PY) experiments/graphmae_official_check/compare_official.py --official $(OFFICIAL) --dataset CiteSeer --data-root ../shared/data/planetoid --stub-missing

record-slurm-sweep: install
	bash .ci/slurm_up.sh
	bash experiments/slurm_sweep/run_sweep.sh $(ARGS)

bench-graph: install
	$(PY) bench/graph_epoch.py $(ARGS)

clean:
	rm -rf runs multirun outputs .pytest_cache

# Point clouds (issue 15): the experiments/pointmae_meshes record (<= 14 min pre-training + 12 evaluations).
.PHONY: record-spark-fashion-mnist
record-spark-fashion-mnist: install  ## experiments/spark_fashion_mnist: SparK at MAE's budget (about 15 min on a quiet 2-core CPU)
	PY=$(PY) bash experiments/spark_fashion_mnist/run.sh $(or $(SEED),0)

.PHONY: record-pointmae-meshes bench-point
record-pointmae-meshes: install
	PYTHON=$(PY) bash experiments/pointmae_meshes/run.sh

bench-point: install
	PYTHONPATH=. $(PY) bench/point_speed.py $(ARGS)

.PHONY: record-audiomae-fsdd bench-audio
record-audiomae-fsdd: install  ## the experiments/audiomae_fsdd record (about 15 min pre-training + probes)
	PY=$(PY) bash experiments/audiomae_fsdd/run.sh && $(PY) experiments/audiomae_fsdd/collect.py

bench-audio: install  ## audio loader clips/s against the Audio-MAE step (bench/audio_loader.py)
	$(PY) bench/audio_loader.py $(ARGS)

.PHONY: bench-precision
bench-precision: install  ## does trainer.precision=auto pick the faster precision? its choice vs measured fp32/bf16 steps
	$(PY) bench/precision_auto.py $(ARGS)
