# The two commands a newcomer types: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test clean

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

demo: $(STAMP)
	$(PY) tools/make_demo_data.py $(DEMO_DATA)
	$(PY) tools/build_cache.py --config configs/demo.yaml
	$(VENV)/bin/deepspeed --num_gpus 1 engine/train.py --config configs/demo.yaml
	$(PY) tools/show_metrics.py runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs cache data/demo
