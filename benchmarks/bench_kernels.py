"""GPU benchmark of the Triton kernels (issue: noise fill, fused reduction, es_step).

For P in {256, 1024, 4096} and D in {1e5, 1e6, 1e7}, in one run:
  * noise fill: GB/s of the noise kernel writing R rows × D (R·D·4 bytes ≤ --fill-bytes), next to
    the measured write bandwidth (``fill_``) and device-to-device copy bandwidth (read + write);
  * fused reduction Σ_j w_j ε_j over P/2 rows vs ``torch.randn(P//2, D)`` alone and vs
    randn + matmul (what the peers do), where those fit in memory;
  * one full ``es_step`` on sphere, eager and under ``torch.compile``.
Targets: reduction at P=1024, D=1e7 no slower than randn(P//2, D) alone; fill >= 80% of the
write bandwidth. Results go to benchmarks/results/ with device, versions and git SHA.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_<gpu>.json
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --smoke   # CPU, tiny: code path only
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

import fastes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import atomic_write, cuda_profile, environment, timer, write_json  # noqa: E402


def _randn_matmul(w, randn):
    return w @ randn()


def fits(device, nbytes):
    if device.type != "cuda":
        return nbytes < 2**30
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.8 * free


def bandwidth(device, nbytes, reps):
    buf = torch.empty(nbytes // 4, device=device)
    src = torch.empty_like(buf)
    write = nbytes / timer(device, lambda: buf.fill_(1.0), reps) / 1e9
    copy = 2 * nbytes / timer(device, lambda: buf.copy_(src), reps) / 1e9
    return write, copy


def run(device, pops, dims, reps, fill_bytes, gen_sizes=None):
    from fastes.kernels import noise, reduce

    key = fastes.key(0, device=device)
    res = {"fill": [], "reduction": [], "es_step": []}
    write_bw, copy_bw = bandwidth(device, fill_bytes, reps)
    res["bandwidth"] = {"write_GBps": write_bw, "copy_GBps": copy_bw, "bytes": fill_bytes}
    print(
        f"write {write_bw:.0f} GB/s, device copy {copy_bw:.0f} GB/s ({fill_bytes / 2**20:.0f} MiB)"
    )
    for D in dims:
        R = max(1, fill_bytes // (4 * D))
        rows = torch.arange(R, device=device)
        t = timer(device, functools.partial(noise.philox_normal_rows, key, rows, D), reps)
        gbps = R * D * 4 / t / 1e9
        res["fill"].append({"D": D, "rows": R, "s": t, "GBps": gbps, "of_write": gbps / write_bw})
        print(f"fill D={D:>10,} rows={R:>6}: {gbps:7.1f} GB/s = {gbps / write_bw:5.1%} of write")
    for P in pops:
        for D in dims:
            R = P // 2
            rows = torch.arange(R, device=device)
            w = torch.randn(R, device=device)
            entry = {"P": P, "D": D}
            fused = functools.partial(reduce.philox_weighted_sum, key, rows, w, D)
            entry["fused_s"] = timer(device, fused, reps)
            if fits(device, 2 * R * D * 4):
                randn = functools.partial(torch.randn, R, D, device=device)
                entry["randn_s"] = timer(device, randn, reps)
                both = functools.partial(_randn_matmul, w, randn)
                entry["randn_matmul_s"] = timer(device, both, reps)
            line = f"reduce P={P:>5} D={D:>10,}: fused {entry['fused_s'] * 1e3:9.2f} ms"
            if "randn_s" in entry:
                line += f", randn {entry['randn_s'] * 1e3:9.2f} ms"
                line += f", randn+matmul {entry['randn_matmul_s'] * 1e3:9.2f} ms"
                line += f", fused/randn {entry['fused_s'] / entry['randn_s']:.2f}"
            else:
                line += ", randn(P/2, D) does not fit in memory"
            res["reduction"].append(entry)
            print(line)
    res["generation"] = generations(device, reps, gen_sizes)
    P, D = pops[0], dims[0]
    theta = torch.full((D,), 0.5, device=device)

    def step(th, k):
        return fastes.es_step(
            th, lambda x: -(x * x).sum(), k, population_size=P, sigma=0.02, learning_rate=0.01,
            noise="philox",
        )  # fmt: skip

    eager = timer(device, lambda: step(theta, key), reps)
    entry = {"P": P, "D": D, "eager_s": eager}
    if device.type == "cuda":  # Inductor on the CPU compiles for minutes: GPU only
        compiled = torch.compile(step, fullgraph=True)  # one graph: es_step is sync-free
        entry["compiled_s"] = timer(device, lambda: compiled(theta, key), reps)
    res["es_step"].append(entry)
    print(f"es_step sphere P={P} D={D:,}: eager {eager * 1e3:.2f} ms" + (
        f", torch.compile {entry['compiled_s'] * 1e3:.2f} ms" if "compiled_s" in entry else ""
    ))  # fmt: skip
    return res


def generations(device, reps, sizes=None, chunks=(32, 64, 128, 256, 512, 1024)):
    """One OpenAI-ES generation (sphere): ``es_step`` (default noise and chunking, and with
    ``noise="philox"``: the perturb and fused-reduction kernels) vs the naive
    randn + cat + matmul of es_generation.py on the same device, one after another; then ``es_step``
    over evaluation chunk sizes (members per chunk) at the middle size, which is how
    DEFAULT_CHUNK_BYTES_CUDA is chosen."""
    from es_generation import fastes_generation, naive_generation, sphere

    if sizes is None:
        sizes = [(10**5, 256), (10**6, 1024), (10**7, 256)]
    rows = []
    for D, P in sizes:
        theta = torch.full((D,), 0.5, device=device)
        key = fastes.key(0, device=device)
        mine = functools.partial(fastes_generation, theta, sphere, key, P)
        row = {"D": D, "P": P, "fastes_s": timer(device, mine, reps)}
        philox = functools.partial(fastes_generation, theta, sphere, key, P, noise="philox")
        row["fastes_philox_s"] = timer(device, philox, reps)
        if fits(device, 3 * P * D * 4):
            naive = functools.partial(naive_generation, theta, sphere, key, P)
            row["naive_s"] = timer(device, naive, reps)
            row["ratio"] = row["fastes_s"] / row["naive_s"]
        line = f"generation D={D:>10,} P={P:>5}: fastes {row['fastes_s'] * 1e3:8.2f} ms"
        line += f" (noise='philox' {row['fastes_philox_s'] * 1e3:8.2f} ms)"
        if "naive_s" in row:
            line += f", naive {row['naive_s'] * 1e3:8.2f} ms, fastes/naive {row['ratio']:.2f}"
        print(line)
        rows.append(row)
    D, P = sizes[len(sizes) // 2]
    theta, key = torch.full((D,), 0.5, device=device), fastes.key(0, device=device)
    sweep = []
    for c in chunks:
        if c > P:
            break
        mine = functools.partial(fastes_generation, theta, sphere, key, P, chunk_size=c)
        t = timer(device, mine, reps)
        sweep.append({"D": D, "P": P, "chunk": c, "MiB": c * D * 4 / 2**20, "s": t})
        print(f"  chunk {c:5d} ({c * D * 4 / 2**20:8.1f} MiB): {t * 1e3:8.2f} ms")
    return {"vs_naive": rows, "chunk_sweep": sweep}


def profile(device, path, D=10**5, P=256):
    """Profiles (``_common.cuda_profile``) of ``es_step`` generations on sphere with the default
    noise and with ``noise="philox"``."""
    from es_generation import fastes_generation, sphere

    theta, key = torch.full((D,), 0.5, device=device), fastes.key(0, device=device)
    tables = [
        cuda_profile(
            functools.partial(fastes_generation, theta, sphere, key, P, noise=noise),
            f"es_step sphere D = {D}, P = {P}, noise = {noise!r}",
        )  # fmt: skip
        for noise in ("auto", "philox")
    ]
    atomic_write(path, lambda fh: fh.write("\n".join(tables)), mode="w")
    print(f"profile written to {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, any device (CI check)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--fill-bytes", type=int, default=2**30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="also profile es_step at D = 1e5, P = 256 into FILE (CUDA)")  # fmt: skip
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.smoke:
        pops, dims, reps, fill = [4, 6], [100, 257], 1, 4 * 257 * 3
        gen_sizes = [(100, 8), (257, 16)]
    else:
        if device.type != "cuda":
            raise SystemExit("bench_kernels.py needs a CUDA GPU (or --smoke for a code-path check)")
        pops, dims, reps, fill = [256, 1024, 4096], [10**5, 10**6, 10**7], a.reps, a.fill_bytes
        gen_sizes = None
    res = {"env": environment(device), **run(device, pops, dims, reps, fill, gen_sizes)}
    if a.out:
        write_json(a.out, res)
    if a.profile and device.type == "cuda":
        profile(device, a.profile)
    return res


if __name__ == "__main__":
    main()
