"""Build ``fake_cuda_guard.cpp`` (see device_check.py) without loading it into this process
(the check runs in fresh processes, which load it with ctypes)."""
from __future__ import annotations

import os


def library_path() -> str:
    """Where the compiled ``fake_cuda_guard`` library lives (built by ``build``)."""
    build_dir = os.environ.get("MEGATRON_HPT_EXT_DIR",
                               os.path.join(os.path.expanduser("~"), ".cache", "megatron_hpt_ext"))
    return os.path.join(build_dir, "fake_cuda_guard.so")


def build() -> str:
    """Compile ``fake_cuda_guard.cpp`` (once; ~10 s) in a child process, so that this process
    does not load it; returns the library's path."""
    import subprocess
    import sys
    path = library_path()
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    code = ("from torch.utils.cpp_extension import load; "
            f"load(name='fake_cuda_guard', sources=[{os.path.join(here, 'fake_cuda_guard.cpp')!r}], "
            f"is_python_module=False, build_directory={os.path.dirname(path)!r}, verbose=False)")
    subprocess.run([sys.executable, "-c", code], check=True)
    return path
