"""A built wheel installs in a clean venv with the CPU torch and runs `proximo train` and `proximo doctor` there,
templates included, with no extra installed (marker slow: building the venv takes minutes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(argv, cwd, env, timeout=900):
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_the_wheel_installs_in_a_clean_venv_and_trains_and_diagnoses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist = tmp_path / "dist"
    status, out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                       tmp_path, env)
    assert status == 0, out
    wheels = list(dist.glob("proximo-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    status, out = _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    assert status == 0, out
    python, proximo = venv / "bin" / "python", venv / "bin" / "proximo"
    # the CPU torch pinned in the same call, as the Makefile does, so nothing pulls a CUDA build
    status, out = _run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", str(wheels[0])], tmp_path, env,
                       timeout=1800)
    assert status == 0, out

    work = tmp_path / "work"  # outside the checkout: the installed package runs, not the source tree
    work.mkdir()
    status, out = _run([str(python), "-c", "import proximo, pathlib; print(pathlib.Path(proximo.__file__).parent)"],
                       work, env)
    assert status == 0 and str(venv) in out, out
    status, out = _run([str(proximo), "train", "CartPole-v1", "--total-steps", "2048", "--run-dir", "run",
                        "--quiet"], work, env)
    assert status == 0 and "eval return" in out, out
    status, out = _run([str(proximo), "doctor", "run", "--html", "doctor.html"], work, env)
    assert status == 0 and "proximo doctor" in out, out
    page = (work / "doctor.html").read_text()
    assert "<style>" in page and "<script>" in page  # the packaged templates' styles and script are inlined

    # no extra is installed: a feature that needs one says which, in one line
    status, out = _run([str(proximo), "llm", "sft", "--task", "add", "--max-steps", "1"], work, env)
    assert status == 2 and "install the llm extra: pip install -e '.[llm]'" in out and len(out.splitlines()) == 1, out
