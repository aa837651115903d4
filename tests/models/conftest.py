"""Model tests: offline hub, two CPU threads (the tiny text encoder is tests/conftest.py's ``tiny_text_encoder``)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub read it

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
