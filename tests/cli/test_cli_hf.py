"""``sharpscope probe --model hf:FOLDER --data text:PATH --loss token-ce`` agrees with the library (extra hf)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope import HessianOperator, Objective, lanczos
from sharpscope.data.text import text_file
from sharpscope.losses import token_cross_entropy

transformers = pytest.importorskip("transformers")

SCRIPT = Path(sys.executable).parent / "sharpscope"


def test_probe_a_saved_hugging_face_model_on_byte_windows(tmp_path: Path) -> None:
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "tiny")
    text = tmp_path / "text.txt"
    text.write_bytes(Path(textwrap.__file__).read_bytes()[:1000])
    proc = subprocess.run([str(SCRIPT), "probe", str(tmp_path / "tiny" / "model.safetensors"), "--model",
                           f"hf:{tmp_path / 'tiny'}", "--data", f"text:{text}", "--n", "6", "--loss", "token-ce",
                           "--json", "--dtype", "float64", "--tol", "1e-9"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["settings"]["probe_examples"] == 6 and out["settings"]["reduction_check"] == "mean"
    windows = text_file(text, n=6)
    x, y = windows.x, windows.y
    reference = model.double().eval()
    reference.config._attn_implementation = "eager"
    ref = lanczos(HessianOperator(Objective(reference, token_cross_entropy, (x, y))), k=1, tol=1e-10, seed=3)
    np.testing.assert_allclose(out["eigenvalues"], ref.eigenvalues.numpy(), rtol=1e-6)


def test_probe_bf16_weights_natively_reports_the_measured_product_error(tmp_path: Path) -> None:
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=8, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "tiny")
    text = tmp_path / "text.txt"
    text.write_bytes(Path(textwrap.__file__).read_bytes()[:1000])
    proc = subprocess.run([str(SCRIPT), "probe", str(tmp_path / "tiny" / "model.safetensors"), "--model",
                           f"hf:{tmp_path / 'tiny'}", "--data", f"text:{text}", "--n", "4",
                           "--json", "--dtype", "bfloat16", "--weight-precision", "native", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    record = settings["product_precision"]
    assert settings["hvp_mode"] == "fd" and settings["param_dtype"] == "bfloat16" and settings["upcast"] is False
    assert record["weights"] == "bfloat16" and 0 < record["deviation"] < 0.5 and record["fd_step"] > 0
    assert settings["attention"]["kernel"] == "math SDPA backend" and settings["loss_fn"] == "token-ce"  # the default for hf:
