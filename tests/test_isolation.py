"""The launchers' package runs jobs in processes of their own (hydra_plugins/distillery_launchers/
isolation.py): a command killed whole at its time limit, a worker that answers jobs and is lost,
not hung, when a job hangs or crashes. Real processes."""

import os
import sys
import textwrap
import time

from hydra_plugins.distillery_launchers.isolation import TIMEOUT, Worker, run_command

WORKER = textwrap.dedent("""
    import json, sys, time
    from hydra_plugins.distillery_launchers.isolation import answer
    for line in sys.stdin:
        job = json.loads(line)
        if job["kind"] == "quit":
            break
        if job["kind"] == "sleep":
            time.sleep(60)
        if job["kind"] == "crash":
            sys.exit(3)
        print("a library's stray line")
        answer({"kind": job["kind"], "twice": 2 * job["x"]})
""")


def test_worker_answers_and_is_lost_not_hung_on_a_hanging_or_crashing_job(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(tmp_path / "log", "w") as log:
        w = Worker([str(script)], log, tmp_path, env)
        assert w.ask({"kind": "double", "x": 21}, 30) == {"kind": "double", "twice": 42}
        t0 = time.time()
        assert w.ask({"kind": "sleep"}, 2) is None and time.time() - t0 < 30
        assert w.why_lost() == "timed out" and w.proc.poll() is not None  # killed, not left running
        w = Worker([str(script)], log, tmp_path, env)
        assert w.ask({"kind": "crash"}, 30) is None and w.why_lost() == "worker exited with code 3"
        w = Worker([str(script)], log, tmp_path, env)
        w.close({"kind": "quit"})
        assert w.proc.returncode == 0
    assert "a library's stray line" in (tmp_path / "log").read_text()


def test_a_command_over_its_time_limit_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    cmd = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    with open(tmp_path / "log", "w") as log:
        assert run_command(["sh", "-c", "exit 5"], cwd=tmp_path, env=dict(os.environ), log=log, timeout_s=30) == 5
        t0 = time.time()
        assert run_command(cmd, cwd=tmp_path, env=dict(os.environ), log=log, timeout_s=1) == TIMEOUT
    assert time.time() - t0 < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphaned sleep is reaped by init once killed
        if not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the child {child} of the timed-out command still runs")
