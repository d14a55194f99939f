# megatron-hpt for CUDA clusters: PyTorch + Transformer Engine + apex (built here) + vLLM 0.32.
# Build: docker build -t megatron-hpt .   Run under Slurm with enroot/pyxis or apptainer.
# The NGC PyTorch image ships CUDA, cuDNN, NCCL and a matching PyTorch; TE and apex are built
# against that PyTorch so that megatron-core's fused kernels (TE layers, FP8, fused Adam) load.
FROM nvcr.io/nvidia/pytorch:25.09-py3

ENV PIP_NO_CACHE_DIR=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    NVTE_FRAMEWORK=pytorch \
    MAX_JOBS=16

# apex: fused optimizers and layer norms used by megatron-core when present.
RUN git clone --depth 1 https://github.com/NVIDIA/apex /opt/apex && \
    cd /opt/apex && \
    pip install -v --no-build-isolation \
      --config-settings "--build-option=--cpp_ext" --config-settings "--build-option=--cuda_ext" . && \
    rm -rf /opt/apex

WORKDIR /opt/megatron-hpt
COPY setup.py README.md ./
COPY megatron_hpt ./megatron_hpt
COPY tools ./tools
COPY examples ./examples
# [gpu] = transformer-engine + vllm==0.32.0 (vLLM brings its own pinned torch build; keep the
# image's TE/apex ABI-compatible by installing vLLM last and re-checking imports).
RUN pip install -e ".[gpu,test]" && \
    python -c "import megatron.core, transformer_engine.pytorch, vllm; print('megatron-hpt image OK')"

ENTRYPOINT []
CMD ["bash"]
