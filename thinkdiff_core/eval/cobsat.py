"""CoBSAT (Zeng et al., COLM 2024; github UW-Madison-Lee-Lab/CoBSAT) as data: the 10 text-to-image in-context
tasks, the fixed samples, the judge's two questions and its answer parsing (docs/method.md §6; the benchmark's
configs.py, load_dataset.py, helper.py, evaluation_icl.py). Plain Python: no torch, no models.

Layout of a CoBSAT folder (the benchmark repository with ``datasets.zip`` unpacked into it, or the unpacked
``datasets`` folder alone): ``datasets/<detail>_<obj>/<detail>_<obj>.jpg`` (e.g. ``color_car/white_car.jpg``),
and optionally ``load_datasets/prompts_list_default.json`` (the fixed permutations; regenerated identically
from seed 123 when absent).
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass

# configs.py: item lists (raw names; item2word gives the names the text inputs and questions show)
ITEMS = {
    "color": ["yellow", "white", "red", "purple", "pink", "orange", "green", "brown", "blue", "black"],
    "object": ["leaf", "hat", "cup", "chair", "car", "box", "book", "ball", "bag", "apple"],
    "animal": ["zebra", "tiger", "sheep", "pig", "monkey", "lion", "dog", "cow", "cat", "bird"],
    "style": ["watercolor", "sketch", "pixel", "origami", "lego", "icon", "graffiti", "futuristic", "3d", "old"],
    "action": ["swim", "sleep", "sing", "run", "read", "fly", "eat", "drink", "cry", "angry"],
    "background": ["beach", "desert", "glacier", "volcano", "park", "gym", "waterfall", "space", "cave", "seafloor"],
    "texture": ["wood", "wicker", "sequined", "plastic", "paper", "metal", "leather", "lace", "denim", "ceramic"],
}
ITEM2WORD = {"3d": "wireframe", "park": "amusement park"}
WORD2ITEM = {v: k for k, v in ITEM2WORD.items()}


@dataclass(frozen=True)
class Task:
    id: int
    name: str        # "Color-I"
    short: str       # the paper's column head, "C-I"
    task_type: str   # "color_object": <detail>_<obj>, also the image folders' prefix and the questions' spaces
    x_space: str     # what the text inputs name
    theta_space: str  # the latent shared by the images, to be inferred

    @property
    def detail_space(self) -> str:
        return self.task_type.split("_")[0]

    @property
    def obj_space(self) -> str:
        return self.task_type.split("_")[1]

    @property
    def x_is_obj(self) -> bool:
        return self.x_space in ("object", "animal")


TASKS = {t.id: t for t in (
    Task(1, "Color-I", "C-I", "color_object", "color", "object"),
    Task(2, "Color-II", "C-II", "color_object", "object", "color"),
    Task(3, "Background-I", "B-I", "background_animal", "background", "animal"),
    Task(4, "Background-II", "B-II", "background_animal", "animal", "background"),
    Task(5, "Style-I", "S-I", "style_object", "style", "object"),
    Task(6, "Style-II", "S-II", "style_object", "object", "style"),
    Task(7, "Action-I", "A-I", "action_animal", "action", "animal"),
    Task(8, "Action-II", "A-II", "action_animal", "animal", "action"),
    Task(9, "Texture-I", "T-I", "texture_object", "texture", "object"),
    Task(10, "Texture-II", "T-II", "texture_object", "object", "texture"),
)}
# the column order of the ThinkDiff paper's tables 1 and 2 (docs/method.md §6.4)
PAPER_ORDER = (1, 3, 5, 7, 9, 2, 4, 6, 8, 10)
NUM_SAMPLES = 1000   # configs.py num_prompt_dict["default"]
PERMUTATION_SEED = 123
SHOTS = (2, 4)

# the paper's ThinkDiff-LVLM rows (docs/method.md §6.4), in PAPER_ORDER, for reference in the output
PAPER_THINKDIFF = {
    2: (0.622, 0.349, 0.237, 0.459, 0.290, 0.511, 0.534, 0.340, 0.534, 0.292),
    4: (0.638, 0.362, 0.254, 0.434, 0.317, 0.610, 0.590, 0.432, 0.664, 0.332),
}


def word(item: str) -> str:
    return ITEM2WORD.get(item, item)


def permutations(n: int = NUM_SAMPLES, seed: int = PERMUTATION_SEED, length: int = 10) -> list[dict]:
    """load_datasets/gen_prompts.py for data_mode 'default': one random.seed(123), then per sample a shuffle of
    the x indices and one of the theta indices (cumulative). Identical to the shipped prompts_list_default.json."""
    rng = random.Random(seed)
    x, theta, out = list(range(length)), list(range(length)), []
    for _ in range(n):
        rng.shuffle(x)
        rng.shuffle(theta)
        out.append({"x_list": x.copy(), "theta_list": theta.copy()})
    return out


def load_permutations(root: str) -> list[dict]:
    """The benchmark's fixed permutation file if the folder has it, else the same list regenerated."""
    for path in (os.path.join(root, "load_datasets", "prompts_list_default.json"),
                 os.path.join(os.path.dirname(os.path.abspath(root)), "load_datasets", "prompts_list_default.json")):
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return permutations()


def datasets_dir(root: str) -> str:
    """``root/datasets`` (the benchmark repository) or ``root`` itself (the unpacked datasets folder)."""
    for d in (os.path.join(root, "datasets"), root):
        if os.path.isdir(d) and any(n.startswith(tuple(f"{t}_" for t in ("color", "background", "style", "action",
                                                                          "texture"))) for n in os.listdir(d)):
            return d
    raise FileNotFoundError(
        f"{root} is not a CoBSAT folder: expected datasets/<detail>_<obj>/<detail>_<obj>.jpg (e.g. "
        f"datasets/color_car/white_car.jpg). Get the images with the benchmark's own instructions: download "
        f"datasets.zip from the Hugging Face dataset yzeng58/CoBSAT and unzip it into the CoBSAT folder")


def image_path(datasets: str, task: Task, x_item: str, theta_item: str) -> str:
    """helper.find_image: datasets/<detail space>_<obj item>/<detail item>_<obj item>.jpg (raw item names)."""
    obj, detail = (x_item, theta_item) if task.x_is_obj else (theta_item, x_item)
    return os.path.join(datasets, f"{task.detail_space}_{obj}", f"{detail}_{obj}.jpg")


@dataclass
class Sample:
    task: Task
    shot: int
    index: int                 # i in 0..999
    words: list[str]           # display names x_0 .. x_shot (the last is the query)
    images: list[str]          # paths of the shot demo images
    theta: str                 # raw latent item
    save_path: str             # the benchmark's output name "{i}_{theta}_{x_0_..._x_shot}" (no extension)
    truth: dict                # {"detail": raw item, "obj": raw item} of the image to generate

    @property
    def text_inputs(self) -> list[str]:
        """The benchmark's text inputs, "x: "."""
        return [f"{w}: " for w in self.words]


def build_samples(root: str, task_id: int, shot: int, max_samples: int | None = None) -> list[Sample]:
    """load_dataset.load_dataset(shot, 'default', task_id): theta = theta_list[perm_theta[shot + 1]], demos
    d = 0..shot-1 show x_d = x_list[perm_x[d]] with the image of (x_d, theta), the query is x_shot."""
    task, datasets = TASKS[task_id], datasets_dir(root)
    x_list, theta_list = ITEMS[task.x_space], ITEMS[task.theta_space]
    out = []
    for i, perm in enumerate(load_permutations(root)[:NUM_SAMPLES if max_samples is None else max_samples]):
        theta = theta_list[perm["theta_list"][shot + 1]]
        xs = [x_list[perm["x_list"][d]] for d in range(shot + 1)]
        words = [word(x) for x in xs]
        images = [image_path(datasets, task, xs[d], theta) for d in range(shot)]
        truth = {"obj": xs[shot], "detail": theta} if task.x_is_obj else {"obj": theta, "detail": xs[shot]}
        out.append(Sample(task, shot, i, words, images, theta, f"{i}_{theta}_{'_'.join(words)}", truth))
    return out


def questions(task: Task) -> dict[str, str]:
    """evaluation_icl.get_eval_prompt(mode='image'): the detail and the object question with numbered options."""
    q = {"detail": f"What is the {task.detail_space} (of the main object) in this image? Answer from the following "
                   f"options: ",
         "obj": "What is the main object in this image? Answer from the following options: "}
    for mode, space in (("detail", task.detail_space), ("obj", task.obj_space)):
        for i, item in enumerate(ITEMS[space]):
            q[mode] += f" ({i + 1}){word(item)}"
        q[mode] += ". Answer the number only and do not include any other texts (e.g., 1)."
    return {k: v[:2047] for k, v in q.items()}   # the benchmark truncates the prompt to 2047 characters


def parse_answer(reply: str, num_options: int = 10) -> int:
    """evaluation_icl.eval_model: all digits of the reply concatenated; that number if it is 1..num_options,
    else -1 (so "3" -> 3, "(3) red" -> 3, "3 or 4" -> 34 -> -1, "none" -> -1)."""
    digits = "".join(filter(str.isdigit, reply))
    return int(digits) if digits and int(digits) in range(1, num_options + 1) else -1


def true_labels(sample: Sample) -> dict[str, int]:
    """1-based option numbers of the ground truth."""
    task = sample.task
    return {"detail": ITEMS[task.detail_space].index(sample.truth["detail"]) + 1,
            "obj": ITEMS[task.obj_space].index(sample.truth["obj"]) + 1}


def score(sample: Sample, replies: dict[str, str]) -> dict:
    """Both questions' parsed answers and checks; correct only if both match (missing images count as wrong)."""
    labels = true_labels(sample)
    answers = {m: parse_answer(replies[m], len(ITEMS[getattr(sample.task, f"{m}_space")])) for m in ("detail", "obj")}
    checks = {m: answers[m] == labels[m] for m in answers}
    return {"answer_detail": answers["detail"], "answer_obj": answers["obj"], "true_label_detail": labels["detail"],
            "true_label_obj": labels["obj"], "check_detail": checks["detail"], "check_obj": checks["obj"],
            "correct": checks["detail"] and checks["obj"]}


FIXTURE_MARKER = "THINKDIFF_SYNTHETIC_FIXTURE.txt"


def write_fixture(root: str, size: int = 16) -> str:
    """A synthetic CoBSAT-layout folder (all 500 images, ``size`` pixels, one flat colour each from the item
    names' hash) with a marker file that makes the harness label its numbers as meaningless. For tests and
    smoke runs only: these are not the benchmark's images."""
    import hashlib

    from PIL import Image
    d = os.path.join(root, "datasets")
    for task_type in sorted({t.task_type for t in TASKS.values()}):
        detail_space, obj_space = task_type.split("_")
        for obj in ITEMS[obj_space]:
            os.makedirs(os.path.join(d, f"{detail_space}_{obj}"), exist_ok=True)
            for detail in ITEMS[detail_space]:
                rgb = tuple(hashlib.sha256(f"{detail}_{obj}".encode()).digest()[:3])
                path = os.path.join(d, f"{detail_space}_{obj}", f"{detail}_{obj}.jpg")
                Image.new("RGB", (size, size), rgb).save(path)
    with open(os.path.join(d, FIXTURE_MARKER), "w") as f:
        f.write("Synthetic CoBSAT-layout fixture (flat-colour images), not the benchmark's data: scores on it are "
                "meaningless.\n")
    return root


def is_fixture(root: str) -> bool:
    return os.path.isfile(os.path.join(datasets_dir(root), FIXTURE_MARKER))


_SAFE = re.compile(r"[^A-Za-z0-9_.\- ]")


def safe_name(name: str) -> str:
    """A file-name-safe version of a save_path (the benchmark's names only use letters, digits, _ and spaces)."""
    return _SAFE.sub("_", name)
