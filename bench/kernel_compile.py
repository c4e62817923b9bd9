"""Compile every shipped attention-kernel candidate for Hopper (sm_90) on a machine
without a GPU and print what the compiler says about it: registers per thread, spill
bytes, shared memory, async copies (cp.async and TMA) and wgmma instructions.

Triton compiles for an explicit ``GPUTarget("cuda", 90, 64)`` with no driver; the
arguments are meta tensors, specialised exactly as a launch would specialise them
(16-byte aligned pointers, strides divisible by 16). ptxas's own report gives
registers and spills; ``wgmma serialized`` flags ptxas's C7515/C7510 notes (wgmma
chains that ptxas could not keep asynchronous).

    python bench/kernel_compile.py                    # table for D=64 and D=128
    python bench/kernel_compile.py --head-dims 128 --json

A candidate is shippable when it spills nothing and its shared memory fits in an
sm_90 block (227 KiB); ``tests/test_kernels_compile.py`` enforces both.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SM90_SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may opt into on sm_90


@dataclass
class CompileReport:
    kernel: str
    config: str
    head_dim: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    cp_async: int
    tma_loads: int
    tma_stores: int
    wgmma: int
    wgmma_serialized: bool
    compile_s: float

    @property
    def ok(self) -> bool:
        return self.spill_stores == 0 and self.spill_loads == 0 and self.shared <= SM90_SMEM_LIMIT


def _parse_ptxas(log: str, name: str) -> dict:
    """Registers / spills / stack of entry ``name`` from ``ptxas -v`` output."""
    block = log.split(f"Function properties for {name}", 1)
    if len(block) < 2:
        raise RuntimeError(f"ptxas log has no entry for {name}:\n{log}")
    tail = block[1]
    stack = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", tail)
    regs = re.search(r"Used (\d+) registers", tail)
    if not (stack and regs):
        raise RuntimeError(f"cannot read registers/spills for {name} from:\n{log}")
    return dict(registers=int(regs.group(1)), stack=int(stack.group(1)),
                spill_stores=int(stack.group(2)), spill_loads=int(stack.group(3)),
                wgmma_serialized=bool(re.search(r"C75(15|10|08|09)", log)))


def compile_sm90(fn, args, kwargs, *, capability: int = 90):
    """Compile JIT function ``fn`` for ``args``/``kwargs`` (meta tensors, descriptors, ints and
    constexprs, as a launch passes them) for ``cuda:capability``. Returns (compiled, ptxas log)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability, 64)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    old = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options.__dict__)
    finally:
        knobs.nvidia.dump_ptxas_log = old
    return compiled, log.getvalue()


def report(name: str, config: str, head_dim: int, fn, args, kwargs) -> CompileReport:
    t0 = time.perf_counter()
    compiled, log = compile_sm90(fn, args, kwargs)
    seconds = time.perf_counter() - t0
    if not log.strip():
        raise RuntimeError("ptxas printed nothing: the kernel came from the Triton cache; use a fresh "
                           "TRITON_CACHE_DIR (candidate_reports does)")
    ptx = compiled.asm["ptx"]
    stats = _parse_ptxas(log, compiled.metadata.name)
    return CompileReport(
        kernel=name, config=config, head_dim=head_dim, shared=int(compiled.metadata.shared),
        cp_async=len(re.findall(r"\bcp\.async\.(?:ca|cg)\.shared", ptx)),
        tma_loads=len(re.findall(r"\bcp\.async\.bulk\.tensor\.\S*shared::(?:cta|cluster)\.global", ptx)),
        tma_stores=len(re.findall(r"\bcp\.async\.bulk\.tensor\.\S*global\.shared::(?:cta|cluster)", ptx)),
        wgmma=len(re.findall(r"\bwgmma\.mma_async", ptx)), compile_s=round(seconds, 1), **stats)


def _report_case(head_dim: int, index: int) -> CompileReport:
    """Compile case ``index`` of ``compile_cases(head_dim)`` (run in a worker process)."""
    from ptobj.kernels import triton_attention

    case = triton_attention.compile_cases(head_dim)[index]
    return report(case.kernel, case.config, case.head_dim, case.fn, case.args, case.kwargs)


def candidate_reports(head_dims=(64, 128), *, jobs: int = 1, progress=True) -> list[CompileReport]:
    """Compile every shipped candidate of ``ptobj.kernels.triton_attention`` for each head dim, in
    ``jobs`` processes, into a fresh Triton cache (so ptxas reports on every kernel)."""
    from concurrent.futures import ProcessPoolExecutor

    from ptobj.kernels import triton_attention

    todo = [(d, i) for d in head_dims for i in range(len(triton_attention.compile_cases(d)))]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(_report_case, d, i) for d, i in todo]
            out = []
            for n, fut in enumerate(futures, 1):
                out.append(fut.result())
                if progress:
                    r = out[-1]
                    print(f"[{n}/{len(todo)}] {r.kernel} D={r.head_dim} {r.config}: {r.registers} regs, "
                          f"{r.compile_s}s", file=sys.stderr, flush=True)
    return out


COLUMNS = ["kernel", "head_dim", "config", "registers", "spill_stores", "spill_loads", "shared",
           "cp_async", "tma_loads", "tma_stores", "wgmma", "wgmma_serialized"]


def markdown(rows: list[CompileReport]) -> str:
    head = ["kernel", "D", "config (BM, BN, warps, stages)", "regs", "spill st/ld (B)", "smem (KiB)",
            "cp.async", "TMA ld/st", "wgmma", "serialized", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in (
            r.kernel, r.head_dim, r.config, r.registers, f"{r.spill_stores}/{r.spill_loads}",
            round(r.shared / 1024, 1), r.cp_async, f"{r.tma_loads}/{r.tma_stores}", r.wgmma,
            "yes" if r.wgmma_serialized else "no", "yes" if r.ok else "NO")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--json", action="store_true", help="one JSON line per kernel and config")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("bench/kernel_compile.py compiles real kernels: unset TRITON_INTERPRET")
    import triton

    rows = candidate_reports(tuple(int(d) for d in args.head_dims.split(",")), jobs=args.jobs)
    if args.json:
        for r in rows:
            print(json.dumps({**asdict(r), "ok": r.ok, "triton": triton.__version__, "target": "sm_90"}))
    else:
        print(f"triton {triton.__version__}, target sm_90, shared-memory limit {SM90_SMEM_LIMIT // 1024} KiB")
        print(markdown(rows))
    bad = [r for r in rows if not r.ok]
    for r in bad:
        print(f"NOT SHIPPABLE: {r.kernel} D={r.head_dim} {r.config}: spills {r.spill_stores}/{r.spill_loads} B, "
              f"shared {r.shared} B", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
