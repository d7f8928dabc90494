"""The registry package: the metadata the Comfy registry and ComfyUI-Manager read, what `comfy node pack`
puts into the zip, and that zip installed into a fresh ComfyUI the way a registry install does it
(unpack into custom_nodes/<name>/, `python -m pip install -r requirements.txt` with ComfyUI's Python),
running a shipped workflow end to end on the random-weight demo models.

comfy-cli (pinned in requirements-test.txt) runs offline and privately: a throwaway HOME, DO_NOT_TRACK=1,
--skip-prompt, no standard input, and COMFY_KNOWLEDGE_FILE pointing at a file of ours (no background
download). `comfy node pack` writes node.zip into the working folder and zips the git-tracked files of
the folder it runs in, so it runs in a temporary git copy of the work tree (tracked files plus the
untracked ones that are not ignored: what the next commit would hold).
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile

import pytest
import yaml
from PIL import Image

from devtools import comfy_client, comfy_server, demo_models, paths, run_workflow
from devtools.make_workflows import MINI_WORKFLOWS
from thinkdiff_core import release

ROOT = paths.ROOT
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)
NAME = PYPROJECT["project"]["name"]
VERSION = PYPROJECT["project"]["version"]
WORKFLOWS = sorted(glob.glob(os.path.join(paths.WORKFLOWS, "*.json")))

# what a user's ComfyUI needs: these folders with every tracked file in them, and these files
SHIPPED_DIRS = ("nodes", "thinkdiff_core", "train", "web", "workflows", "example_inputs")
SHIPPED_FILES = ("__init__.py", "README.md", "LICENSE", "pyproject.toml", "requirements.txt", "docs/method.md")
# what it does not: developer tooling, tests, CI, dev requirements, pictures for the repository page
NOT_SHIPPED_DIRS = ("tests/", "bench/", "devtools/", "scripts/", ".ci/", ".github/")
NOT_SHIPPED = re.compile(r"^(requirements-.*\.txt|docs/.*\.(png|svg))$")
BIG_PICTURE = 64 * 1024
# ComfyUI's stock loaders: each must carry properties.models for the file its first widget names
STOCK_LOADERS = {"UNETLoader": "diffusion_models", "CLIPLoader": "clip", "VAELoader": "vae"}
# ThinkDiff-CLIP graphs load FLUX's two text encoders instead of CLIP-L alone: (loader, widget index) -> download
CLIP_STOCK_LOADERS = {("UNETLoader", 0): "diffusion_models", ("DualCLIPLoader", 0): "clip",
                      ("DualCLIPLoader", 1): "t5xxl", ("VAELoader", 0): "vae"}
# ComfyUI's frontend offers a download only for these hosts and file endings (missing-models dialog)
DOWNLOAD_HOSTS = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")


# --- comfy-cli ---------------------------------------------------------------------------------------

def comfy_cli(args: list[str], cwd: str, home: str) -> subprocess.CompletedProcess:
    """`comfy --skip-prompt <args>` from the test venv, offline and private."""
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"), DO_NOT_TRACK="1",
               COMFY_KNOWLEDGE_FILE=os.path.join(home, "knowledge.json"), NO_COLOR="1", COLUMNS="200")
    r = subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", *args], cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"comfy {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def work_tree_files() -> list[str]:
    """Tracked files plus untracked ones that .gitignore does not exclude (deleted ones left out)."""
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))})


@pytest.fixture(scope="module")
def pack_tree(tmp_path_factory) -> dict:
    """A git copy of the work tree in which `comfy node validate` and `comfy node pack` ran."""
    base = tmp_path_factory.mktemp("package")
    tree, home = str(base / "tree"), str(base / "home")
    os.makedirs(home)
    files = work_tree_files()
    for f in files:
        os.makedirs(os.path.dirname(os.path.join(tree, f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(tree, f))
    git = ["git", "-C", tree, "-c", "user.name=test", "-c", "user.email=test@invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    t = time.time()
    validate = comfy_cli(["node", "validate"], tree, home)
    pack = comfy_cli(["node", "pack"], tree, home)
    print(f"\n[package] comfy node validate + pack in {time.time() - t:.1f} s", file=sys.stderr)
    return {"tree": tree, "files": files, "validate": validate, "pack": pack,
            "zip": os.path.join(tree, "node.zip")}


@pytest.fixture(scope="module")
def zip_names(pack_tree) -> list[str]:
    with zipfile.ZipFile(pack_tree["zip"]) as z:
        assert z.testzip() is None
        return [i.filename for i in z.infolist() if not i.is_dir()]


def test_comfy_node_validate_passes_without_warnings(pack_tree):
    out = pack_tree["validate"].stdout + pack_tree["validate"].stderr
    assert "All validation checks passed" in out, out
    assert "warning" not in out.lower(), out   # licence format, classifiers, version ranges, ruff S102/S307


def test_zip_holds_what_comfyui_needs(pack_tree, zip_names):
    names = set(zip_names)
    missing = [f for f in SHIPPED_FILES if f not in names]
    missing += [f for f in pack_tree["files"] if f.split("/")[0] in SHIPPED_DIRS and f not in names]
    assert not missing, f"the registry zip lacks {missing}"
    for d in SHIPPED_DIRS:
        assert any(n.startswith(d + "/") for n in names), d
    assert {"train/configs/paper.yaml", "web/js/dynamic_image_slots.js"} <= names


def test_zip_leaves_out_tooling_tests_ci_and_pictures(pack_tree, zip_names):
    with zipfile.ZipFile(pack_tree["zip"]) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    unwanted = [n for n in zip_names if n.startswith(NOT_SHIPPED_DIRS) or NOT_SHIPPED.match(n)]
    assert not unwanted, f"the registry zip ships {unwanted}: add them to .comfyignore"
    big = [n for n in zip_names if n.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp"))
           and sizes[n] > BIG_PICTURE]
    assert not big, f"large pictures in the registry zip: {big}"
    # node.zip itself and git's folder never go in
    assert not [n for n in zip_names if n == "node.zip" or n.startswith(".git/")]
    assert sum(sizes.values()) < 1_000_000, f"the zip unpacks to {sum(sizes.values())} bytes"


# --- registry metadata -------------------------------------------------------------------------------

def test_registry_name_follows_the_registry_rules():
    # docs.comfy.org/registry/specifications: < 100 characters; letters, digits, '-', '_', '.'; no two
    # special characters in a row; starts with a letter; and (advice) no "ComfyUI" in it
    assert len(NAME) < 100
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", NAME), NAME
    assert not re.search(r"[._-]{2}", NAME) and not NAME.endswith(("-", "_", ".")), NAME
    assert "comfyui" not in NAME.lower(), NAME
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_metadata_as_comfy_cli_reads_it():
    """What the registry upload sends: comfy-cli's own parser on our pyproject.toml."""
    from comfy_cli.registry.config_parser import extract_node_configuration
    cfg = extract_node_configuration(os.path.join(ROOT, "pyproject.toml"))
    p, c = cfg.project, cfg.tool_comfy
    assert (p.name, p.version) == (NAME, VERSION)
    assert p.license.file == "LICENSE" and not p.license.text
    assert p.urls.repository.startswith("https://github.com/")
    assert p.urls.issues == PYPROJECT["project"]["urls"]["Bug Tracker"] == p.urls.repository + "/issues"
    assert p.urls.documentation
    assert p.supported_os == ["OS Independent"]
    assert p.supported_comfyui_version == ">=0.3.75"
    assert not any(d.startswith("torch") for d in p.dependencies), "never pull torch into a user's ComfyUI"
    assert c.publisher_id and c.display_name == "ThinkDiff"
    # the icon is a URL into the repository (served once it is public): the file must be there
    prefix = p.urls.repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert c.icon.startswith(prefix), c.icon
    icon = os.path.join(ROOT, c.icon[len(prefix):])
    assert os.path.isfile(icon) and os.path.getsize(icon) < 64 * 1024, icon
    for inc in c.includes:
        assert os.path.exists(os.path.join(ROOT, inc)), inc


def test_license_is_the_full_gplv3():
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 3, 29 June 2007" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 30_000
    assert "GNU General Public License v3 or later (GPLv3+)" in " ".join(PYPROJECT["project"]["classifiers"])


def test_requirements_match_pyproject():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        reqs = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert sorted(reqs) == sorted(PYPROJECT["project"]["dependencies"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(w) for w in WORKFLOWS])
def test_workflows_carry_registry_ids_and_model_links(path):
    with open(path) as f:
        wf = json.load(f)
    ours = [n for n in wf["nodes"] if n["type"].startswith("ThinkDiff")]
    assert ours
    for n in ours:
        props = n.get("properties", {})
        assert (props.get("cnr_id"), props.get("ver")) == (NAME, VERSION), (n["type"], props)
    for n in wf["nodes"]:   # no other node claims our pack, nor a pack id that is not ours or core
        cnr = n.get("properties", {}).get("cnr_id")
        assert cnr in (None, "comfy-core") or (cnr == NAME and n["type"].startswith("ThinkDiff")), (n["type"], cnr)
    if os.path.splitext(os.path.basename(path))[0] in MINI_WORKFLOWS:
        return   # ThinkDiff-mini's models are built locally (python -m train mini install): nothing to download
    stock = CLIP_STOCK_LOADERS if os.path.basename(path).startswith("thinkdiff_clip_") else {
        (t, 0): d for t, d in STOCK_LOADERS.items()}
    loaders = [n for n in wf["nodes"] if n["type"] in {t for t, _ in stock}]
    assert sorted(n["type"] for n in loaders) == sorted({t for t, _ in stock})
    for (kind, index), download in stock.items():
        n = next(n for n in loaders if n["type"] == kind)
        entries = n.get("properties", {}).get("models") or []
        file = n["widgets_values"][index]
        expected = release.FLUX_DOWNLOADS[download]
        match = [m for m in entries if m.get("name") == file]
        assert match, f"{n['type']} loads {file} but properties.models names {[m.get('name') for m in entries]}"
        m = match[0]
        assert set(m) == {"name", "url", "directory"}, m
        assert m == expected, (m, expected)
        assert m["url"].startswith(DOWNLOAD_HOSTS) and m["url"].endswith("/" + file), m
        assert file.endswith(DOWNLOAD_SUFFIXES), file


def test_publish_workflow_is_the_registry_action():
    with open(os.path.join(ROOT, ".github", "workflows", "publish.yml")) as f:
        wf = yaml.safe_load(f)
    on = wf.get("on", wf.get(True))   # YAML 1.1 reads a bare `on` key as true
    assert "main" in on["push"]["branches"] and on["push"]["paths"] == ["pyproject.toml"]
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    action = [s for s in steps if str(s.get("uses", "")).startswith("Comfy-Org/publish-node-action@")]
    assert len(action) == 1
    assert action[0]["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"


# --- the zip installed into a fresh ComfyUI ----------------------------------------------------------

ENV_PROBE = r"""
import hashlib, importlib.metadata as md, json, os, site, sys
out = {"prefix": sys.prefix, "dists": sorted(f"{d.metadata['Name']}=={d.version}" for d in md.distributions())}
for name in ("torch", "torchvision"):
    d = md.distribution(name)
    root = os.path.realpath(str(d.locate_file("")))
    files = sorted(str(f) for f in d.files if not str(f).endswith(".pyc"))
    listing = []
    for f in files:
        p = os.path.join(root, f)
        st = os.stat(p) if os.path.exists(p) else None
        listing.append(f"{f} {st.st_size if st else -1} {st.st_mtime_ns if st else -1}")
    record = d.read_text("RECORD") or ""
    mod = __import__(name)
    out[name] = {"version": mod.__version__, "file": os.path.realpath(mod.__file__), "location": root,
                 "record_sha256": hashlib.sha256(record.encode()).hexdigest(),
                 "files_sha256": hashlib.sha256("\n".join(listing).encode()).hexdigest(), "n_files": len(files)}
print(json.dumps(out))
"""


def probe(python: str) -> dict:
    r = subprocess.run([python, "-c", ENV_PROBE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def site_packages(python: str) -> list[str]:
    r = subprocess.run([python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def layered_venv(path: str, base_python: str) -> str:
    """A throwaway venv layered over the test venv: its own (empty) site-packages first, then the test
    venv's, added by a .pth (`venv --system-site-packages` would add the base interpreter's
    site-packages, not the test venv's). pip run by it installs into the throwaway venv and never
    uninstalls from the test venv (pip leaves distributions outside sys.prefix alone)."""
    subprocess.run([base_python, "-m", "venv", "--without-pip", path], check=True)
    py = os.path.join(path, "bin", "python")
    own = site_packages(py)[0]
    lines = [f"import site; site.addsitedir({sp!r})" for sp in site_packages(base_python)]
    with open(os.path.join(own, "_thinkdiff_test_base_venv.pth"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return py


def fresh_comfyui(comfy_dir: str, dst: str) -> str:
    """A copy of ComfyUI's code as a fresh install has it: no user data, models, outputs, or packs."""
    def ignore(d, names):
        top = os.path.abspath(d) == os.path.abspath(comfy_dir)
        skip = {n for n in names if n in ("__pycache__", ".git", ".venv", "venv") or n.endswith(".pyc")}
        if top:
            skip |= {n for n in names if n in ("user", "output", "temp", "input", "models", "custom_nodes",
                                               "comfyui.log", "extra_model_paths.yaml")}
        return skip
    shutil.copytree(comfy_dir, dst, ignore=ignore, symlinks=True)
    # custom_nodes holds only the stock files a release ships (no packs of the developer's install)
    os.makedirs(os.path.join(dst, "custom_nodes"))
    src = os.path.join(comfy_dir, "custom_nodes")
    for n in os.listdir(src):
        if os.path.isfile(os.path.join(src, n)) and n.endswith((".py", ".example")):
            shutil.copy2(os.path.join(src, n), os.path.join(dst, "custom_nodes", n))
    return dst


CONVERT = ("import json, sys\n"
           "from devtools import run_workflow\n"
           "with open(sys.argv[1]) as f:\n"
           "    prompt, used = run_workflow.convert(json.load(f), sys.argv[2])\n"
           "print(json.dumps({'prompt': prompt, 'converter': used}))\n")


def convert_in_child(workflow_path: str, url: str) -> tuple[dict, str]:
    """run_workflow.convert in a child process: playwright's sync API runs one instance per thread, and
    in a full run the node suite's session frontends (headless Chromium) are still open in this one."""
    r = subprocess.run([sys.executable, "-c", CONVERT, workflow_path, url], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["prompt"], out["converter"]


def test_registry_install_into_fresh_comfyui_runs_a_workflow(pack_tree, comfy_dir, tmp_path):
    t0 = time.time()
    comfy = fresh_comfyui(comfy_dir, str(tmp_path / "ComfyUI"))
    # as `comfy node install <name>` does: unpack the registry zip into custom_nodes/<name>/
    from comfy_cli.file_utils import extract_package_as_zip
    pack = os.path.join(comfy, "custom_nodes", NAME)
    os.makedirs(pack)
    extract_package_as_zip(pack_tree["zip"], pack)

    base_python = comfy_server.server_python()
    test_venv_dists = sorted(os.listdir(site_packages(base_python)[0]))
    py = layered_venv(str(tmp_path / "venv"), base_python)
    before = probe(py)
    assert before["torch"]["location"] != os.path.realpath(site_packages(py)[0])   # torch is the ComfyUI venv's

    # ... then `python -m pip install -r requirements.txt` with ComfyUI's Python (comfy-cli's
    # execute_install_script; ComfyUI-Manager installs the same lines)
    pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    r = subprocess.run([py, "-m", "pip", "install", "-r", os.path.join(pack, "requirements.txt")],
                       cwd=pack, env=pip_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Uninstalling" not in r.stdout and not re.search(r"(?im)^Collecting torch", r.stdout), r.stdout
    after = probe(py)
    for name in ("torch", "torchvision"):
        assert after[name] == before[name], f"installing requirements.txt changed {name}: {before[name]} -> {after[name]}"
    assert after["dists"] == before["dists"], "requirements.txt installed something the ComfyUI venv lacked"
    assert sorted(os.listdir(site_packages(base_python)[0])) == test_venv_dists, "the test venv was modified"
    t_install = time.time() - t0

    # models and inputs as a user has them: (demo) model files in models/, the example images in input/
    t = time.time()
    demo_models.build_in_subprocess(os.path.join(comfy, "models"), comfy_dir, quiet=True)
    shutil.copytree(os.path.join(pack, "example_inputs"), os.path.join(comfy, "input"))
    t_models = time.time() - t

    server = comfy_server.ComfyServer(comfy, comfy_dir=comfy, python=py)
    t = time.time()
    with server:
        t_start = time.time() - t
        client = server.client()
        log = server.log_text()
        assert "IMPORT FAILED" not in log and "ThinkDiff nodes were registered" not in log, server.log_tail(80)
        info = client.object_info()
        ours = {k: v for k, v in info.items() if k.startswith("ThinkDiff")}
        assert set(ours) >= {"ThinkDiffLoadAligner", "ThinkDiffLoadVLM", "ThinkDiffVLMEncode", "ThinkDiffConditioning"}
        assert {v["python_module"] for v in ours.values()} == {f"custom_nodes.{NAME}"}
        # the template browser lists the shipped workflows under the pack's folder name
        shipped = sorted(os.path.splitext(os.path.basename(w))[0] for w in WORKFLOWS)
        assert sorted(client.get("/workflow_templates").get(NAME, [])) == shipped
        # the frontend extension is served
        assert b"ThinkDiffVLMEncode" in client.get_bytes(f"/extensions/{NAME}/dynamic_image_slots.js")

        # a shipped workflow (from the installed pack), converted by the real frontend where it is
        # available, on the demo models at a small size
        with open(os.path.join(pack, "workflows", "thinkdiff_in_context_reasoning.json")) as f:
            workflow = json.load(f)
        t = time.time()
        prompt, converter = convert_in_child(os.path.join(pack, "workflows", "thinkdiff_in_context_reasoning.json"),
                                             server.url)
        prompt = run_workflow.apply_overrides(prompt, steps=1, width=64, height=64, demo_models=True,
                                              inputs={"ThinkDiffVLMEncode": {"max_new_tokens": 8}})
        entry = client.run(prompt, workflow, timeout=900)
        t_run = time.time() - t
        err = comfy_client.execution_error(entry)
        assert err is None, f"{err.get('node_type')}: {err.get('exception_message')}\n{server.log_tail(60)}"
        images = comfy_client.output_images(entry)
        assert images, entry.get("status")
        img = Image.open(io.BytesIO(client.image(images[0])))
        assert img.format == "PNG" and img.size == (64, 64)
        assert comfy_client.output_texts(entry), "the VLM's text did not come back"

    assert probe(py)["torch"] == before["torch"]
    print(f"\n[package] fresh install + pip {t_install:.1f} s, demo models {t_models:.1f} s, ComfyUI ready "
          f"{t_start:.1f} s, workflow ({converter} converter) {t_run:.1f} s", file=sys.stderr)

