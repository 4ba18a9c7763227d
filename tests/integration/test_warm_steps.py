"""The step runner (include/mlops/warm): a real runner process forking real step CLI children.

The runner preloads numpy only (quick to start); the probe step
(tests/warm_probe_steps.py) reports what its process got.  The lifecycle's
real steps run warm in every end-to-end test, whose stacks start the runner
from scripts/supervisord.conf.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from include.mlops.warm.client import WarmStartError, WarmStep, start_warm
from include.mlops.warm.protocol import LineReader, send

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def runner_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins")])}


def start_runner(sock: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.mlops.warm", "--socket", str(sock), "--preload", "numpy"],
        cwd=PROJECT_ROOT,
        env=env or runner_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(sock.with_suffix(".log"), "wb"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    try:
        while not answers(sock):
            assert proc.poll() is None, sock.with_suffix(".log").read_text()
            assert time.monotonic() < deadline, "the step runner did not open its socket within 60 s"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        raise
    return proc


def answers(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


def end_group(step: WarmStep | None) -> None:
    """SIGKILL what is left of a step's process group (a failed test leaves no sleeping probe behind)."""
    if step is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(step.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    sock = tmp_path_factory.mktemp("warm") / "runner.sock"
    proc = start_runner(sock)
    yield sock
    stop(proc)


def step_env(**extra: str) -> dict[str, str]:
    paths = [str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins"), str(PROJECT_ROOT / "tests")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "MLOPS_STEP_MODULES": "warm_probe_steps", **extra}


def probe_argv(out: Path, action: str = "report") -> list[str]:
    return [
        sys.executable,
        "-m",
        "include.mlops",
        "probe",
        "--model",
        "diabetes",
        "--out",
        str(out),
        "--action",
        action,
    ]


def finish(step: WarmStep | subprocess.Popen[str]) -> tuple[int | None, str]:
    assert step.stdout is not None
    output = step.stdout.read()
    return step.wait(timeout=60), output


def result_of(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


def warm(runner: Path, argv: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT) -> WarmStep:
    started = start_warm(argv, env, cwd, path=runner)
    assert isinstance(started, WarmStep), started
    return started


def test_a_warm_step_gets_the_requests_folder_environment_path_and_a_process_group_of_its_own(
    runner: Path, tmp_path: Path
) -> None:
    step = warm(runner, probe_argv(tmp_path / "out"), step_env(MLOPS_PROBE="first"), cwd=tmp_path)
    code, output = finish(step)
    assert code == 0, output
    result = result_of(output)
    assert result["probe"] == "first"  # and the probe step itself was found through the request's environment
    assert result["cwd"] == str(tmp_path)
    assert result["pid"] == result["pgid"] == step.pid
    assert result["path_head"][:2] == [str(tmp_path), str(PROJECT_ROOT)]
    assert "probe of model diabetes: started" in output  # the step CLI logged its first line of work


def test_a_warm_step_matches_the_cold_one(runner: Path, tmp_path: Path) -> None:
    env = step_env(MLOPS_PROBE="same")
    cold = subprocess.Popen(
        probe_argv(tmp_path / "cold"), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    cold_code, cold_output = finish(cold)
    warm_code, warm_output = finish(warm(runner, probe_argv(tmp_path / "warm"), env))
    assert cold_code == warm_code == 0
    cold_result, warm_result = result_of(cold_output), result_of(warm_output)
    for key in ("cwd", "probe", "path_head", "model"):
        assert warm_result[key] == cold_result[key], key


def test_each_fork_draws_its_own_random_numbers(runner: Path, tmp_path: Path) -> None:
    draws = {result_of(finish(warm(runner, probe_argv(tmp_path / str(i)), step_env()))[1])["draw"] for i in range(3)}
    assert len(draws) == 3


@pytest.mark.parametrize(
    ("argv_tail", "expected", "said"),
    [
        (["--action", "exit-4"], 4, ""),
        (["--action", "sigkill"], -signal.SIGKILL, ""),
        (["--bogus"], 3, "unrecognized arguments: --bogus"),
    ],
    ids=["sys-exit", "killed-by-a-signal", "bad-usage-is-bad-input"],
)
def test_the_runner_reports_the_steps_exit_status(
    runner: Path, tmp_path: Path, argv_tail: list[str], expected: int, said: str
) -> None:
    argv = [*probe_argv(tmp_path / "out")[:-2], *argv_tail]
    code, output = finish(warm(runner, argv, step_env()))
    assert code == expected, output
    assert said in output


def test_killing_the_process_group_ends_the_step_and_its_children_and_the_step_cleans_up(
    runner: Path, tmp_path: Path
) -> None:
    step = warm(runner, probe_argv(tmp_path / "out", "sleep"), step_env())
    try:
        assert step.stdout is not None
        line = ""
        while "grandchild" not in line:
            line = step.stdout.readline()
            assert line, "the probe ended before it slept"
        grandchild = psutil.Process(int(line.rsplit(" ", 1)[1]))
        assert step.poll() is None
        os.killpg(step.pid, signal.SIGTERM)  # what the operator does on execution_timeout
        assert step.wait(timeout=30) == 143  # the CLI's StepTerminated: SIGTERM reached the step's own handler
        grandchild.wait(timeout=30)
        assert not grandchild.is_running()
    finally:
        end_group(step)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_request_with_other_import_time_settings_is_refused_and_starts_cold(runner: Path, tmp_path: Path) -> None:
    before = open_fds()
    reason = start_warm(probe_argv(tmp_path), step_env(TF_ENABLE_ONEDNN_OPTS="0"), PROJECT_ROOT, path=runner)
    assert reason == "the step runner refused: import-time settings differ from the runner's: TF_ENABLE_ONEDNN_OPTS"
    other = start_warm(["/usr/bin/python3", *probe_argv(tmp_path)[1:]], step_env(), PROJECT_ROOT, path=runner)
    assert isinstance(other, str) and "wants interpreter '/usr/bin/python3'" in other
    assert open_fds() == before  # the pipe and the connection of a refused request are closed


def test_no_runner_or_warm_starts_off_means_a_cold_start(runner: Path, tmp_path: Path) -> None:
    assert start_warm(probe_argv(tmp_path), step_env(), PROJECT_ROOT, path=tmp_path / "none.sock") == (
        f"no step runner at {tmp_path / 'none.sock'}"
    )
    off = start_warm(probe_argv(tmp_path), step_env(MLOPS_WARM_STEPS="0"), PROJECT_ROOT, path=runner)
    assert off == "warm starts are off ($MLOPS_WARM_STEPS)"
    not_a_step = start_warm([sys.executable, "-c", "pass"], step_env(), PROJECT_ROOT, path=runner)
    assert not_a_step == f"not a step command: {sys.executable} -c pass"


@pytest.mark.parametrize(
    ("payload", "fds", "refusal"),
    [
        (b"not json\n", 1, "bad request: not a JSON line"),
        (b'{"argv": "train", "env": {}, "cwd": "/"}\n', 1, "bad request: request field 'argv' must be a list"),
        (b'{"argv": [], "env": {"A": 1}, "cwd": "/"}\n', 1, "bad request: request field 'env' must map strings"),
        (b'{"argv": [], "env": {}, "cwd": "relative"}\n', 1, "bad request: request field 'cwd' must be an absolute"),
        (b'{"argv": [], "env": {}, "cwd": "/"}\n', 0, "bad request: a request carries one file descriptor"),
    ],
    ids=["not-json", "argv-not-a-list", "env-not-strings", "cwd-relative", "no-output-pipe"],
)
def test_a_malformed_request_is_refused_and_the_runner_goes_on(
    runner: Path, tmp_path: Path, payload: bytes, fds: int, refusal: str
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(runner))
        read_fd, write_fd = os.pipe()
        try:
            if fds:
                socket.send_fds(conn, [payload], [write_fd])
            else:
                conn.sendall(payload)
        finally:
            os.close(write_fd)
        reply = LineReader(conn).read()
        os.close(read_fd)
    assert reply is not None and reply["refused"].startswith(refusal), reply
    code, _ = finish(warm(runner, probe_argv(tmp_path / "after"), step_env()))
    assert code == 0


def test_a_runner_that_dies_mid_step_gives_an_unknown_exit(tmp_path: Path) -> None:
    sock = tmp_path / "dying.sock"
    proc = start_runner(sock)
    step = None
    try:
        step = warm(sock, probe_argv(tmp_path / "out", "sleep"), step_env())
        proc.kill()
        proc.wait(timeout=30)
        assert step.wait(timeout=30) is None  # the task retries a step whose end nobody saw
    finally:
        end_group(step)
        stop(proc)


def test_a_runner_that_takes_the_request_and_never_answers_fails_the_try(tmp_path: Path) -> None:
    import include.mlops.warm.client as client

    sock = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock))
        listener.listen(1)
        original, client.REPLY_TIMEOUT_S = client.REPLY_TIMEOUT_S, 0.5
        before = open_fds()
        try:
            with pytest.raises(WarmStartError, match="took the request but did not answer"):
                start_warm(probe_argv(tmp_path), step_env(), PROJECT_ROOT, path=sock)
        finally:
            client.REPLY_TIMEOUT_S = original
        assert open_fds() == before


def test_the_runner_removes_its_socket_when_stopped_and_replaces_a_stale_one(tmp_path: Path) -> None:
    sock = tmp_path / "runner.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:  # what a runner killed with -9 leaves
        stale.bind(str(sock))
    proc = start_runner(sock)
    try:
        code, _ = finish(warm(sock, probe_argv(tmp_path / "out"), step_env()))
        assert code == 0
    finally:
        stop(proc)
    assert proc.returncode == 0 and not sock.exists()


def test_a_reply_larger_than_one_read_is_framed_by_lines(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    with left, right:
        send(left, {"blob": "x" * 200_000})
        send(left, {"pid": 7})
        reader = LineReader(right)
        assert len(reader.read()["blob"]) == 200_000
        assert reader.read() == {"pid": 7}


@pytest.fixture
def operator_env(runner: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task process's environment under `make run`: the runner's socket, and the probe step declared."""
    monkeypatch.setenv("MLOPS_STEP_RUNNER_SOCKET", str(runner))
    for key, value in step_env().items():
        monkeypatch.setenv(key, value)


def run_operator(tmp_path: Path, action: str, *, warm: bool) -> dict[str, Any]:
    from mlops_airflow.operators import LifecycleStepOperator
    from mlops_airflow.steps import step_command

    operator = LifecycleStepOperator(task_id=f"probe-{action}", step="probe", model="diabetes")
    result_file = tmp_path / f"result-{action}-{warm}.json"
    arguments = {"out": str(tmp_path / "out"), "action": action, "result_file": str(result_file)}
    return operator._run(step_command("probe", "diabetes", arguments), result_file, warm=warm)


@pytest.mark.usefixtures("operator_env")
def test_the_operator_starts_a_first_try_warm_and_a_retry_cold(
    runner: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_operator(tmp_path, "report", warm=True)
    assert "Step 'probe' started warm by the step runner" in capsys.readouterr().out  # the task log
    retry = run_operator(tmp_path, "report", warm=False)
    assert "started warm" not in capsys.readouterr().out
    assert first["pid"] == first["pgid"] and retry["pid"] == retry["pgid"]
    assert first["probe"] is None and first["cwd"] == retry["cwd"] == str(PROJECT_ROOT)


@pytest.mark.usefixtures("operator_env")
def test_the_operator_fails_a_warm_step_as_it_fails_a_cold_one(tmp_path: Path) -> None:
    from mlops_airflow.steps import StepBadInputError, StepFailedError

    with pytest.raises(StepFailedError, match=r"failed \(exit -9\)"):
        run_operator(tmp_path, "sigkill", warm=True)
    with pytest.raises(StepFailedError, match=r"failed \(exit 4\)") as failed:
        run_operator(tmp_path, "exit-4", warm=True)
    assert not isinstance(failed.value, StepBadInputError)


def test_the_operator_starts_cold_when_the_runner_refuses(
    runner: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLOPS_STEP_RUNNER_SOCKET", str(runner))
    for key, value in step_env(TF_ENABLE_ONEDNN_OPTS="0").items():
        monkeypatch.setenv(key, value)
    result = run_operator(tmp_path, "report", warm=True)
    said = capsys.readouterr().out
    assert "Step 'probe' starts cold: the step runner refused: import-time settings differ" in said
    assert result["model"] == "diabetes"
