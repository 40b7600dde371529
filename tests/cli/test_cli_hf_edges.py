"""CLI edges of Hugging Face models: ``hf:`` implies the token loss, hints name ``hf:`` and ``--loss token-ce``,
``landscape`` takes ``--precision`` and ``text:`` data like ``probe``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from sharpscope_cli._common import default_loss, fit_hint
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.data.text import text_file
from sharpscope.losses import token_cross_entropy

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_default_loss_and_the_hints() -> None:
    assert default_loss(None, "hf:gpt2") == "token-ce" and default_loss(None, None) == "ce"
    assert default_loss(None, "mymodels:make") == "ce" and default_loss("mse", "hf:gpt2") == "mse"
    assert "--data text:PATH" in str(fit_hint("hf:x", "mnist1d", "token-ce"))
    assert "--loss token-ce" in str(fit_hint("hf:x", "text:a.txt", "ce"))
    assert "--loss token-ce" in str(fit_hint(None, "text:a.txt", "ce"))
    assert fit_hint(None, "mnist1d", "ce") is None and fit_hint("hf:x", "text:a.txt", "token-ce") is None


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf")
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder / "tiny")
    text = folder / "text.txt"
    text.write_bytes(Path(textwrap.__file__).read_bytes()[:1000])
    return folder / "tiny", text, model


def invoke(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and sharpscope's own stderr lines (transformers draws a weight-loading bar there)."""
    result = runner.invoke(app, list(args))
    ours = [line for line in result.stderr.splitlines() if line and not line.startswith("Loading weights")]
    return result.exit_code, result.stdout, "".join(line + "\n" for line in ours)


def test_hf_implies_the_token_loss(tiny_lm: tuple[Path, Path, torch.nn.Module]) -> None:
    folder, text, _ = tiny_lm
    base = ["probe", str(folder / "model.safetensors"), "--model", f"hf:{folder}", "--data", f"text:{text}",
            "--n", "4", "--json", "--dtype", "float64", "--device", "cpu",
            "--hvp-mode", "rev-rev", "--no-cache-graphs"]  # fixed products: equal results to the last bit
    code, implied, _ = invoke(*base)
    assert code == 0
    code, explicit, _ = invoke(*base, "--loss", "token-ce")
    assert code == 0
    implied_out, explicit_out = json.loads(implied), json.loads(explicit)
    assert implied_out["settings"]["loss_fn"] == "token-ce" and implied_out["eigenvalues"] == explicit_out["eigenvalues"]


def test_hints_name_hf_and_the_token_loss(tiny_lm: tuple[Path, Path, torch.nn.Module]) -> None:
    folder, text, _ = tiny_lm
    ckpt = str(folder / "model.safetensors")
    code, _, err = invoke("probe", ckpt, "--model", f"hf:{folder}", "--data", f"text:{text}", "--n", "4", "--loss", "ce")
    assert code == 1 and err.count("\n") == 1 and err.rstrip().endswith("use --loss token-ce (the default with --model hf:)")
    code, _, err = invoke("probe", ckpt, "--data", f"text:{text}", "--n", "4")
    assert code == 1 and err.count("\n") == 1 and f"--model hf:{folder} (and --data text:PATH)" in err
    code, _, err = invoke("probe", ckpt, "--model", f"hf:{folder}", "--data", "mnist1d", "--n", "4")
    assert code == 1 and err.count("\n") == 1 and "reads token ids: give --data text:PATH" in err


def test_landscape_takes_text_data_and_precision(tiny_lm: tuple[Path, Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, text, model = tiny_lm
    base = ["landscape", str(folder / "model.safetensors"), "--model", f"hf:{folder}", "--data", f"text:{text}",
            "--n", "4", "--dims", "1", "--alphas", "-1:1:3", "--no-figures", "--json", "--device", "cpu",
            "--dtype", "float64", "--method", "loop"]  # a fixed evaluation method: not chosen by timing
    code, out, err = invoke(*base, "--out", str(tmp_path / "a"), "--precision", "tf32")
    assert code == 0, err
    record = json.loads(out)
    assert record["settings"]["loss_fn"] == "token-ce" and record["settings"]["precision"] == "tf32"
    assert err.startswith("note: precision tf32 changes nothing on cpu")
    windows = text_file(text, n=4)
    reference = model.double().eval()
    with torch.no_grad():
        expected = float(token_cross_entropy(reference(windows.x).logits, windows.y))
    assert record["center_loss"] == pytest.approx(expected, rel=1e-10)
    code, _, err = invoke(*base, "--out", str(tmp_path / "b"), "--precision", "bf16")
    assert code == 1 and err.count("\n") == 1 and "precision='bf16' autocasts float32 products" in err
    assert not (tmp_path / "b").exists()  # refused before any work
