"""Test utilities shared across families."""
import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, *, devices: int = 1, timeout: float = 240, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with `devices` simulated CPU devices."""
    full_env = dict(os.environ)
    full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    full_env["JAX_PLATFORMS"] = "cpu"
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


def run_for_json(code: str, *, devices: int = 1, timeout: float = 240, marker: str = "LOSSES") -> dict:
    """Runs `code` (which prints `marker` followed by one JSON object) with `devices` simulated CPU devices
    and returns that object: the 1-vs-8-device comparisons of the runners with their own loops use it."""
    out = run_python(code, devices=devices, timeout=timeout).stdout
    return json.loads(out.split(marker, 1)[1])


def set_dotted(config, key: str, value) -> None:
    """config['a']['b'] = value for key 'a.b' (ConfigDicts and plain dicts alike)."""
    *parents, leaf = key.split(".")
    node = config
    for k in parents:
        node = node[k]
    node[leaf] = value


# Every XLA backend compilation of this process, as JAX reports it; the "config mistakes fail before anything
# compiles" tests clear it before the call and assert it is still empty after.
BACKEND_COMPILES: list[str] = []


def _record_compile(event: str, duration: float, **kwargs) -> None:
    if "backend_compile" in event:
        BACKEND_COMPILES.append(event)


def _register_compile_listener() -> None:
    import jax

    jax.monitoring.register_event_duration_secs_listener(_record_compile)


_register_compile_listener()
