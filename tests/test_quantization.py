"""The quantization lab: our plain-torch schemes against bitsandbytes, and the arithmetic of bits."""

import pytest
import torch

import labs.quantization as q
from tests import forked
from tests.conftest import ROOT, clean_env

F = pytest.importorskip("bitsandbytes.functional")


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    return torch.randn(96, 200) * 0.02  # rows not a multiple of any block: padding is exercised


def test_nf4_code_is_bitsandbytes_table():
    assert torch.allclose(q.nf4_code(), F.get_4bit_type("nf4", device="cpu"), atol=2e-7)
    code = q.nf4_code()
    assert len(code) == 16 and code.min() == -1 and code.max() == 1 and (code == 0).sum() == 1


def test_fp4_e2m1_code():
    six = q.fp4_e2m1_code() * 6
    assert sorted(set(six.abs().tolist())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert len(six) == 15  # +0 and -0 are one value


@pytest.mark.parametrize("block", [64, 256, 4096])
def test_our_nf4_dequantizes_like_bitsandbytes(weight, block):
    ours = q.codebook_roundtrip(weight, q.nf4_code(), block)
    theirs = F.dequantize_4bit(*F.quantize_4bit(weight.reshape(-1).contiguous(), blocksize=block, quant_type="nf4"))
    assert torch.allclose(ours, theirs.view_as(weight), rtol=1e-6, atol=1e-8)


def test_codebook_quantizer_with_bitsandbytes_fp4_table_matches_its_fp4(weight):
    ours = q.codebook_roundtrip(weight, F.get_4bit_type("fp4", device="cpu"), 64)
    assert torch.allclose(ours, q.bnb_roundtrip(weight, "fp4", 64), rtol=1e-6, atol=1e-8)


def test_rowwise_absmax_int8_is_bitsandbytes_vectorwise_int8(weight):
    rows = weight.half()
    ours = q.absmax_int8(rows.float(), rows.shape[1])[0].view(rows.shape).int()
    theirs = F.int8_vectorwise_quant(rows)[0].int()
    # bitsandbytes multiplies by 127 / absmax in half precision: a value within rounding of a
    # half-step may land one code away.
    assert (ours - theirs).abs().max() <= 1 and (ours == theirs).float().mean() > 0.995


def test_double_quantization_roundtrip_is_close_to_plain_nf4(weight):
    plain = q.codebook_roundtrip(weight, q.nf4_code(), 64)
    double = q.codebook_roundtrip(weight, q.nf4_code(), 64, double=True)
    assert (double - weight).norm() / (plain - weight).norm() < 1.01
    theirs = q.bnb_roundtrip(weight, "nf4", 64, double=True)
    assert (theirs - weight).norm() / (double - weight).norm() == pytest.approx(1, abs=0.01)


@pytest.mark.parametrize("scheme", ["int8 absmax", "int8 zero-point", "nf4", "fp4 (e2m1)"])
def test_roundtrip_error_shrinks_with_smaller_blocks(scheme):
    # Real weights vary in scale across a row; smaller blocks follow that and lose less.
    torch.manual_seed(1)
    w = torch.randn(64, 512) * torch.logspace(-2, 0, 512)[None, :]
    blocks = [4096, 256, 64] if scheme in ("nf4", "fp4 (e2m1)") else [None, 4096, 256, 64]
    errors = [float((q.roundtrip(w, q.Scheme(scheme, b, 8)) - w).norm()) for b in blocks]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.8 * errors[0], errors


def test_zero_point_beats_absmax_on_skewed_weights():
    w = torch.rand(4096) * 0.1 + 0.05  # all positive: absmax wastes the negative half of its codes
    sym, asym = q.absmax_int8_roundtrip(w, None), q.zeropoint_int8_roundtrip(w, None)
    assert (asym - w).norm() < (sym - w).norm() / 1.5


def test_bits_per_param_arithmetic():
    assert q.bits_per_param(4, 64, 10**6) == 4.5
    assert q.bits_per_param(4, 64, 10**6, double=True) == pytest.approx(4.127, abs=5e-4)  # QLoRA's 0.127
    assert q.bits_per_param(4, 64, 10**6, double=True) - 4 == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert q.bits_per_param(4, 256, 10**6, double=True) == pytest.approx(4 + 8 / 256 + 32 / 256**2)
    assert q.bits_per_param(8, None, 1000) == 8 + 32 / 1000
    assert q.bits_per_param(8, 64, 10**6, constant_bits=40) == 8 + 40 / 64


@pytest.mark.e2e
def test_lab_writes_table_plot_and_mlflow_run(tmp_path, tracking):
    import mlflow
    import pandas as pd

    out = tmp_path / "lab"
    p = forked.run(["-m", "labs.quantization", "model=tiny", *tracking, "--layers", "all", "--out", str(out)], ROOT,
                   clean_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    table = pd.read_csv(out / "quantization.csv")
    assert len(table) == len(q.schemes()) and set(table.columns) == {
        "scheme", "block_size", "bits_per_param", "mse", "max_abs_error", "rel_frobenius"}
    dq = table[(table.scheme == "nf4 + double quant") & (table.block_size == "64")].iloc[0]
    assert dq.bits_per_param == pytest.approx(4.127, abs=1e-3)
    assert (out / "quantization.png").stat().st_size > 10_000
    assert "| nf4 | 64 | 4.500 |" in (out / "quantization.md").read_text()
    mlflow.set_tracking_uri(tracking[0].split("=", 1)[1])
    [run] = mlflow.search_runs(experiment_names=["quantization-lab"]).to_dict("records")
    assert run["metrics.check/nf4_b64_max_diff"] < 1e-6 and run["params.layers"] == "14"
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert files == {"quantization.csv", "quantization.md", "quantization.png"}


def test_lab_rejects_an_unknown_model_option():
    r = forked.run(["-m", "labs.quantization", "model=tny"], ROOT, clean_env(), timeout=300)
    assert r.returncode != 0 and "tny" in (r.stdout + r.stderr)

