"""The ComfyUI versions beside each other: 0.33.0's package overlay holds exactly what its
requirements.txt needs beyond the venv, never a torch, and its pins agree with that file."""
from __future__ import annotations

import os

import pytest

from devtools import comfy_versions

OVERLAID = [v for v in comfy_versions.tested() if v.overlay]


@pytest.mark.parametrize("version", OVERLAID, ids=[v.id for v in OVERLAID])
def test_overlay_meets_the_requirements_without_its_own_torch(version):
    assert version.problem() is None, version.problem()
    assert comfy_versions.pin_conflicts(version) == []
    res = comfy_versions.check(version)
    assert res["unsatisfied"] == [], res
    assert not [n for n in os.listdir(version.overlay) if n.lower().startswith(("torch", "nvidia", "transformers"))]
    assert comfy_versions.overlay_for(version.dir) == version.overlay


def test_the_venvs_own_comfyui_needs_no_overlay():
    oldest = comfy_versions.tested()[0]
    assert oldest.overlay is None and comfy_versions.overlay_for(oldest.dir) is None
