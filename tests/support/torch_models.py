"""Small TorchScript models (deterministic weights) and their Triton configs, for tests."""

from __future__ import annotations

from pathlib import Path

import torch

WEIGHTS = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10
BIAS = torch.tensor([0.5, -1.0, 2.0])


class Linear(torch.nn.Module):
    """x FP32 [N,4] -> x @ W + b FP32 [N,3]."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(WEIGHTS.clone(), requires_grad=False)
        self.bias = torch.nn.Parameter(BIAS.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Pair(torch.nn.Module):
    """Two inputs, two outputs: FP32 features and INT64 ids."""

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = features * 2.0 + ids.to(torch.float32).sum(dim=-1, keepdim=True)
        return scaled, ids * 3 + 1


class Named(torch.nn.Module):
    """Returns a dict: outputs are read by key."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"double": x * 2, "negative": -x}


def build(name: str) -> torch.nn.Module:
    """The module a model of :func:`write_repository` is made from."""
    return {"t_linear": Linear, "t_pair": Pair, "t_pair_unbatched": Pair, "t_named": Named}[name]()


def save(module: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))
    return path


def add(repo: Path, name: str, module: torch.nn.Module, config: str) -> None:
    save(module, repo / name / "1" / "model.pt")
    (repo / name / "config.pbtxt").write_text(config)


def write_repository(repo: Path) -> Path:
    """One TorchScript model of each kind under ``repo`` (a Triton repository)."""
    add(
        repo,
        "t_linear",
        Linear(),
        'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
        'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }]\n'
        'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }]\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n",
    )
    pair_io = (
        'input [{ name: "features" data_type: TYPE_FP32 dims: [2] },\n'
        '       { name: "ids" data_type: TYPE_INT64 dims: [2] }]\n'
        'output [{ name: "scaled" data_type: TYPE_FP32 dims: [2] },\n'
        '        { name: "next_ids" data_type: TYPE_INT64 dims: [2] }]\n'
    )
    add(repo, "t_pair", Pair(), 'backend: "pytorch"\nmax_batch_size: 4\ndynamic_batching { }\n' + pair_io)
    unbatched = pair_io.replace("dims: [2]", "dims: [3, 2]")
    add(repo, "t_pair_unbatched", Pair(), 'platform: "pytorch_libtorch"\nmax_batch_size: 0\n' + unbatched)
    add(
        repo,
        "t_named",
        Named(),
        'platform: "pytorch_libtorch"\nmax_batch_size: 4\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [-1] }]\n'
        'output [{ name: "negative" data_type: TYPE_FP32 dims: [-1] }, '
        '{ name: "double" data_type: TYPE_FP32 dims: [-1] }]\n',
    )
    return repo
