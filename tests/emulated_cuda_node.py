"""``llava3d-ros`` (its CLI, e.g. ``up --params P``) in a process that has the emulated CUDA
device of tests/cuda_emulation.py: the node's ``device: cuda`` path over real DDS on a
machine without a GPU."""

from __future__ import annotations

import sys

from llava3d_ros.cli import main
from tests.cuda_emulation import emulated_cuda

if __name__ == "__main__":
    with emulated_cuda():
        code = main(sys.argv[1:])
    sys.exit(code)
