# The two commands a newcomer types: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-data test clean

install: $(STAMP)

# torch first, pinned: 2.14.1 is served from this machine's disk (its CUDA 13 build has kernels for sm_75 and
# later only). Pascal and Volta cards (sm_60/61/70): `make install TORCH_INDEX=cu126` takes PyTorch's CUDA 12.6
# build (kernels sm_50 ... sm_90) from its own index instead; CI and the default keep the pinned build.
# TORCH_VERSION / TORCHVISION_VERSION pick another pair if that index lacks this one. DeepSpeed's sdist imports
# torch in setup.py, so it builds without isolation against whichever torch this installed.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_INDEX ?=
TORCH_PIP := $(if $(TORCH_INDEX),torch==$(TORCH_VERSION)+$(TORCH_INDEX) torchvision==$(TORCHVISION_VERSION)+$(TORCH_INDEX) \
	--index-url https://download.pytorch.org/whl/$(TORCH_INDEX),torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION))

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_PIP)
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

# DeepSpeed's launcher listens on 29500 unless told otherwise; on a machine shared with other jobs that port is
# often taken, so the demo asks the OS for a free one (MASTER_PORT=N make demo picks it). A second `make demo` keeps
# the previous runs/demo aside as runs/demo.prev-<time> rather than refusing to start over it.
FREE_PORT = $(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'

# The photos are made once: DEMO_DATA/.made_with stamps the arguments and the generator's hash, and a later
# `make demo` with both unchanged skips the ~720 JPEGs (delete the stamp, or `make clean`, to make them again).
DEMO_DATA_ARGS ?=
demo-data: $(STAMP)
	@want="$(DEMO_DATA_ARGS) $$(sha256sum tools/make_demo_data.py | cut -c1-16)"; \
	if [ -f $(DEMO_DATA)/manifest.csv ] && [ "$$(cat $(DEMO_DATA)/.made_with 2>/dev/null)" = "$$want" ]; then \
		echo "$(DEMO_DATA) is up to date (same arguments, same generator): not made again"; \
	else \
		rm -f $(DEMO_DATA)/.made_with && $(PY) tools/make_demo_data.py $(DEMO_DATA) $(DEMO_DATA_ARGS) && \
		echo "$$want" > $(DEMO_DATA)/.made_with; \
	fi

demo: demo-data
	$(PY) tools/build_cache.py --config configs/demo.yaml
	$(VENV)/bin/deepspeed --num_gpus 1 --master_port $${MASTER_PORT:-$$($(FREE_PORT))} engine/train.py \
		--config configs/demo.yaml --run.existing=keep_aside
	$(PY) tools/show_metrics.py runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check engine kernels tools tests setup.py  # lint first: a second, not minutes into the suite
	$(PY) -m pytest -q

clean:
	rm -rf runs cache data/demo
