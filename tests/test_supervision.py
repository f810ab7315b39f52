"""Restart policies: PID 1 starts the service again, by the policy, and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from instancelib import HealthCheck, InvalidArgument
from instancelib.linux.supervisor import parse_policy
from tests.helpers import free_port

WAIT = 20  # seconds any state may take to come


def until(condition, what):
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# Each run appends its number and /proc/uptime to /runs (the instance's tmpfs overlay).
COUNTING = """#!/bin/sh
n=$(( $(wc -l < /runs 2>/dev/null || echo 0) + 1 ))
echo "$n $(cut -d' ' -f1 /proc/uptime) $$" >> /runs
echo "run $n"
{body}
"""


def runs(instance):
    text = instance.exec(["cat", "/runs"]).stdout
    return [line.split() for line in text.splitlines()]


def err_log(instance):
    return instance.stderr_path.read_text()


def test_on_failure_restarts_with_backoff_until_the_service_stays_up(make_image, start):
    image = make_image(startscript=COUNTING.format(body='[ "$n" -le 2 ] && exit 3\n'
                                                        "exec sleep 1000"))
    instance = start(image, "flaky", writable_tmpfs=True, restart="on-failure")
    state = until(lambda: (s := instance.service_state) and s.restarts == 2
                  and s.service == "running" and s, "two restarts")
    assert (state.exit_code, state.restart) == (3, "on-failure")
    assert instance.restarts == 2 and instance.service_exit_code == 3
    times = [float(run[1]) for run in until(lambda: len(runs(instance)) == 3 and runs(instance),
                                            "the third run")]
    assert times[1] - times[0] >= 0.1 - 0.01  # /proc/uptime counts in 10 ms steps
    assert times[2] - times[1] >= 0.2 - 0.01
    log = err_log(instance)
    assert "instancelib: the service exited with status 3; restart 1 in 0.1 s" in log
    assert "instancelib: the service exited with status 3; restart 2 in 0.2 s" in log
    assert "instancelib: the service started again (restart 2" in log
    assert instance.is_running()


def test_on_failure_n_gives_up_and_the_instance_stays_idle(make_image, start):
    image = make_image(startscript=COUNTING.format(body="exit 5"))
    instance = start(image, "doomed", writable_tmpfs=True, restart="on-failure:1")
    state = until(lambda: (s := instance.service_state) and s.service == "exited" and s,
                  "the give-up")
    assert (state.restarts, state.exit_code) == (1, 5)
    assert len(runs(instance)) == 2
    assert "not restarted (restart=on-failure:1: 1 done)" in err_log(instance)
    assert instance.is_running()  # as Singularity's: up, idle


def test_always_restarts_after_a_clean_exit_and_on_failure_does_not(make_image, start):
    body = '[ "$n" -le 1 ] && exit 0\nexec sleep 1000'
    always = start(make_image(startscript=COUNTING.format(body=body)), "always",
                   writable_tmpfs=True, restart="always")
    until(lambda: always.restarts == 1 and always.service_state.service == "running",
          "the restart after exit 0")
    clean = start(make_image(startscript=COUNTING.format(body="exit 0")), "clean",
                  writable_tmpfs=True, restart="on-failure")
    state = until(lambda: (s := clean.service_state) and s.service == "exited" and s,
                  "the clean exit")
    assert (state.restarts, state.exit_code) == (0, 0)
    assert "(restart=on-failure: not a failure)" in err_log(clean)


def test_a_stop_of_a_crash_looping_service_is_prompt_and_never_restarts_it(make_image, start):
    instance = start(make_image(startscript=COUNTING.format(body="sleep 0.05; exit 1")),
                     "looping", writable_tmpfs=True, restart="always")
    until(lambda: instance.restarts >= 3, "a few restarts")
    began = time.monotonic()
    instance.stop()
    assert time.monotonic() - began < 2
    assert not instance.is_running()


def test_a_restart_keeps_pid_1_its_namespaces_and_cgroup(make_image, start):
    image = make_image(startscript=COUNTING.format(body="exec sleep 1000"))
    instance = start(image, "kept", writable_tmpfs=True, network="none", restart="always")
    before = {ns: os.readlink(f"/proc/{instance.pid}/ns/{ns}") for ns in ("net", "mnt", "pid")}
    cgroup = instance.cgroup
    until(lambda: len(runs(instance)) == 1, "the first run")
    instance.restart()  # in place, on request: not counted
    until(lambda: len(runs(instance)) == 2, "the second run")
    assert runs(instance)[0][2] != runs(instance)[1][2]  # a new service process
    assert instance.is_running() and instance.restarts == 0
    assert {ns: os.readlink(f"/proc/{instance.pid}/ns/{ns}") for ns in before} == before
    assert instance.cgroup == cgroup
    assert "(a restart was asked for)" in err_log(instance)


def test_restart_on_request_works_without_a_policy(make_image, start):
    instance = start(make_image(startscript=COUNTING.format(body="exec sleep 1000")),
                     "plain", writable_tmpfs=True)
    until(lambda: len(runs(instance)) == 1, "the first run")
    assert instance.service_state is None  # no policy: no state file
    instance.restart()
    until(lambda: len(runs(instance)) == 2, "the restart")


def test_the_command_line_restarts_and_takes_the_policy(make_image, registry):
    image = make_image(startscript=COUNTING.format(body="exec sleep 1000"))
    env = {**os.environ, "INSTANCELIB_HOME": str(registry.root)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "instancelib", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    started = cli("instance", "start", "--writable-tmpfs", "--restart", "on-failure:2",
                  image.path, "cli")
    assert started.returncode == 0, started.stderr
    instance = registry.get("cli")
    assert instance.options["restart"] == "on-failure:2"
    until(lambda: len(runs(instance)) == 1, "the first run")
    restarted = cli("instance", "restart", "cli")
    assert restarted.returncode == 0, restarted.stderr
    until(lambda: len(runs(instance)) == 2, "the restart")
    bad = cli("instance", "start", "--restart", "sometimes", image.path, "bad")
    assert bad.returncode == 255 and bad.stderr.startswith("FATAL:") and "restart must be" in \
        bad.stderr


@pytest.mark.parametrize("bad", ["sometimes", "on-failure:0", "on-failure:x", "always:2",
                                 "no:1", ""])
def test_bad_policies_are_refused(bad, make_image, start, registry):
    with pytest.raises(InvalidArgument, match="restart must be"):
        start(make_image(), "bad", restart=bad)
    assert registry.list() == []


def test_policies_parse():
    assert parse_policy("no") == ("no", None)
    assert parse_policy("always") == ("always", None)
    assert parse_policy("on-failure") == ("on-failure", None)
    assert parse_policy("on-failure:3") == ("on-failure", 3)


# -- health checks -------------------------------------------------------------------------------


def fast(test, **timing):
    return HealthCheck(test, **{"interval": 0.1, "timeout": 2, "retries": 2, **timing})


def test_a_command_check_turns_healthy_then_unhealthy_when_it_fails(make_image, start):
    image = make_image(startscript="#!/bin/sh\ntouch /ok\nexec sleep 1000\n")
    instance = start(image, "checked", writable_tmpfs=True,
                     health=fast(["sh", "-c", "echo probing; test -e /ok"]), ready="health")
    health = instance.health
    assert (health.status, health.streak) == ("healthy", 0) and health.output == "probing"
    instance.exec(["rm", "/ok"])
    health = until(lambda: (h := instance.health) and h.status == "unhealthy" and h,
                   "unhealthy")
    assert health.streak >= 2 and "(exit status 1)" in health.output
    log = err_log(instance)
    assert "instancelib: health: healthy" in log
    assert "instancelib: health: unhealthy (2 failures in a row): probing" in log
    instance.exec(["touch", "/ok"])
    assert instance.wait_healthy(timeout=WAIT).status == "healthy"


def test_a_check_that_runs_too_long_fails_and_is_killed(make_image, start):
    instance = start(make_image(startscript="#!/bin/sh\nexec sleep 1000\n"), "slowcheck",
                     health=fast(["sleep", "30"], timeout=0.2, retries=1))
    health = until(lambda: (h := instance.health) and h.status == "unhealthy" and h,
                   "unhealthy")
    assert "(timed out after 0.2 s)" in health.output
    assert instance.exec(["sh", "-c", "ps | grep -c '[s]leep 30'"]).stdout.strip() in ("0", "1")


def test_tcp_and_http_checks_mean_the_instances_own_server(make_image, start):
    port = free_port()
    site = "#!/bin/sh\nmkdir -p /www && echo fine > /www/health\n" \
        f"exec httpd -f -p 127.0.0.1:{port} -h /www\n"
    web = start(make_image(startscript=site), "web", writable_tmpfs=True,
                health=fast(("http", port, "/health")), ready="health")
    assert "fine" in web.health.output
    tcp = start(make_image(startscript=site), "web-tcp", writable_tmpfs=True,
                network="none", health=fast(("tcp", port)), ready="health")
    assert tcp.health.status == "healthy"
    # The host's port is web's, not this instance's: never healthy.
    squatter = start(make_image(startscript="#!/bin/sh\nexec sleep 1000\n"), "squatter",
                     health=fast(("http", port, "/health"), retries=1))
    health = until(lambda: (h := squatter.health) and h.status == "unhealthy" and h,
                   "unhealthy")
    assert "does not listen" in health.output
    other = free_port()
    missing = start(make_image(startscript=site.replace(str(port), str(other))),
                    "missing-page", writable_tmpfs=True,
                    health=fast(("http", other, "/nope"), retries=1))
    health = until(lambda: (h := missing.health) and h.status == "unhealthy" and h,
                   "unhealthy")
    assert "(HTTP 404)" in health.output


def test_failures_in_the_start_period_do_not_count(make_image, start):
    image = make_image(startscript="#!/bin/sh\n(sleep 0.6; touch /ok) &\nexec sleep 1000\n")
    instance = start(image, "warming", writable_tmpfs=True,
                     health=fast(["test", "-e", "/ok"], retries=1, start_period=5))
    healthy = instance.wait_healthy(timeout=WAIT)
    assert healthy.status == "healthy"
    assert "health: unhealthy" not in err_log(instance)


def test_health_goes_on_after_the_caller_has_exited(make_image, registry, tmp_path):
    image = make_image(startscript="#!/bin/sh\ntouch /ok\nexec sleep 1000\n")
    script = f"""
from instancelib import HealthCheck, Image, Instance, InstanceRegistry
Instance.start(Image({image.path!r}), "orphan", writable_tmpfs=True,
               registry=InstanceRegistry({str(registry.root)!r}),
               health=HealthCheck(["test", "-e", "/ok"], interval=0.1, retries=1))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    instance = registry.get("orphan")
    assert instance.wait_healthy(timeout=WAIT).status == "healthy"
    instance.exec(["rm", "/ok"])
    until(lambda: (h := instance.health) and h.status == "unhealthy", "unhealthy")


def test_bad_health_checks_are_refused(make_image, start, registry):
    for bad in (("htp", 80), ("tcp", 0), ("http", 80, "no-slash"), [], "true"):
        with pytest.raises(InvalidArgument):
            start(make_image(), "bad", health=bad)
    with pytest.raises(InvalidArgument):
        HealthCheck(["true"], retries=0)
    with pytest.raises(InvalidArgument, match='ready="health"'):
        start(make_image(), "bad", ready="health")
    assert registry.list() == []


def test_the_command_line_takes_a_health_check(make_image, registry):
    image = make_image(startscript="#!/bin/sh\ntouch /ok\nexec sleep 1000\n")
    env = {**os.environ, "INSTANCELIB_HOME": str(registry.root)}
    started = subprocess.run(
        [sys.executable, "-m", "instancelib", "instance", "start", "--writable-tmpfs",
         "--health-cmd", "test -e /ok", "--health-interval", "100ms", "--health-retries", "1",
         "--ready", "health", image.path, "hc"], env=env, capture_output=True, text=True,
        timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    instance = registry.get("hc")
    assert instance.health.status == "healthy"
    assert instance.options["health"]["test"] == ["cmd", "/bin/sh", "-c", "test -e /ok"]
    assert instance.options["health"]["interval"] == 0.1


def test_instance_list_shows_the_service_and_its_health(make_image, registry):
    image = make_image(startscript=COUNTING.format(body='[ "$n" -le 1 ] && exit 2\n'
                                                        "exec sleep 1000"))
    env = {**os.environ, "INSTANCELIB_HOME": str(registry.root)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "instancelib", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    assert cli("instance", "start", image.path, "plain").returncode == 0
    assert cli("instance", "start", "--writable-tmpfs", "--restart", "on-failure",
               "--health-cmd", "true", "--health-interval", "100ms", image.path,
               "watched").returncode == 0
    watched = registry.get("watched")
    until(lambda: watched.restarts == 1 and watched.health is not None
          and watched.health.status == "healthy", "a restart and a pass")
    listed = json.loads(cli("instance", "list", "--json").stdout)["instances"]
    plain, supervised = sorted(listed, key=lambda i: i["instance"])
    assert set(plain) == {"instance", "pid", "img", "ip", "logErrPath", "logOutPath"}
    assert (supervised["service"], supervised["restarts"], supervised["serviceExitCode"],
            supervised["restartPolicy"]) == ("running", 1, 2, "on-failure")
    assert supervised["health"]["status"] == "healthy"
    table = cli("instance", "list", "--status").stdout.splitlines()
    assert table[0].split() == ["INSTANCE", "NAME", "PID", "SERVICE", "RESTARTS", "HEALTH",
                                "IMAGE"]
    assert table[1].split()[2:5] == ["-", "-", "-"]  # plain: no state kept
    assert table[2].split()[2:5] == ["running", "1", "healthy"]
    # The default table stays Singularity's.
    assert cli("instance", "list").stdout.splitlines()[0].split() == [
        "INSTANCE", "NAME", "PID", "IP", "IMAGE"]
