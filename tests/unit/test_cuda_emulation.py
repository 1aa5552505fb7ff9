"""The emulated CUDA device (tests/cuda_emulation.py) refuses what CUDA refuses, computes
what the CPU computes, and shows its copies and scalar reads to the transfer meter. The
GPU-path tests rely on each of these: if one broke, they would pass on code a GPU rejects."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from llava3d_ros.core.transfers import TransferMeter
from tests.cuda_emulation import DEVICE_NAME, EmulatedCudaTensor, emulated_cuda

SAME_DEVICE = "Expected all tensors to be on the same device"


def test_torch_reports_one_device_only_inside_the_block() -> None:
    with emulated_cuda():
        assert torch.cuda.is_available() and torch.cuda.device_count() == 1
        assert torch.cuda.get_device_name(0) == DEVICE_NAME
        free, total = torch.cuda.mem_get_info()
        assert 0 < free <= total
        torch.cuda.synchronize()
    assert not torch.cuda.is_available()


def test_every_way_onto_the_device_gives_a_device_tensor() -> None:
    host = torch.arange(6.0).reshape(2, 3)
    with emulated_cuda():
        made = [
            host.to("cuda"),
            host.cuda(),
            host.to(torch.device("cuda"), torch.float64),
            host.to(device="cuda", dtype=torch.float16),
            torch.zeros(2, 3, device="cuda"),
            torch.tensor([[0.0, 1, 2], [3, 4, 5]], device="cuda"),
            torch.as_tensor(np.arange(6.0).reshape(2, 3), device="cuda"),
        ]
        for t in made:
            assert isinstance(t, EmulatedCudaTensor) and t.device.type == "cuda" and t.is_cuda
        assert made[2].dtype == torch.float64 and made[3].dtype == torch.float16
        derived = [made[0] + 1, made[0][0], torch.zeros_like(made[0]), made[0].new_ones(4)]
        assert all(t.is_cuda for t in derived)
        back = made[0].cpu()
        assert type(back) is torch.Tensor and not back.is_cuda
        torch.testing.assert_close(back, host)
        assert made[0].to("cpu", torch.float64).dtype == torch.float64


def test_modules_move_and_compute_as_on_the_cpu() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.LayerNorm(8))
    x = torch.randn(3, 4)
    want = net(x)
    with emulated_cuda():
        net.to("cuda")
        assert all(p.is_cuda for p in net.parameters())
        assert all(isinstance(p, torch.nn.Parameter) for p in net.parameters())
        with torch.inference_mode():
            got = net(x.cuda())
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), want.detach())
        attn = torch.nn.functional.scaled_dot_product_attention(
            *(torch.randn(1, 2, 5, 4, device="cuda") for _ in range(3))
        )
        assert attn.is_cuda  # torch's composite kernels make their buffers on the device
        with torch.inference_mode():
            view = net[0].bias.expand(2, -1)  # a view of a parameter, in inference mode
        assert view.is_cuda and not view.is_inference()
        same = torch.as_tensor(net[0].weight)  # a device tensor passed through
        assert same.is_cuda and torch.as_tensor(same, device="cpu").device.type == "cpu"
        assert net[0].weight.requires_grad and not net[0].weight.to("cpu").is_cuda


def test_mixing_host_and_device_tensors_is_refused_as_on_a_gpu() -> None:
    with emulated_cuda():
        d = torch.arange(4.0, device="cuda")
        h = torch.ones(4)
        with pytest.raises(RuntimeError, match=SAME_DEVICE):
            d + h
        with pytest.raises(RuntimeError, match=SAME_DEVICE):
            torch.where(d > 1, d, h)
        with pytest.raises(RuntimeError, match=SAME_DEVICE):
            d[:2] = h[:2]
        with pytest.raises(RuntimeError, match="indices should be either on cpu"):
            h[torch.tensor([0, 1], device="cuda")]
        with pytest.raises(TypeError, match="numpy"):
            d.numpy()
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(d)
        with pytest.raises(RuntimeError, match="pin"):
            d.pin_memory()
        # What CUDA allows: 0-dim host scalars, host indices, Python numbers.
        assert (d + torch.tensor(2.0)).is_cuda
        assert d[torch.tensor([0, 2])].is_cuda
        assert float(d.sum()) == 6.0 and int(d[1]) == 1 and bool(d.any())
        assert d.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_writes_land_in_the_device_tensor() -> None:
    with emulated_cuda():
        d = torch.zeros(6, dtype=torch.long, device="cuda")
        d[d == 0] = 3  # boolean mask
        d[torch.tensor([1, 4], device="cuda")] = torch.tensor([7, 8], device="cuda")
        view = d[2:4]
        view += 1  # through a view
        d.add_(1)
        keys = torch.tensor([1 << 41, 5], device="cuda")
        assert (keys >> 40).tolist() == [2, 0]  # not mistaken for an in-place operator
        assert d.cpu().tolist() == [4, 8, 5, 5, 9, 4]


def test_the_transfer_meter_sees_copies_and_scalar_reads() -> None:
    with emulated_cuda(), TransferMeter() as meter:
        d = torch.ones(10).to("cuda")  # 40 bytes up
        e = torch.tensor([1.0, 2.0], device="cuda")  # host data: 8 bytes up
        f = torch.zeros(10, device="cuda")  # made there: no copy
        (d + f).sum().item()
        e.cpu()
        d.nonzero()
    c = meter.counts
    assert (c.h2d, c.h2d_bytes, c.d2h, c.d2h_bytes) == (2, 48, 1, 8), c.where
    assert c.scalar_reads == 1 and c.data_dependent == 1


def test_threads_started_in_the_block_see_the_device() -> None:
    made: list[torch.device] = []
    with emulated_cuda():
        worker = threading.Thread(target=lambda: made.append(torch.zeros(2, device="cuda").device))
        worker.start()
        worker.join()
    assert made == [torch.device("cuda", 0)]
