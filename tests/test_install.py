"""`pip install .` into a fresh venv: declared dependencies, console scripts, and the paper's
configs reachable from another directory. Offline: the venv sees this environment's packages
through a .pth file and pip installs only the checkout (--no-deps --no-build-isolation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("stlight-train", "stlight-evaluate", "stlight-convert", "stlight-export")


def _normal(requirement: str) -> str:
    from packaging.requirements import Requirement

    return str(Requirement(requirement))  # specifiers in a canonical order


def _requirements(path: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in open(path)]
    return sorted(_normal(line) for line in lines if line and not line.startswith("-"))


def _run(args, cwd, env):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_pip_install_runs_from_another_directory(tmp_path):
    # Build from a copy: pip builds in the source tree (build/, *.egg-info).
    src = tmp_path / "src"
    everywhere = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", ".*_cache")

    def ignore(folder, names):  # and the checkout's own outputs and datasets
        top = {"runs", "data", "build"} if os.path.samefile(folder, ROOT) else set()
        return set(everywhere(folder, names)) | (top & set(names))

    shutil.copytree(ROOT, src, ignore=ignore, symlinks=True)  # stlight_jax/configs, as git has it
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], ROOT, env)
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    with open(os.path.join(site.strip(), "_test_environment.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")
    _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + [str(src)],
        tmp_path,
        env,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy is imported, and its dependencies are requirements.txt's ranges.
    out = _run(
        [python, "-c", "import importlib.metadata as m, stlight_jax, stlight_jax.configs.mmnist; "
         "print(stlight_jax.__file__); print(stlight_jax.configs.mmnist.__file__); "
         "print('\\n'.join(r for r in m.requires('stlight-jax') if 'extra ==' not in r))"],
        elsewhere,
        env,
    )  # fmt: skip
    module, config_module, *requires = out.splitlines()
    assert module.startswith(site.strip()) and config_module.startswith(site.strip())
    # The paper's configs install inside the package, not as a top-level `configs`.
    assert not os.path.exists(os.path.join(site.strip(), "configs"))
    assert os.path.isfile(os.path.join(site.strip(), "stlight_jax", "configs", "mmnist.py"))
    want = _requirements(os.path.join(ROOT, "requirements.txt"))
    assert sorted(map(_normal, requires)) == want
    for script in SCRIPTS:
        assert os.access(venv / "bin" / script, os.X_OK), script
    # One command from another directory, with the paper's config by its checkout path.
    weights = elsewhere / "w.safetensors"
    _run(
        [python, "-c", "from stlight_jax.weights import torch_files as convert; "
         "from stlight_jax.models import ModelConfig, create_model; "
         "from stlight_jax.config.files import load_config; "
         "c = load_config('configs/mmnist.py:cpu'); "
         "m = create_model(ModelConfig.from_config(c.model), seed=1); "
         f"convert.save_state_dict_file(convert.model_state_dict(m), {str(weights)!r})"],
        elsewhere,
        env,
    )  # fmt: skip
    out = _run(
        [str(venv / "bin" / "stlight-export"), "stablehlo", "--config=configs/mmnist.py:cpu"]
        + ["--weights=w.safetensors", "--out=m.stablehlo", "--platforms=cpu"],
        elsewhere,
        env,
    )
    assert "float32[batch,10,64,64,1]" in out and (elsewhere / "m.stablehlo").stat().st_size > 0
    # The shipped models are package data: loaded by name from there, digest checked.
    from stlight_jax import pretrained

    for name in pretrained.available():
        out = _run(
            [python, "-c", "import numpy as np, stlight_jax; "
             f"m = stlight_jax.load({name!r}); print(m.source['path']); "
             "print(m.predict(np.zeros((1, 10, 64, 64, 1), np.float32)).shape)"],
            elsewhere,
            env,
        )  # fmt: skip
        path, shape = out.splitlines()[-2:]
        assert path.startswith(site.strip()) and path.endswith(f"{name}.safetensors"), path
        assert shape == "(1, 10, 64, 64, 1)"


def test_extras_match_their_requirements_files():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    for extra in ("torch", "export", "tfds"):
        (path,) = dynamic["optional-dependencies"][extra]["file"]
        assert _requirements(os.path.join(ROOT, path)), extra
    scripts = project["project"]["scripts"]
    assert sorted(scripts) == sorted(SCRIPTS)
