"""Shell launchers: shellcheck-clean with every variable quoted, and the TPU launcher's remote
command passes paths and flags to train.py unchanged (no word splitting, no injection)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "launch").glob("*.sh")) + ["bench/gpu.sh", ".ci/run"]


def test_shell_scripts_pass_shellcheck():
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck is not installed (apt-get install shellcheck; .ci/run does it)"
    assert "launch/tpu_pod.sh" in SCRIPTS and "launch/slurm_gpu.sh" in SCRIPTS
    out = subprocess.run([exe, "--shell=bash", "--enable=quote-safe-variables", *SCRIPTS], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _remote_argv(tmp_path, args, env_extra):
    """Runs tpu_pod.sh with a stub gcloud, then the remote command it built with a stub python."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    cmd_file = tmp_path / "remote_command.txt"
    _stub(stubs / "gcloud", 'while [ $# -gt 0 ]; do if [ "$1" = --command ]; then printf %s "$2" > "$CMD_FILE"; '
                            'fi; shift; done\n')
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", CMD_FILE=str(cmd_file), **env_extra)
    subprocess.run(["bash", str(REPO / "launch/tpu_pod.sh"), "my-tpu", "zone-a", *args], cwd=tmp_path, env=env,
                   check=True)
    remote = cmd_file.read_text()
    # The worker side: the repository with a virtual environment whose python records its argv.
    repo = Path(env_extra.get("REPO_DIR") or Path(env_extra["HOME"]) / "rsunivlm_jax")
    (repo / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    stub_python = repo / ".venv" / "bin" / "python"
    stub_python.write_text("#!/usr/bin/env python3\nimport json, os, sys\n"
                           "json.dump(sys.argv[1:], open(os.environ['ARGV_FILE'], 'w'))\n")
    stub_python.chmod(0o755)
    (repo / ".venv" / "bin" / "activate").write_text(f'PATH="{repo}/.venv/bin:$PATH"\n')
    argv_file = tmp_path / "argv.json"
    worker_env = dict(os.environ, ARGV_FILE=str(argv_file), HOME=env_extra.get("HOME", os.environ.get("HOME", "")))
    subprocess.run(["bash", "-c", remote], cwd=tmp_path, env=worker_env, check=True)
    return json.loads(argv_file.read_text())


def test_tpu_pod_remote_command_keeps_every_argument(tmp_path):
    hostile = ["runs/cfg dir/x.py;touch INJECTED", "$(touch INJECTED2) w'q\"", "--config.data.train=a b,c",
               '--config.name="x y"', "--flag=$HOME"]
    repo_dir = tmp_path / "my repo"
    argv = _remote_argv(tmp_path, hostile, {"REPO_DIR": str(repo_dir)})
    assert argv == ["launch/train.py", "--config", hostile[0], "--workdir", hostile[1], "--multihost", *hostile[2:]]
    assert not list(tmp_path.glob("INJECTED*"))
    home = tmp_path / "home dir"
    env = {"HOME": str(home)}
    argv = _remote_argv(tmp_path, ["c.py", "w"], env)  # default: the worker's ~/rsunivlm_jax
    assert argv == ["launch/train.py", "--config", "c.py", "--workdir", "w", "--multihost"]
