"""The transformers floor that requirements.txt states is real: the core tests pass on exactly it."""
from devtools import floor


def test_requirements_state_the_tested_floor():
    pinned = floor.pins()["transformers"]
    assert floor.stated_floor() == pinned, "requirements.txt's transformers floor differs from requirements-floor.txt"
    with open(floor.os.path.join(floor.ROOT, "pyproject.toml")) as fh:
        assert f'"transformers>={pinned}"' in fh.read(), "pyproject.toml's transformers floor differs"


def test_core_tests_pass_on_the_floor_versions():
    floor.install()
    assert floor.versions().split() == [floor.pins()[k] for k in ("transformers", "tokenizers", "huggingface-hub")]
    r = floor.test()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
