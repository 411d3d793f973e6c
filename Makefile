# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 is the CPU wheel on this machine's disk; a range would pull a CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -c requirements.lock -e ".[text,knn,distributed,test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/openworld demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

# ---------------------------------------------------------------------------------------------
# Detection-quality benchmark: regenerates docs/benchmarks.md (see benchmarks/quality.py).
# pytorch-ood runs in its own environment, ./bench-env (torch 2.14.1, which .venv does not use).
BENCH_ENV  := bench-env
BENCH_WORK := .cache/bench

.PHONY: bench-env bench-quality

$(BENCH_ENV)/.installed:
	$(PYTHON) -m venv $(BENCH_ENV)
	$(BENCH_ENV)/bin/pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(BENCH_ENV)/bin/pip install --disable-pip-version-check -q pytorch-ood==0.4.0 numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1
	touch $@

bench-env: $(BENCH_ENV)/.installed

bench-quality: install bench-env
	$(BIN)/python -m benchmarks.quality prepare --work $(BENCH_WORK)
	$(BENCH_ENV)/bin/python -m benchmarks.peers_pytorch_ood --work $(BENCH_WORK)
	$(BIN)/python -m benchmarks.quality report --work $(BENCH_WORK) --out docs/benchmarks.md

# ---------------------------------------------------------------------------------------------
# One-class anomaly detection (issue 6): regenerates docs/anomaly.md from ../shared/data/adbench
# (or $OPENWORLD_DATA) against PyOD and scikit-learn (see benchmarks/anomaly.py; about 41 min, 2-core CPU).
.PHONY: bench-anomaly

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install --disable-pip-version-check -q -c requirements.lock -e ".[bench]"
	touch $@

bench-anomaly: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/anomaly.py --out docs/anomaly.md

# An oracle upper bound on the MVTec-AD embeddings (every setting, the best per category chosen on the test
# anomalies on purpose): regenerates docs/anomaly-ceiling.md (a few minutes).
# Peak memory of a streamed fit (fit_batches) against fit, relative to the statistics' size:
# regenerates docs/streaming-memory.md (under a minute).
.PHONY: bench-streaming-memory
bench-streaming-memory: $(BIN)/.installed
	$(BIN)/python benchmarks/streaming_memory.py --out docs/streaming-memory.md

.PHONY: bench-anomaly-ceiling
bench-anomaly-ceiling: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/anomaly_ceiling.py --out docs/anomaly-ceiling.md

# ---------------------------------------------------------------------------------------------
# Speed against the matrix-product floors, scikit-learn LDA and pytorch-ood (issue 5, CPU):
# regenerates docs/performance.md (about 5 min on a 2-core CPU; --full for the whole grid).
# pytorch-ood runs in ./bench-env, in a subprocess of benchmarks/speed.py.
.PHONY: bench-speed

bench-speed: install bench-env
	$(BIN)/python -m benchmarks.speed --out docs/performance.md

# ---------------------------------------------------------------------------------------------
# Which hidden states the bundled text encoder pools (its default `layers`, chosen on validation):
# regenerates docs/text-encoder.md (CLINC150 + HWU64; about 15 min on the 2-core CPU).
.PHONY: bench-text-layers

bench-text-layers: install
	$(BIN)/python -m benchmarks.text_layers --out docs/text-encoder.md

# ---------------------------------------------------------------------------------------------
# Discovery of new classes (issue 4): regenerates docs/discovery.md (GCD protocol on CLINC150, HWU64,
# MNIST-5k; validation on their training rows, 2 processes; 100k x 384 timing). About 80 min on the 2-core CPU.
.PHONY: bench-discovery

bench-discovery: install
	$(BIN)/python -m benchmarks.discovery --validate --scale --out docs/discovery.md

# ---------------------------------------------------------------------------------------------
# Speed on one CUDA device (issue 5, GPU): regenerates docs/performance-gpu.md (GEMM rates, fit of
# 10⁷ × 768 rows against its floors and a float64 reference, scoring rows/s and accuracy; a few minutes
# on an H100). On the lent device, without the venv: PYTHONPATH=. python3 -m benchmarks.gpu
.PHONY: bench-gpu

bench-gpu: install
	$(BIN)/python -m benchmarks.gpu --out docs/performance-gpu.md

# ---------------------------------------------------------------------------------------------
# The same detection-quality harness on text embeddings of the bundled encoder fine-tuned on each stage's
# fit rows (fine_tune_text_encoder): regenerates docs/benchmarks-fine-tuned.md (CLINC150 full and open-set:
# 7 encoders fine-tuned, about 1.5 h on the 2-core CPU; weights kept in the work folder). `--only clinc hwu64`
# adds HWU64's open-set protocol (6 more encoders, about 40 min).
.PHONY: bench-quality-fine-tuned

bench-quality-fine-tuned: install bench-env
	$(BIN)/python -m benchmarks.quality prepare --fine-tune --only clinc --work .cache/bench-fine-tuned
	$(BENCH_ENV)/bin/python -m benchmarks.peers_pytorch_ood --work .cache/bench-fine-tuned
	$(BIN)/python -m benchmarks.quality report --work .cache/bench-fine-tuned --out docs/benchmarks-fine-tuned.md

# ---------------------------------------------------------------------------------------------
# Discovery (issue 4) on text embeddings of the bundled encoder fine-tuned on each seed's labelled rows:
# regenerates docs/discovery-fine-tuned.md (CLINC150 and HWU64, seeds 0-2; about 45 min on the 2-core CPU).
.PHONY: bench-discovery-fine-tuned

bench-discovery-fine-tuned: install
	$(BIN)/python -m benchmarks.discovery --fine-tune --datasets CLINC150 HWU64 --results .cache/bench/discovery-fine-tuned-results.json --out docs/discovery-fine-tuned.md
