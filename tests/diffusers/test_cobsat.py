"""The CoBSAT harness: the benchmark's samples, questions and parsing against hand-written expectations from the
benchmark's own files, and `python -m thinkdiff_core.eval cobsat` end to end on a synthetic CoBSAT-layout
fixture with tiny random models (numbers meaningless, and labelled so), including resumption."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from thinkdiff_core.eval import cobsat


# --- the benchmark's definition ------------------------------------------------------------------------------

def test_permutations_match_the_benchmarks_shipped_file():
    """Rows copied by hand from CoBSAT's load_datasets/prompts_list_default.json (samples 0, 1 and 999)."""
    perms = cobsat.permutations()
    assert len(perms) == 1000
    assert perms[0] == {"x_list": [8, 7, 5, 9, 2, 3, 6, 1, 4, 0], "theta_list": [7, 6, 3, 4, 1, 0, 2, 5, 9, 8]}
    assert perms[1] == {"x_list": [7, 4, 3, 6, 2, 1, 0, 8, 5, 9], "theta_list": [3, 4, 8, 1, 9, 2, 7, 6, 5, 0]}
    assert perms[999] == {"x_list": [2, 0, 5, 7, 6, 9, 3, 8, 4, 1], "theta_list": [1, 6, 7, 3, 2, 9, 8, 4, 0, 5]}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> str:
    return cobsat.write_fixture(str(tmp_path_factory.mktemp("cobsat")), size=16)


def test_samples_follow_load_dataset(fixture_dir):
    # task 1 (Color-I: text = colour, latent = object), 2-shot, sample 0: theta = object[theta_list[3]] = object[4]
    s = cobsat.build_samples(fixture_dir, 1, 2, max_samples=1)[0]
    assert s.theta == "car" and s.words == ["blue", "brown", "orange"]
    assert s.text_inputs == ["blue: ", "brown: ", "orange: "]
    assert s.save_path == "0_car_blue_brown_orange"
    d = os.path.join(fixture_dir, "datasets")
    assert s.images == [os.path.join(d, "color_car", "blue_car.jpg"), os.path.join(d, "color_car", "brown_car.jpg")]
    assert s.truth == {"detail": "orange", "obj": "car"} and cobsat.true_labels(s) == {"detail": 6, "obj": 5}
    # task 6 (Style-II: text = object, latent = style), 4-shot, sample 0: objects 8 7 5 9 2, style[perm_theta[5]]
    s = cobsat.build_samples(fixture_dir, 6, 4, max_samples=1)[0]
    assert s.theta == "watercolor" and s.words == ["bag", "ball", "box", "apple", "cup"] and len(s.images) == 4
    assert s.images[0] == os.path.join(d, "style_bag", "watercolor_bag.jpg")
    assert s.truth == {"detail": "watercolor", "obj": "cup"}
    # display names: "3d" is shown as "wireframe", "park" as "amusement park" (configs.item2word)
    words = {w for t in (3, 5) for x in cobsat.build_samples(fixture_dir, t, 4) for w in x.words}
    assert {"wireframe", "amusement park"} <= words and not {"3d", "park"} & words
    assert len(cobsat.build_samples(fixture_dir, 10, 2)) == 1000


def test_questions_are_the_benchmarks():
    q = cobsat.questions(cobsat.TASKS[1])
    assert q["detail"] == ("What is the color (of the main object) in this image? Answer from the following options:  "
                           "(1)yellow (2)white (3)red (4)purple (5)pink (6)orange (7)green (8)brown (9)blue (10)black. "
                           "Answer the number only and do not include any other texts (e.g., 1).")
    assert q["obj"] == ("What is the main object in this image? Answer from the following options:  (1)leaf (2)hat "
                        "(3)cup (4)chair (5)car (6)box (7)book (8)ball (9)bag (10)apple. Answer the number only and "
                        "do not include any other texts (e.g., 1).")
    q = cobsat.questions(cobsat.TASKS[4])
    assert q["detail"].startswith("What is the background (of the main object) in this image?")
    assert "(5)amusement park" in q["detail"] and "(1)zebra" in q["obj"]
    assert "(9)wireframe" in cobsat.questions(cobsat.TASKS[5])["detail"]


@pytest.mark.parametrize("reply, expected", [
    ("3", 3), ("10", 10), ("(3)", 3), ("The answer is 7.", 7), ("Option 2: white", 2), (" 1\n", 1),
    ("3 or 4", -1),         # digits concatenated: 34, out of range
    ("(10)black", 10), ("11", -1), ("0", -1), ("none of them", -1), ("", -1), ("007", 7),
])
def test_reply_parsing_is_the_benchmarks_rule(reply, expected):
    assert cobsat.parse_answer(reply) == expected


def test_a_sample_is_correct_only_if_both_answers_are(fixture_dir):
    s = cobsat.build_samples(fixture_dir, 1, 2, max_samples=1)[0]   # truth: orange (6), car (5)
    assert cobsat.score(s, {"detail": "6", "obj": "5"})["correct"] is True
    r = cobsat.score(s, {"detail": "6", "obj": "The main object is option 5 or 6"})
    assert r["check_detail"] and not r["check_obj"] and r["answer_obj"] == -1 and r["correct"] is False
    assert cobsat.score(s, {"detail": "(2)white", "obj": "5"})["correct"] is False


def test_a_folder_without_the_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="datasets/color_car/white_car.jpg"):
        cobsat.build_samples(str(tmp_path), 1, 2)


# --- the harness end to end ---------------------------------------------------------------------------------

QUICK = ["--tasks", "1 8", "--max-samples", "1", "--steps", "1", "--size", "16", "--vlm-new-tokens", "8",
         "--rewriter-max-new-tokens", "8", "--judge-max-new-tokens", "4", "--device", "cpu"]


def test_cobsat_command_end_to_end_and_resume(fixture_dir, tiny_flux_dir, tiny_vlm_dir, aligner_file, tmp_path):
    from thinkdiff_core.eval.__main__ import main
    out = tmp_path / "out"
    args = ["cobsat", "--cobsat", fixture_dir, "--flux", tiny_flux_dir, "--vlm", tiny_vlm_dir,
            "--aligner", aligner_file, "--out", str(out), *QUICK]
    r = subprocess.run([sys.executable, "-m", "thinkdiff_core.eval", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    # labelled: synthetic data, partial run, another judge than the benchmark's
    assert any(ln.startswith("! SYNTHETIC FIXTURE") and "meaningless" in ln for ln in lines), \
        "the table does not say that the fixture's numbers are meaningless:\n" + r.stdout
    assert any(ln.startswith("! PARTIAL RUN: 1 of 1000 samples per task") for ln in lines), \
        "the table does not say that the run is partial:\n" + r.stdout
    # the paper's table shape: a block per shot, methods as rows, the tasks in the paper's order plus Avg
    for shot in (2, 4):
        i = lines.index(next(ln for ln in lines if ln.startswith(f"CoBSAT {shot}-shot accuracy")))
        assert lines[i + 1].split() == ["Method", "C-I", "A-II", "Avg"]
        assert lines[i + 2].startswith("ThinkDiff-LVLM") and len(lines[i + 2].split()) == 1 + 3
        assert lines[i + 3].startswith("Text rewriter") and len(lines[i + 3].split()) == 2 + 3
        assert lines[i + 4].startswith("(paper) ThinkDiff-LVLM")
    assert "generated 8 image(s) (0 already there), judged 8" in r.stdout
    res = json.loads((out / "results.json").read_text())
    printed = json.loads(lines[-1])   # the table as JSON, after it
    assert printed["accuracy"] == res["accuracy"] and printed["labels"] == res["labels"]
    assert set(res["accuracy"]) == {"thinkdiff", "text_rewriter"}
    for m in res["accuracy"]:
        assert set(res["accuracy"][m]) == {"2", "4"}
        for row in res["accuracy"][m].values():
            assert set(row) == {"C-I", "A-II", "mean"} and all(0 <= v <= 1 for v in row.values())
    # the files are in the benchmark's results layout; the judge's records follow the benchmark's parsing
    img = out / "exps" / "thinkdiff_image" / "shot_2" / "default" / "task_1" / "0_car_blue_brown_orange.jpg"
    assert img.is_file() and json.loads(img.with_suffix(".json").read_text())["description"]
    records = list((out / "evals").rglob("*.json"))
    assert len(records) == 8
    for rec in map(lambda p: json.loads(p.read_text()), records):
        assert rec["answer_detail"] == cobsat.parse_answer(rec["response_detail"])
        assert rec["answer_obj"] == cobsat.parse_answer(rec["response_obj"])
        assert rec["correct"] == (rec["check_detail"] and rec["check_obj"])
    # resumption: a second run loads no model, generates and judges nothing, and leaves the files alone
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "results.json"}
    assert main(args) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["stats"] == {"generated": 0, "skipped_generation": 8, "judged": 0, "skipped_judging": 8}
    assert res2["accuracy"] == res["accuracy"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a deleted image is made again (and judged again), nothing else
    img.unlink()
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["stats"]["generated"] == 1


def test_missing_models_are_clear_errors(fixture_dir, tiny_vlm_dir, aligner_file, tmp_path, capsys):
    from thinkdiff_core.eval.__main__ import main
    rc = main(["cobsat", "--cobsat", fixture_dir, "--flux", str(tmp_path), "--vlm", tiny_vlm_dir,
               "--aligner", aligner_file, "--out", str(tmp_path / "o"), *QUICK])
    assert rc == 2 and "is not a diffusers FLUX folder (no model_index.json)" in capsys.readouterr().err
