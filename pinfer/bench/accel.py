"""``pinfer bench accel``: NTT throughput of the BAT (int8 matrix) path vs the butterfly path, the
int8 rate it achieves against the device's measured int8 GEMM rate, and BFV encrypt / ct x pt
against TenSEAL (Microsoft SEAL, CPU) at equal N and modulus size.

All numbers of one report come from one run on one machine: medians of repeated timings (CUDA
events on GPU), ratios taken between rows of that run.  Prints a table, writes ``accel.json`` and
``accel.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pinfer.bench.report import pyplot

NTT_VARIANTS = ("bat-triton", "bat-compiled", "bat-eager", "butterfly-compiled", "butterfly-eager", "jax-bat")
# (constant tile, data tile, K tile, warps, stages) candidates for the fused Triton kernels; the
# best per N is reported and used for that row.
TRITON_TILES = ((32, 128, 64, 4, 3), (32, 128, 128, 4, 3), (32, 128, 64, 4, 4), (32, 64, 128, 4, 3),
                (16, 128, 64, 4, 3), (32, 256, 128, 8, 3), (64, 128, 128, 8, 3), (32, 128, 256, 4, 2))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("accel", help="HE primitives: NTT/s (BAT vs butterfly), int8 rate, BFV vs TenSEAL")
    p.add_argument("--out", type=Path, required=True, help="directory for accel.json and accel.png")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--sizes", default="12,13,14,15,16", help="comma-separated log2 N")
    p.add_argument("--limbs", type=int, default=2, help="RNS limbs per batch (each its own prime)")
    p.add_argument("--coeffs", type=int, default=0, help="coefficients per timed call (default 2^24 GPU, 2^17 CPU)")
    p.add_argument("--repeats", type=int, default=0, help="timed repetitions (default 20 GPU, 3 CPU)")
    p.add_argument("--variants", default=",".join(NTT_VARIANTS), help="NTT variants to run")
    p.add_argument("--he-sizes", default="13,14", help="log2 N for the BFV vs TenSEAL rows (empty: skip)")
    p.add_argument("--he-batch", type=int, default=0, help="ciphertexts per batched call (default 32 GPU, 2 CPU)")
    p.set_defaults(func=run)


# ---- timing -------------------------------------------------------------------------------------
def _median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds per call; CUDA timed with events around each call after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(gpu=prop.name, gpu_sms=prop.multi_processor_count, gpu_mem_gib=round(prop.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


# ---- device ceilings ----------------------------------------------------------------------------
def _int8_peak(device: torch.device, repeats: int) -> dict[str, float]:
    """Measured int8 GEMM rates (ops/s, 2 per MAC) of torch._int_mm on a large square product, with
    the second operand row-major and column-major (cuBLASLt's int8 kernels prefer the latter)."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, device=device)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, device=device)
    b_cm = b.t().contiguous().t()
    out = {"size": size}
    for name, rhs in (("row_major_b", b), ("col_major_b", b_cm)):
        out[name] = 2 * size**3 / _median_time(lambda: torch._int_mm(a, rhs), device, repeats)
    return out


def _copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Device-to-device copy rate, bytes read plus written per second."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    x = torch.randint(0, 1 << 30, (n,), dtype=torch.int32, device=device)
    y = torch.empty_like(x)
    t = _median_time(lambda: y.copy_(x), device, repeats)
    return 2 * 4 * n / t


# ---- NTT rows -----------------------------------------------------------------------------------
def _ntt_row(logn: int, variant: str, device: torch.device, limbs: int, coeffs: int, repeats: int) -> dict[str, Any]:
    from pinfer.accel import ntt_butterfly
    from pinfer.accel.backends import torch_matrix
    from pinfer.accel.ntt_matrix import split_dims
    from pinfer.accel.primes import ntt_primes

    n = 1 << logn
    primes = tuple(ntt_primes(30, n, limbs))
    batch = max(1, coeffs // (n * limbs))
    a = torch.stack([torch.randint(0, q, (batch, n), device=device) for q in primes], dim=-2)
    r, c = split_dims(n)
    row: dict[str, Any] = {"logn": logn, "variant": variant, "limbs": limbs, "batch": batch, "ntts_per_call": batch * limbs}
    compiled = variant.endswith("compiled")
    if variant == "bat-triton":
        from pinfer.accel.backends import triton_matrix

        x = triton_matrix.TritonMatrixNTT(n, primes, device).to_internal(a)
        sweep: dict[str, Any] = {}
        for tiles in TRITON_TILES:
            eng_t = triton_matrix.TritonMatrixNTT(n, primes, device, tiles=tiles)
            try:
                sweep[str(tiles)] = batch * limbs / _median_time(lambda: eng_t.forward_internal(x), device, repeats)
            except Exception as exc:  # a tile shape the compiler rejects is skipped, not fatal
                sweep[str(tiles)] = f"{type(exc).__name__}: {exc}"[:120]
        ok = {k: v for k, v in sweep.items() if isinstance(v, float)}
        if not ok:
            raise RuntimeError(f"no Triton tile configuration ran: {sweep}")
        best = max(ok, key=ok.get)
        eng = triton_matrix.TritonMatrixNTT(n, primes, device, tiles=tuple(int(t) for t in best.strip("()").split(",")))
        fn = lambda: eng.forward_internal(x)  # noqa: E731
        row.update(int8_macs_per_ntt=16 * n * (r + c), tile_sweep=sweep, tiles=best)
    elif variant.startswith("bat"):
        eng = torch_matrix.TorchMatrixNTT(n, primes, device, compile=compiled)
        x = eng.to_internal(a)
        fn = lambda: eng.forward_internal(x)  # noqa: E731
        row["int8_macs_per_ntt"] = 16 * n * (r + c)
    elif variant.startswith("butterfly"):
        eng = ntt_butterfly.ButterflyNTT(n, primes, device, compile=compiled)
        fn = lambda: eng.forward(a)  # noqa: E731
    else:
        import jax

        from pinfer.accel.backends import jax_matrix

        eng = jax_matrix.JaxMatrixNTT(n, primes)
        with jax.enable_x64(True):
            xj = jax.device_put(a.cpu().numpy().reshape(batch, limbs, r, c), eng.device)
        fn = lambda: eng.forward_device(xj).block_until_ready()  # noqa: E731
        row["int8_macs_per_ntt"] = 16 * n * (r + c)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - t0  # includes compilation
    t = _median_time(fn, device, repeats)
    row["median_s"] = t
    row["ntt_per_s"] = batch * limbs / t
    if variant in ("bat-compiled", "bat-eager") and device.type == "cuda":
        row["gemm_only_s"] = _gemm_only_time(eng, x, device, repeats)
    return row


def _gemm_only_time(eng: Any, x: torch.Tensor, device: torch.device, repeats: int) -> float:
    """Time of the two int8 GEMMs of a forward NTT alone (same shapes, no glue): the tensor-core share."""
    lsz, r, b, c = x.shape
    d1 = torch.randint(-128, 128, (lsz, b * c, 4 * r), dtype=torch.int8, device=device).transpose(1, 2)
    d3 = torch.randint(-128, 128, (lsz, r * b, 4 * c), dtype=torch.int8, device=device)

    def gemms() -> None:
        for li in range(lsz):
            torch._int_mm(eng.t1[li], d1[li])
            torch._int_mm(d3[li], eng.t3[li])

    return _median_time(gemms, device, repeats)


# ---- BFV vs TenSEAL ------------------------------------------------------------------------------
def _he_rows(logn: int, device: torch.device, batch: int, repeats: int) -> dict[str, Any]:
    from pinfer.accel.params import PARAMETER_SETS
    from pinfer.accel.primes import ntt_primes
    from pinfer.accel.rlwe import BFV

    n = 1 << logn
    params = next(p for p in PARAMETER_SETS.values() if p.n == n)
    row: dict[str, Any] = {"logn": logn, "params": params.name, "log_q": params.log_q, "limbs": len(params.primes),
                           "plain_bits": params.plain_bits, "batch": batch}
    scheme = BFV(params, device=device)
    sk, pk = scheme.keygen()
    m = torch.randint(0, 1 << 20, (batch, n), device=device)
    p = torch.randint(0, 1 << 20, (batch, n), device=device)
    ct = scheme.encrypt(m, pk)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def enc() -> None:
        scheme.encrypt(m, pk)
        sync()

    def mul() -> None:
        scheme.multiply_plain(ct, p)
        sync()

    row["ours_encrypt_s_per_ct"] = _median_time(enc, torch.device("cpu"), repeats) / batch
    row["ours_ptxt_mul_s_per_ct"] = _median_time(mul, torch.device("cpu"), repeats) / batch
    try:
        import tenseal as ts
    except ImportError as exc:
        row["tenseal_error"] = f"tenseal not importable: {exc}"
        return row
    k = -(-params.log_q // 60)
    sizes = [params.log_q // k + (1 if i < params.log_q % k else 0) for i in range(k)]
    plain = ntt_primes(20, n, 1)[0]  # SEAL's batching needs a prime t = 1 mod 2N
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=n, plain_modulus=plain, coeff_mod_bit_sizes=sizes)
    vec = [i % plain for i in range(n)]
    pv = [(7 * i + 3) % plain for i in range(n)]
    enc_ts = ts.bfv_vector(ctx, vec)
    row["tenseal"] = {"coeff_mod_bit_sizes": sizes, "plain_modulus": plain, "n_threads": os.cpu_count(),
                      "version": getattr(ts, "__version__", "?")}
    row["tenseal_encrypt_s_per_ct"] = _median_time(lambda: ts.bfv_vector(ctx, vec), torch.device("cpu"), repeats)
    row["tenseal_ptxt_mul_s_per_ct"] = _median_time(lambda: enc_ts * pv, torch.device("cpu"), repeats)
    row["speedup_encrypt"] = row["tenseal_encrypt_s_per_ct"] / row["ours_encrypt_s_per_ct"]
    row["speedup_ptxt_mul"] = row["tenseal_ptxt_mul_s_per_ct"] / row["ours_ptxt_mul_s_per_ct"]
    return row


# ---- report -------------------------------------------------------------------------------------
def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot(path)
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in sorted({r["variant"] for r in rows if "ntt_per_s" in r}):
        pts = sorted((r["logn"], r["ntt_per_s"]) for r in rows if r["variant"] == v and "ntt_per_s" in r)
        ax.plot([f"2^{x}" for x, _ in pts], [y for _, y in pts], marker="o", label=v)
    ax.set_yscale("log")
    ax.set_xlabel("N")
    ax.set_ylabel("limb-NTTs per second")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must share the GPU with torch
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    coeffs = args.coeffs or (1 << 24 if gpu else 1 << 17)
    repeats = args.repeats or (20 if gpu else 3)
    variants = [v for v in args.variants.split(",") if v]
    if not gpu:  # Inductor-on-CPU is not this path, and the Triton kernels need CUDA
        variants = [v for v in variants if not v.endswith("compiled") and v != "bat-triton"]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": _machine(device), "coeffs_per_call": coeffs, "repeats": repeats}
    report["int8_gemm_ops_per_s"] = _int8_peak(device, repeats)
    report["copy_bytes_per_s"] = _copy_bandwidth(device, repeats)
    rows: list[dict[str, Any]] = []
    for logn in [int(s) for s in args.sizes.split(",") if s]:
        for v in variants:
            try:
                row = _ntt_row(logn, v, device, args.limbs, coeffs, repeats)
            except Exception as exc:  # a missing optional backend must not lose the other rows
                row = {"logn": logn, "variant": v, "error": f"{type(exc).__name__}: {exc}"[:300]}
            if "int8_macs_per_ntt" in row and "ntt_per_s" in row:
                row["int8_ops_per_s"] = 2 * row["int8_macs_per_ntt"] * row["ntt_per_s"]
                row["int8_fraction_of_peak"] = row["int8_ops_per_s"] / max(v for k, v in report["int8_gemm_ops_per_s"].items() if k != "size")
                if "gemm_only_s" in row:
                    row["gemm_share"] = row["gemm_only_s"] / row["median_s"]
            rows.append(row)
            print("progress:", json.dumps({k: v for k, v in row.items() if k in ("logn", "variant", "ntt_per_s", "first_call_s", "gemm_only_s", "error")}), flush=True)
            if gpu:
                torch.cuda.empty_cache()
    report["ntt"] = rows
    by = {(r["logn"], r["variant"]): r for r in rows if "ntt_per_s" in r}
    for r in rows:
        bf = by.get((r["logn"], "butterfly-compiled" if gpu else "butterfly-eager"))
        if "ntt_per_s" in r and bf:
            r["vs_butterfly"] = r["ntt_per_s"] / bf["ntt_per_s"]
    he = []
    for logn in [int(s) for s in args.he_sizes.split(",") if s]:
        try:
            he.append(_he_rows(logn, device, args.he_batch or (32 if gpu else 2), max(5, repeats // 2)))
        except Exception as exc:
            he.append({"logn": logn, "error": f"{type(exc).__name__}: {exc}"[:300]})
    report["bfv_vs_tenseal"] = he
    (args.out / "accel.json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    title = f"NTT throughput on {m.get('gpu', m['cpu'])}"
    _plot(rows, args.out / "accel.png", title)
    _print(report, title)
    return 0


def _print(report: dict[str, Any], title: str) -> None:
    m = report["machine"]
    print(f"# {title}")
    print(f"machine: {m['host']} | CPU {m['cpu']} x{m['cpu_count']} | device {m['device']} {m.get('gpu', '')} | torch {m['torch']}")
    peaks = report["int8_gemm_ops_per_s"]
    print(f"measured int8 GEMM (torch._int_mm {peaks['size']}^3): B row-major {peaks['row_major_b'] / 1e12:.1f} TOPS, "
          f"B col-major {peaks['col_major_b'] / 1e12:.1f} TOPS | "
          f"copy {report['copy_bytes_per_s'] / 1e9:.0f} GB/s | medians of {report['repeats']}")
    print(f"{'N':>6} {'variant':<19} {'NTT/s':>12} {'vs bfly':>8} {'int8 TOPS':>10} {'%peak':>6} {'gemm%':>6} {'batch':>6}")
    for r in report["ntt"]:
        if "error" in r:
            print(f"{'2^' + str(r['logn']):>6} {r['variant']:<19} ERROR {r['error'][:80]}")
            continue
        tops = r.get("int8_ops_per_s")
        print(f"{'2^' + str(r['logn']):>6} {r['variant']:<19} {r['ntt_per_s']:>12,.0f} "
              f"{r.get('vs_butterfly', float('nan')):>8.2f} "
              f"{(tops or float('nan')) / 1e12:>10.3f} {100 * r.get('int8_fraction_of_peak', float('nan')):>6.1f} "
              f"{100 * r.get('gemm_share', float('nan')):>6.1f} {r['ntts_per_call']:>6}")
    print(f"{'N':>6} {'params':<10} {'logQ':>5} {'ours enc/ct':>12} {'SEAL enc/ct':>12} {'x':>7} "
          f"{'ours ptmul/ct':>14} {'SEAL ptmul/ct':>14} {'x':>7}")
    for r in report["bfv_vs_tenseal"]:
        if "error" in r:
            print(f"{'2^' + str(r['logn']):>6} ERROR {r['error'][:100]}")
            continue
        print(f"{'2^' + str(r['logn']):>6} {r['params']:<10} {r['log_q']:>5} {r['ours_encrypt_s_per_ct'] * 1e6:>10.1f}us "
              f"{r.get('tenseal_encrypt_s_per_ct', float('nan')) * 1e6:>10.1f}us {r.get('speedup_encrypt', float('nan')):>7.1f} "
              f"{r['ours_ptxt_mul_s_per_ct'] * 1e6:>12.1f}us {r.get('tenseal_ptxt_mul_s_per_ct', float('nan')) * 1e6:>12.1f}us "
              f"{r.get('speedup_ptxt_mul', float('nan')):>7.1f}")
        if "tenseal_error" in r:
            print(f"       {r['tenseal_error']}")
