"""Official .pth release format, our safetensors format, the CLI, and every bad-file case."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from thinkdiff_core.aligner import Aligner
from thinkdiff_core.checkpoint import AlignerFileError, convert, load_aligner, save_aligner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def official_checkpoint(path, in_dim=3584, with_optimizer=True, seed=0):
    """A file laid out as the official runner saves it (runner_clip_t5.py:263-288)."""
    torch.manual_seed(seed)
    aligner = Aligner(in_dim)
    obj = {"model": aligner.state_dict(), "epoch": 4, "config": {"run": {"lr": 1e-4}, "model": {"arch": "x"}}}
    if with_optimizer:
        opt = torch.optim.AdamW(aligner.parameters(), lr=1e-4)
        aligner(torch.randn(2, in_dim)).sum().backward()
        opt.step()
        obj["optimizer"] = opt.state_dict()
        obj["scaler"] = torch.amp.GradScaler("cpu").state_dict()
    torch.save(obj, path)
    return aligner


@pytest.fixture(scope="module")
def official_lvlm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "thinkdiff_lvlm.pth"
    aligner = official_checkpoint(path)
    return path, aligner


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "thinkdiff_core", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_official_format_with_optimizer_loads_strictly(official_lvlm):
    path, ref = official_lvlm
    aligner, info = load_aligner(path)
    assert (info.format, info.variant, info.in_dim, info.out_dim) == ("official-pth", "lvlm", 3584, 4096)
    assert info.num_params == 31_469_568 and info.has_optimizer
    for k, v in ref.state_dict().items():
        assert torch.equal(aligner.state_dict()[k], v), k


def test_official_format_without_optimizer_and_clip_variant(tmp_path):
    official_checkpoint(tmp_path / "a.pth", in_dim=1408, with_optimizer=False)
    aligner, info = load_aligner(tmp_path / "a.pth", dtype=torch.bfloat16)
    assert (info.variant, info.in_dim, info.num_params, info.has_optimizer) == ("clip", 1408, 22_556_672, False)
    assert aligner.mm_projector[0].weight.dtype == torch.bfloat16


def test_cli_info_on_official_file(official_lvlm):
    r = run_cli("info", official_lvlm[0])
    assert r.returncode == 0, r.stderr
    assert "variant:     lvlm" in r.stdout
    assert "3584 -> 4096 -> 4096" in r.stdout
    assert "31,469,568" in r.stdout
    assert "float32" in r.stdout
    j = json.loads(run_cli("info", official_lvlm[0], "--json").stdout)
    assert j["num_params"] == 31_469_568 and j["variant"] == "lvlm"


def test_cli_convert_round_trip(official_lvlm, tmp_path):
    src, ref = official_lvlm
    dst = tmp_path / "thinkdiff_lvlm.safetensors"
    r = run_cli("convert", src, dst)
    assert r.returncode == 0, r.stderr
    aligner, info = load_aligner(dst)
    assert info.format == "safetensors" and info.variant == "lvlm"
    assert info.metadata["format"] == "thinkdiff-aligner" and info.metadata["format_version"] == "1"
    assert info.metadata["source_vlm"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert info.metadata["t5"] == "google/flan-t5-xxl"
    assert info.metadata["converted_from"] == "thinkdiff_lvlm.pth"
    for k, v in ref.state_dict().items():
        assert torch.equal(aligner.state_dict()[k], v), k
    x = torch.randn(1, 5, 3584)
    torch.testing.assert_close(aligner(x), ref.eval()(x))
    r = run_cli("info", dst)
    assert r.returncode == 0 and "source_vlm:  Qwen/Qwen2-VL-7B-Instruct" in r.stdout


def test_convert_to_bf16_and_custom_metadata(official_lvlm, tmp_path):
    info = convert(official_lvlm[0], tmp_path / "x.safetensors", dtype=torch.bfloat16, source_vlm="my/vlm")
    assert info.dtype == "bfloat16" and info.metadata["source_vlm"] == "my/vlm"
    assert os.path.getsize(tmp_path / "x.safetensors") < 70e6


def test_our_format_round_trip_keeps_metadata(tmp_path):
    a = Aligner(64, 4096, 256)
    save_aligner(a, tmp_path / "tiny.safetensors", variant="lvlm", source_vlm="tiny-qwen2vl", t5="tiny-t5",
                 extra={"steps": 10})
    b, info = load_aligner(tmp_path / "tiny.safetensors")
    assert (info.in_dim, info.hidden_dim, info.out_dim) == (64, 256, 4096)
    assert info.metadata["steps"] == "10" and info.metadata["source_vlm"] == "tiny-qwen2vl"
    assert not os.path.exists(tmp_path / "tiny.safetensors.tmp")
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)


# ---- bad files: each one gets a message that names the file and what was expected ----

def bad_case(tmp_path, name, official_lvlm):
    p = tmp_path / name
    good = official_lvlm[0].read_bytes()
    sd = Aligner(8, 16, 16).state_dict()
    if name == "missing.pth":
        return p, "file not found"
    if name == "empty.pth":
        p.write_bytes(b"")
        return p, "file is empty"
    if name == "truncated.pth":
        p.write_bytes(good[: len(good) // 2])
        return p, "not a PyTorch checkpoint"
    if name == "text.pth":
        p.write_text("this is not a checkpoint\n")
        return p, "not a PyTorch checkpoint"
    if name == "truncated.safetensors":
        save_file(sd, tmp_path / "ok.safetensors")
        data = (tmp_path / "ok.safetensors").read_bytes()
        p.write_bytes(data[: len(data) - 100])
        return p, "not a readable safetensors file"
    if name == "flux.safetensors":   # a foreign model in the wrong folder
        save_file({"img_in.weight": torch.zeros(8, 4), "double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(2)}, p)
        return p, "not a ThinkDiff aligner: expected exactly the tensors"
    if name == "missing_key.pth":
        sd.pop("mm_projector.3.weight")
        torch.save({"model": sd}, p)
        return p, "missing mm_projector.3.weight"
    if name == "extra_key.pth":
        sd["module.extra"] = torch.zeros(1)
        torch.save({"model": sd}, p)
        return p, "unexpected module.extra"
    if name == "bad_shape.pth":
        sd["mm_projector.2.bias"] = torch.zeros(15)
        torch.save({"model": sd}, p)
        return p, r"mm_projector.2.bias has shape \(15,\), expected \(16,\)"
    if name == "pickled_object.pth":   # arbitrary pickled objects are refused, never executed
        torch.save({"model": sd, "obj": pickle.PickleError("x")}, p)
        return p, r"refused: besides tensors the file holds a pickled Python object \(.*PickleError\).*could run code"
    if name == "list.pth":
        torch.save([1, 2, 3], p)
        return p, 'expected {"model": state_dict'
    raise AssertionError(name)


BAD = ["missing.pth", "empty.pth", "truncated.pth", "text.pth", "truncated.safetensors", "flux.safetensors",
       "missing_key.pth", "extra_key.pth", "bad_shape.pth", "pickled_object.pth", "list.pth"]


@pytest.mark.parametrize("name", BAD)
def test_bad_files_give_a_clear_error(tmp_path, name, official_lvlm):
    path, message = bad_case(tmp_path, name, official_lvlm)
    with pytest.raises(AlignerFileError, match=message) as exc:
        load_aligner(path)
    assert str(path) in str(exc.value)


def test_cli_reports_bad_file_without_traceback(tmp_path, official_lvlm):
    path, _ = bad_case(tmp_path, "truncated.pth", official_lvlm)
    r = run_cli("info", path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {path}:") and "Traceback" not in r.stderr


class WouldRunCode:
    """Unpickling this would create a file (any callable could be here instead)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "written_by_unpickling"
    p = tmp_path / "evil.pth"
    torch.save({"model": Aligner(8, 16, 16).state_dict(), "x": WouldRunCode(str(marker))}, p)
    with pytest.raises(AlignerFileError) as exc:
        load_aligner(p)
    msg = str(exc.value)
    assert "refused" in msg and "io.open" in msg and "could run code" in msg, msg
    assert "weights_only` set to `False`" not in msg and "weights_only=False" not in msg   # no advice to turn it off
    assert not marker.exists()


def test_legacy_torch_save_format_loads(tmp_path):
    a = Aligner(8, 16, 16)
    p = tmp_path / "legacy.pth"
    torch.save({"model": a.state_dict()}, p, _use_new_zipfile_serialization=False)
    loaded, info = load_aligner(p)
    assert info.format == "official-pth" and info.in_dim == 8
    torch.testing.assert_close(loaded.state_dict(), a.state_dict())


def test_peek_dims_reads_the_sizes_without_building_the_aligner(tmp_path, official_lvlm):
    """peek_dims (the check VLM Encode Multimodal runs before generating) gives (in_dim, out_dim) for every
    readable format, and the same errors as read_checkpoint for broken files."""
    from thinkdiff_core.checkpoint import peek_dims
    assert peek_dims(official_lvlm[0]) == (3584, 4096)
    save_aligner(Aligner(64, 128, 16), tmp_path / "a.safetensors")
    assert peek_dims(tmp_path / "a.safetensors") == (64, 128)
    torch.save({"model": Aligner(1408, 4096, 16).state_dict()}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False)
    assert peek_dims(tmp_path / "legacy.pth") == (1408, 4096)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(AlignerFileError, match="file is empty"):
        peek_dims(tmp_path / "empty.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(AlignerFileError, match="not a readable safetensors file"):
        peek_dims(tmp_path / "bad.safetensors")
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(AlignerFileError, match="not a ThinkDiff aligner"):
        peek_dims(tmp_path / "other.safetensors")
    with pytest.raises(AlignerFileError, match="file not found"):
        peek_dims(tmp_path / "missing.pth")
