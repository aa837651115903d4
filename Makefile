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

# torch first, pinned: 2.14.1 is served from this machine's disk. DeepSpeed's
# sdist imports torch in setup.py, so it builds without isolation against it.
$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
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
