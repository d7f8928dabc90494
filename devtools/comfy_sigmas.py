"""The noise schedule (sigmas) ComfyUI itself samples a FLUX model with, computed by ComfyUI's own code.

For each case it loads the FLUX file with ComfyUI's loader (``comfy.sd.load_diffusion_model``, what
UNETLoader runs), optionally applies ComfyUI's ``ModelSamplingFlux`` node with the case's
max_shift/base_shift/width/height, and asks ``comfy.samplers.calculate_sigmas(model_sampling,
scheduler, steps)``, which KSampler and BasicScheduler call. Needs ComfyUI's packages: run it through
:func:`compute` (a child process, devtools.with_comfy) or as

    python -m devtools.comfy_sigmas FLUX_FILE < cases.json     (cwd=<ComfyUI>, PYTHONPATH=<ComfyUI>:<repo>)

cases.json: [{"scheduler": "simple", "steps": 28, "model_sampling_flux": {"max_shift": 1.15,
"base_shift": 0.5, "width": 512, "height": 512} | null}, ...]; prints [[sigma, ...], ...] as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from devtools import with_comfy


def sigmas_in_process(flux_file: str, cases: list[dict]) -> list[list[float]]:
    with_comfy.cpu_mode()
    import comfy.samplers
    import comfy.sd
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux   # imports ComfyUI's nodes.py
    model = comfy.sd.load_diffusion_model(flux_file)
    out = []
    for case in cases:
        m = model
        msf = case.get("model_sampling_flux")
        if msf is not None:
            (m,) = ModelSamplingFlux().patch(model, msf["max_shift"], msf["base_shift"], msf["width"], msf["height"])
        sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), case["scheduler"],
                                                 int(case["steps"]))
        out.append([float(s) for s in sigmas])
    return out


def compute(flux_file: str, cases: list[dict], comfy_dir: str | None = None) -> list[list[float]]:
    """:func:`sigmas_in_process` in a child process where ComfyUI imports."""
    r = with_comfy.run_module("devtools.comfy_sigmas", [os.path.abspath(flux_file)], comfy_dir,
                              input=json.dumps(cases), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"devtools.comfy_sigmas failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(sigmas_in_process(argv[0], json.load(sys.stdin))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
