# megatron-hpt for CUDA clusters: ONE torch (vLLM's) shared by vLLM, Transformer Engine and
# megatron-core in the same process. Build: docker build -t megatron-hpt .
# Slurm: enroot import dockerd://megatron-hpt -> megatron-hpt.sqsh, used by examples/slurm/*.sbatch
# through pyxis (--container-image), or `apptainer build megatron-hpt.sif docker-daemon://megatron-hpt`.
#
# Why not the NGC PyTorch image: it pins its own torch build; vllm==0.32.0 requires torch==2.13.0
# (and its own torchvision/torchaudio/flashinfer), so installing vLLM replaces that torch and
# breaks the image's prebuilt TE/apex extensions (ABI). Here torch comes from vLLM and TE is
# compiled against it. apex is not installed: megatron-core falls back to torch/TE kernels and
# nothing in megatron-hpt imports it.
#
# Driver: the CUDA of the base image must match the CUDA torch 2.13.0 was built for (checked
# below); with CUDA 12.9 the host needs an NVIDIA driver >= 575 (CUDA 13.x: >= 580). For a
# cu13 torch build: docker build --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
# Never built in this project's CI (no Docker there); the pins are the versions the CPU test
# suite runs with (torch 2.13.0, megatron-core 0.16.1, transformers 5.19.0, vllm 0.32.0).
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG VLLM_VERSION=0.32.0
ARG TORCH_VERSION=2.13.0
ARG TE_VERSION=2.20.2
ARG MCORE_VERSION=0.16.1
ARG TRANSFORMERS_VERSION=5.19.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/cuda/bin:$PATH \
    CUDA_HOME=/usr/local/cuda \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    NVTE_FRAMEWORK=pytorch \
    MAX_JOBS=16

RUN apt-get update && apt-get install -y --no-install-recommends \
      python3 python3-dev python3-venv git build-essential ninja-build cmake \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV && pip install --upgrade pip wheel setuptools

# 1. vLLM and, through its exact pins, torch/torchvision/torchaudio/flashinfer
RUN pip install "vllm==${VLLM_VERSION}" && \
    python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

# 2. the tested megatron-core and transformers (inside vLLM's transformers range)
RUN pip install "megatron-core==${MCORE_VERSION}" "transformers==${TRANSFORMERS_VERSION}"

# 3. Transformer Engine built from source against that torch (no build isolation: the build must
#    see the installed torch, not a fresh one); its CUDA must be the base image's
RUN python -c "import torch, subprocess, re; \
v = re.search(r'release (\d+)', subprocess.check_output(['nvcc', '--version']).decode()).group(1); \
assert torch.version.cuda.split('.')[0] == v, f'torch built for CUDA {torch.version.cuda}, image has CUDA {v}: set CUDA_IMAGE'" && \
    pip install pybind11 && \
    pip install --no-build-isolation "transformer_engine[pytorch]==${TE_VERSION}"

WORKDIR /opt/megatron-hpt
COPY setup.py README.md ./
COPY megatron_hpt ./megatron_hpt
COPY tools ./tools
COPY examples ./examples
# 4. the project (its remaining pure-Python requirements); torch must not move
RUN pip install -e ".[test]" && \
    python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

# 5. import check of everything in one process (no GPU is needed to import)
RUN python -c "import torch, vllm, transformer_engine, transformer_engine.pytorch, megatron.core, transformers, megatron_hpt; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| vllm', vllm.__version__, \
'| te', transformer_engine.__version__, '| mcore', megatron.core.__version__, \
'| transformers', transformers.__version__)"
# dependency conflicts are reported, not fatal (vLLM pins more than it needs at import)
RUN pip check || echo "pip check reported the conflicts above" 

ENTRYPOINT []
CMD ["bash"]
