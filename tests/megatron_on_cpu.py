"""``python tests/megatron_on_cpu.py TRAIN-ARGS...``: ``ptobj train`` with megatron-core's
DistributedDataParallel + DistributedOptimizer forced onto CPU (fp32, gloo).

megatron allows them on CUDA only: it checks ``Tensor.type()`` names for ``torch.cuda.*`` and
allocates on ``"cuda"``. This wrapper, for tests only, reports every tensor type as a CUDA one
and sends CUDA allocations to the CPU, so the project's glue around megatron's optimizer (the
per-parameter checkpoint items, resharding between data-parallel sizes) runs on machines
without a GPU. The real thing is tested on GPU (tests marked ``gpu``)."""

import functools
import sys

import torch

_type = torch.Tensor.type


def _cuda_type(self, *args, **kwargs):
    if args or kwargs:
        return _type(self, *args, **kwargs)
    name = _type(self)
    return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)


def _on_cpu(factory):
    @functools.wraps(factory)
    def make(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)
    return make


torch.Tensor.type = _cuda_type
torch.cuda.current_device = lambda: "cpu"
for _name in ("tensor", "zeros", "empty", "ones", "full", "zeros_like", "empty_like"):
    setattr(torch, _name, _on_cpu(getattr(torch, _name)))

from ptobj.recipes.engine import optim  # noqa: E402

optim.build_optimizer = lambda model, cfg, info: optim.MegatronDistributedAdam(model, cfg, info)

if __name__ == "__main__":
    from ptobj.recipes.train import main

    sys.exit(main(sys.argv[1:]))
