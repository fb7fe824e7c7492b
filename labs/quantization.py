"""The quantization lab: how much each weight-quantization scheme costs on a real model's weights.

`python -m labs.quantization [--model smollm2_135m] [--layers 28|all] [--out reports/quantization]`

Every scheme is written here in plain torch, so a reader sees the whole arithmetic in a few lines:
symmetric (absmax) and asymmetric (zero-point) int8, per tensor and block-wise; 4-bit codebooks
(NF4 from normal quantiles, FP4 as E2M1) with a float32 absmax per block; double quantization of
those block constants. Where bitsandbytes implements the same scheme, its output is the reference
we check against (NF4 and FP4 code tables, `quantize_4bit`/`dequantize_4bit`, row-wise int8).

Writes `quantization.csv`, `quantization.md` and `quantization.png` (error against bits per
parameter), and logs them with the figures to an MLflow run.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

BLOCK_SIZES = (64, 256, 4096)
DQ_BLOCK = 256         # block size of the second quantization (of the constants), as in QLoRA
NF4_OFFSET = 0.9677083  # bitsandbytes' choice: mean of 1 - 1/(2*15) and 1 - 1/(2*16)


# --- Blocks ----------------------------------------------------------------------------------------

def to_blocks(w: torch.Tensor, block: int | None) -> torch.Tensor:
    """(n_blocks, block) view of the flattened tensor; `None` is one block (per tensor). The last
    block is padded by repeating its last value, which changes no block statistic."""
    flat = w.detach().float().reshape(-1)
    block = block or flat.numel()
    pad = -flat.numel() % block
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, block)


def from_blocks(blocks: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return blocks.reshape(-1)[: like.numel()].view_as(like)


# --- int8 ------------------------------------------------------------------------------------------

def absmax_int8(w: torch.Tensor, block: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric: q = round(127 x / absmax), in [-127, 127]. Returns (codes, absmax per block)."""
    x = to_blocks(w, block)
    absmax = x.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax)) / 127
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), absmax


def absmax_int8_roundtrip(w: torch.Tensor, block: int | None) -> torch.Tensor:
    q, absmax = absmax_int8(w, block)
    return from_blocks(q.float() * absmax / 127, w)


def zeropoint_int8_roundtrip(w: torch.Tensor, block: int | None) -> torch.Tensor:
    """Asymmetric: the block's [min, max] maps onto [0, 255] with an integer zero point, so a
    skewed block spends no codes on values it does not have."""
    x = to_blocks(w, block)
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi)) / 255
    zero = torch.round(-lo / scale)
    q = (torch.round(x / scale) + zero).clamp(0, 255)
    return from_blocks((q - zero) * scale, w)


# --- 4-bit codebooks -------------------------------------------------------------------------------

def nf4_code() -> torch.Tensor:
    """NormalFloat4 (Dettmers et al., 2023): quantiles of N(0, 1), 8 positive and 7 negative
    values plus an exact zero, scaled to [-1, 1]. Same construction as bitsandbytes'
    `create_normal_map`, with torch's inverse normal CDF."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (values / values.max()).float()


def fp4_e2m1_code() -> torch.Tensor:
    """FP4 as E2M1 (1 sign, 2 exponent, 1 mantissa bit; exponent bias 1, subnormals at e = 0):
    magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6, scaled to [-1, 1]. bitsandbytes' `fp4` type is another
    4-bit float table (see `compare_with_bitsandbytes`)."""
    magnitudes = [(m / 2) if e == 0 else 2 ** (e - 1) * (1 + m / 2) for e in range(4) for m in range(2)]
    values = torch.tensor(sorted({s * v for v in magnitudes for s in (1, -1)}))
    return values / values.abs().max()


def codebook_quantize(w: torch.Tensor, code: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value scaled by its block's absmax and rounded to the nearest code value.
    Returns (code indices, absmax per block)."""
    x = to_blocks(w, block)
    absmax = x.abs().amax(dim=1, keepdim=True)
    normed = x / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    code, order = code.sort()
    midpoints = (code[1:] + code[:-1]) / 2
    return order[torch.bucketize(normed, midpoints)], absmax


def codebook_dequantize(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                        like: torch.Tensor) -> torch.Tensor:
    return from_blocks(code[idx] * absmax, like)


def double_quantize(absmax: torch.Tensor, block: int = DQ_BLOCK) -> torch.Tensor:
    """QLoRA's double quantization, in its plain form: the fp32 block constants, minus their mean,
    as symmetric int8 in blocks of 256 (8 bits per constant plus one fp32 per 256 constants).
    bitsandbytes uses its dynamic 8-bit float table instead of linear int8 for this step.
    Returns the dequantized constants."""
    offset = absmax.mean()
    return absmax_int8_roundtrip(absmax - offset, block) + offset


def codebook_roundtrip(w: torch.Tensor, code: torch.Tensor, block: int, double: bool = False) -> torch.Tensor:
    idx, absmax = codebook_quantize(w, code, block)
    if double:
        absmax = double_quantize(absmax)
    return codebook_dequantize(idx, absmax, code, w)


# --- Bits per parameter ----------------------------------------------------------------------------

def bits_per_param(bits: int, block: int | None, numel: int, constant_bits: int = 32, double: bool = False) -> float:
    """Storage per weight, constants included: `bits` for the code, `constant_bits` per block (an
    fp32 scale; +8 for an int8 zero point). Double quantization stores each block constant in 8 bits,
    plus an fp32 per 256 constants: 4 + 32/64 = 4.5 becomes 4 + 8/64 + 32/(64*256) = 4.127."""
    block = block or numel
    if double:
        return bits + 8 / block + 32 / (block * DQ_BLOCK)
    return bits + constant_bits / block


# --- Schemes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scheme:
    name: str
    block: int | None          # None: per tensor
    bits: int
    constant_bits: int = 32
    double: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} / {'tensor' if self.block is None else self.block}"


def schemes(block_sizes=BLOCK_SIZES) -> list[Scheme]:
    out = []
    for block in (None, *block_sizes):
        out += [Scheme("int8 absmax", block, 8), Scheme("int8 zero-point", block, 8, constant_bits=40)]
    for block in block_sizes:
        out += [Scheme("nf4", block, 4), Scheme("fp4 (e2m1)", block, 4)]
    out += [Scheme("nf4 + double quant", b, 4, double=True) for b in block_sizes]
    out += [Scheme("nf4 (bitsandbytes)", b, 4) for b in block_sizes]
    out += [Scheme("nf4 + double quant (bitsandbytes)", b, 4, double=True) for b in block_sizes]
    return out


def roundtrip(w: torch.Tensor, s: Scheme) -> torch.Tensor:
    """The dequantized weights after quantizing `w` with scheme `s`."""
    if s.name == "int8 absmax":
        return absmax_int8_roundtrip(w, s.block)
    if s.name == "int8 zero-point":
        return zeropoint_int8_roundtrip(w, s.block)
    if s.name.startswith("nf4") and "bitsandbytes" not in s.name:
        return codebook_roundtrip(w, nf4_code(), s.block, s.double)
    if s.name == "fp4 (e2m1)":
        return codebook_roundtrip(w, fp4_e2m1_code(), s.block)
    if "bitsandbytes" in s.name:
        return bnb_roundtrip(w, "nf4", s.block, s.double)
    raise ValueError(f"unknown scheme {s.name!r}")


def bnb_roundtrip(w: torch.Tensor, quant_type: str, block: int, double: bool = False) -> torch.Tensor:
    """bitsandbytes' 4-bit round trip over the flattened tensor (its blocks run over the flattened
    tensor too). Flattened because bitsandbytes 0.50.2 on the CPU dequantizes a 2-D tensor wrongly
    when its rows are shorter than the block (e.g. 64 x 64 in blocks of 128: twice the error)."""
    import bitsandbytes.functional as F

    q, state = F.quantize_4bit(w.float().reshape(-1).contiguous(), blocksize=block, quant_type=quant_type,
                               compress_statistics=double)
    return F.dequantize_4bit(q, state).view_as(w)


# --- Measuring -------------------------------------------------------------------------------------

class ErrorTotals:
    """Errors accumulated over many tensors: MSE, max |error| and relative Frobenius error."""

    def __init__(self) -> None:
        self.sq_err = self.sq_ref = 0.0
        self.max_abs = 0.0
        self.n = 0

    def add(self, ref: torch.Tensor, approx: torch.Tensor) -> None:
        err = (approx.float() - ref.float()).double()
        self.sq_err += float((err**2).sum())
        self.sq_ref += float((ref.double() ** 2).sum())
        self.max_abs = max(self.max_abs, float(err.abs().max()))
        self.n += ref.numel()

    def row(self) -> dict[str, float]:
        return {"mse": self.sq_err / self.n, "max_abs_error": self.max_abs,
                "rel_frobenius": math.sqrt(self.sq_err / self.sq_ref)}


def linear_weights(model: torch.nn.Module, layers: int | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights of the model's linear layers (output head excluded), or a seeded sample."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weights = {name: mod.weight.detach() for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and mod is not head}
    if layers is not None and layers < len(weights):
        weights = {k: weights[k] for k in sorted(random.Random(seed).sample(sorted(weights), layers))}
    return weights


def measure(weights: dict[str, torch.Tensor], scheme_list: list[Scheme]) -> list[dict]:
    """One table row per scheme, errors over every weight."""
    numel = sum(w.numel() for w in weights.values())
    rows = []
    for s in scheme_list:
        totals = ErrorTotals()
        for w in weights.values():
            totals.add(w, roundtrip(w, s))
        per_tensor_bits = sum(bits_per_param(s.bits, s.block, w.numel(), s.constant_bits, s.double) * w.numel()
                              for w in weights.values()) / numel
        rows.append({"scheme": s.name, "block_size": "tensor" if s.block is None else s.block,
                     "bits_per_param": per_tensor_bits, **totals.row()})
    return rows


def compare_with_bitsandbytes(weights: dict[str, torch.Tensor], block_sizes=BLOCK_SIZES) -> dict[str, float]:
    """Our implementations against bitsandbytes' where the scheme is the same, on the first weight:
    - the NF4 code table (max difference of the 16 values);
    - NF4 dequantized weights per block size (max difference);
    - our codebook quantizer given bitsandbytes' own FP4 table, against its FP4 (fraction of equal
      values: a value exactly halfway between two codes may round either way);
    - symmetric int8 with one block per row against `int8_vectorwise_quant` (fraction of equal codes).
    """
    import bitsandbytes.functional as F

    out = {"nf4_code_max_diff": float((nf4_code() - F.get_4bit_type("nf4", device="cpu")).abs().max())}
    w = next(iter(weights.values())).float()
    for block in block_sizes:
        ours, theirs = codebook_roundtrip(w, nf4_code(), block), bnb_roundtrip(w, "nf4", block)
        out[f"nf4_b{block}_max_diff"] = float((ours - theirs).abs().max())
    ours = codebook_roundtrip(w, F.get_4bit_type("fp4", device="cpu"), 64)
    out["fp4_table_b64_equal_fraction"] = float(torch.isclose(ours, bnb_roundtrip(w, "fp4", 64)).float().mean())
    rows = w.half()
    q_bnb = F.int8_vectorwise_quant(rows)[0]
    out["int8_rowwise_equal_fraction"] = float((absmax_int8(rows.float(), rows.shape[1])[0].view_as(q_bnb) == q_bnb)
                                               .float().mean())
    return out


# --- Output ----------------------------------------------------------------------------------------

def to_markdown(rows: list[dict]) -> str:
    head = "| scheme | block size | bits / param | MSE | max abs error | relative Frobenius error |\n"
    head += "|---|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {r['scheme']} | {r['block_size']} | {r['bits_per_param']:.3f} | {r['mse']:.3e} | "
        f"{r['max_abs_error']:.3e} | {r['rel_frobenius']:.4f} |\n" for r in rows)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        pts = [r for r in rows if r["scheme"] == scheme]
        ax.plot([r["bits_per_param"] for r in pts], [r["rel_frobenius"] for r in pts], "o-", label=scheme)
        for r in pts:
            ax.annotate(str(r["block_size"]), (r["bits_per_param"], r["rel_frobenius"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per parameter (block constants included)")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], checks: dict[str, float], out: Path, title: str) -> list[Path]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    csv, md, png = out / "quantization.csv", out / "quantization.md", out / "quantization.png"
    pd.DataFrame(rows).to_csv(csv, index=False)
    checks_md = "".join(f"| {k} | {v:.3g} |\n" for k, v in checks.items())
    md.write_text(f"# {title}\n\n{to_markdown(rows)}\n## Checks against bitsandbytes\n\n"
                  f"| check | value |\n|---|---:|\n{checks_md}")
    plot(rows, png, title)
    return [csv, md, png]


def log_to_mlflow(cfg, rows: list[dict], checks: dict[str, float], files: list[Path], params: dict) -> str:
    """One MLflow run in `tracking.experiment`: the table as metrics, the files as artifacts."""
    import mlflow

    from sweep.tracking import store

    experiment_id = store.open_experiment(cfg.tracking)
    tags = {"method": "quantization-lab", "model": cfg.model.name}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"quantization-{cfg.model.name}", tags=tags) as run:
        mlflow.log_params(params)
        metrics = {}
        for r in rows:
            key = f"{r['scheme']}_{r['block_size']}".replace(" ", "_").replace("+", "plus")
            key = key.replace("(", "").replace(")", "")
            metrics |= {f"{key}/{m}": r[m] for m in ("bits_per_param", "mse", "max_abs_error", "rel_frobenius")}
        mlflow.log_metrics(metrics | {f"check/{k}": v for k, v in checks.items()})
        for f in files:
            mlflow.log_artifact(str(f))
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labs.quantization",
        description="Quantize a model's linear weights with each scheme and report the errors.")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=tiny tracking.uri=sqlite:///x.db")
    parser.add_argument("--layers", default="28", help="linear layers to sample (seeded), or 'all' (default: 28)")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=list(BLOCK_SIZES))
    parser.add_argument("--out", default="reports/quantization", help="folder for the CSV, markdown and plot")
    parser.add_argument("--experiment", default="quantization-lab", help="MLflow experiment to log the run in")
    args = parser.parse_args(argv)
    if args.layers != "all" and not (args.layers.isdigit() and int(args.layers) > 0):
        parser.error(f"--layers={args.layers!r}: use a positive number or 'all'")

    from sweep.config import ConfigError, compose_config
    from sweep.pipeline.overrides import check_overrides
    from sweep.training.models import load_model_and_tokenizer

    cfg = compose_config([*args.overrides, f"tracking.experiment={args.experiment}"])
    try:
        check_overrides(args.overrides, cfg)
        model, _ = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    weights = linear_weights(model, None if args.layers == "all" else int(args.layers), cfg.seed)
    numel = sum(w.numel() for w in weights.values())
    print(f"[quantization] {cfg.model.name}: {len(weights)} linear layers, {numel:,} weights", flush=True)

    rows = measure(weights, schemes(args.block_sizes))
    checks = compare_with_bitsandbytes(weights, args.block_sizes)
    title = f"Weight quantization of {cfg.model.name} ({len(weights)} linear layers, {numel:,} weights)"
    files = write_outputs(rows, checks, Path(args.out), title)
    params = {"model": cfg.model.name, "layers": len(weights), "weights": numel,
              "block_sizes": ",".join(map(str, args.block_sizes)), "layer_names": ",".join(weights)[:6000]}
    run_id = log_to_mlflow(cfg, rows, checks, files, params)
    print(to_markdown(rows))
    print("checks against bitsandbytes: " + ", ".join(f"{k}={v:.3g}" for k, v in checks.items()))
    print(f"[quantization] wrote {', '.join(map(str, files))}; MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
