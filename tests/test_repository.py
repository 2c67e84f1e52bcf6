"""Repository hygiene that CI enforces: lint, formatting, Snakemake lint, env files in step with pyproject."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import yaml


def _run(*command: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_lint_and_format(repo):
    lint = _run(sys.executable, "-m", "ruff", "check", ".", cwd=repo)
    assert lint.returncode == 0, lint.stdout
    fmt = _run(sys.executable, "-m", "ruff", "format", "--check", ".", cwd=repo)
    assert fmt.returncode == 0, fmt.stdout


def test_snakefmt(repo):
    snakefmt = shutil.which("snakefmt") or str(repo / ".venv/bin/snakefmt")
    result = _run(snakefmt, "--check", "Snakefile", "rules", cwd=repo)
    assert result.returncode == 0, result.stderr


def test_snakemake_lint_is_clean(repo, tmp_path):
    shutil.copy(repo / "config.yaml", tmp_path / "config.yaml")
    result = _run(sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--lint", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_conda_env_pins_match_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((repo / "envs/umm.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    norm = lambda spec: re.sub(r"[-_.]+", "-", spec.lower())  # noqa: E731
    assert sorted(map(norm, pip)) == sorted(map(norm, project))


def test_no_torch_2_13_pin(repo):
    for name in ("pyproject.toml", "README.md", ".ci/run", "envs/umm.yaml"):
        assert "torch==2.13" not in (repo / name).read_text(), name
