"""experiments/reproduce.py and experiments/main.py against expectations written out by hand.

Nothing trains: reproduce runs a tree of tiny fake configs (`reproduce.REPO` pointed at tmp_path) with
`subprocess.run` faked, and experiments.main is run on a fake config whose runner is a few lines of Python.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from experiments import reproduce

_CONFIG = textwrap.dedent("""
    import ml_collections

    def get_config(arg=None):
        config = ml_collections.ConfigDict()
        config.article = dict(id="{id}", title="{title}")
        extra = [] if arg is None else [dict(metric="arg_" + arg)]
        config.reports = [dict(metric="m", reference_metric="ref_m"),
                          dict(metric="n", reference=0.5, reference_note="cited")] + extra
        return config
""")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository with experiments/fam/{alpha,beta,gamma}.py, experiments/other/{delta,delta_x}.py, a helper."""
    root = tmp_path / "repo"
    for family, slug, art in [("fam", "alpha", "1"), ("fam", "beta", "2"), ("fam", "gamma", "3"),
                              ("other", "delta", "4"), ("other", "delta_x", "5")]:
        (root / "experiments" / family).mkdir(parents=True, exist_ok=True)
        (root / "experiments" / family / f"{slug}.py").write_text(
            _CONFIG.format(id=art, title=f"{slug} article"))
    (root / "experiments" / "fam" / "_helper.py").write_text("raise RuntimeError('not a config')\n")
    monkeypatch.setattr(reproduce, "REPO", str(root))
    return root


class FakeRun:
    """subprocess.run for experiments.main: alpha/delta succeed, beta exits 3, gamma times out.

    A successful run writes results.json (m = self.m, plus 'arg_<suffix>' = 7 for a ':suffix' config)
    and one figure; beta leaves partial results behind.
    """

    def __init__(self):
        self.calls, self.kwargs, self.m = [], [], 1.23456

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        self.kwargs.append(kwargs)
        config = next(c for c in cmd if c.startswith("--config=")).split("=", 1)[1]
        workdir = next(c for c in cmd if c.startswith("--workdir=")).split("=", 1)[1]
        slug = os.path.splitext(os.path.basename(config.split(":")[0]))[0]
        os.makedirs(workdir, exist_ok=True)
        if slug == "gamma":
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
        if slug == "beta":
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump({"m": 9.0}, f)
            return subprocess.CompletedProcess(cmd, 3, "partial", "boom")
        results = {"m": self.m, "ref_m": 2.0, "n": 12345.6}
        if ":" in config:
            results["arg_" + config.split(":")[1]] = 7.0
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f)
        with open(os.path.join(workdir, "samples.png"), "wb") as f:
            f.write(b"png")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def fake_run(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(reproduce.subprocess, "run", fake)
    return fake


def _rows(out):
    with open(os.path.join(out, "results.json")) as f:
        return {(e["slug"], e["scale"]): e for e in json.load(f)}


def test_discover_skips_helpers_and_filters_by_family_and_slug(repo):
    exp = str(repo / "experiments")
    assert reproduce.discover() == [f"{exp}/fam/alpha.py", f"{exp}/fam/beta.py", f"{exp}/fam/gamma.py",
                                    f"{exp}/other/delta.py", f"{exp}/other/delta_x.py"]
    assert reproduce.discover(family="other") == [f"{exp}/other/delta.py", f"{exp}/other/delta_x.py"]
    assert reproduce.discover(only="delta") == [f"{exp}/other/delta.py"]
    assert reproduce.discover(only="beta") == [f"{exp}/fam/beta.py"]
    assert reproduce.discover(family="other", only="beta") == []


def test_fmt():
    assert reproduce._fmt(None) == "–"
    assert reproduce._fmt("n/a") == "n/a"
    assert reproduce._fmt(float("nan")) == "nan"
    assert reproduce._fmt(1.23456) == "1.235"
    assert reproduce._fmt(2.0) == "2"
    assert reproduce._fmt(9999.4) == "9999"
    assert reproduce._fmt(12345.6) == "1.2346e+04"
    assert reproduce._fmt(-12345.6) == "-1.2346e+04"
    assert reproduce._fmt(0.000123456) == "0.0001235"


def test_smoke_run_loads_smoke_and_writes_its_entry(repo, tmp_path, fake_run):
    out = str(tmp_path / "out")
    assert reproduce.main(["--scale", "smoke", "--only", "alpha", "--out", out]) == 0
    assert fake_run.calls == [[sys.executable, "-m", "experiments.main", "--config=experiments/fam/alpha.py:smoke",
                               f"--workdir={out}/workdirs/smoke/fam/alpha"]]
    assert fake_run.kwargs[0]["cwd"] == str(repo)
    assert fake_run.kwargs[0]["timeout"] == 900
    (entry,) = _rows(out).values()
    assert entry["family"] == "fam" and entry["slug"] == "alpha" and entry["scale"] == "smoke"
    assert entry["config"] == "experiments/fam/alpha.py" and entry["status"] == "ok"
    assert entry["command"] == "python -m experiments.main --config=experiments/fam/alpha.py:smoke --workdir=DIR"
    assert entry["article"] == {"id": "1", "title": "alpha article"}
    # get_config('smoke') was loaded: its extra report is there, with the value the run wrote
    assert entry["reports"] == [
        dict(metric="m", value=1.23456, reference=2.0, reference_note="ref_m"),
        dict(metric="n", value=12345.6, reference=0.5, reference_note="cited"),
        dict(metric="arg_smoke", value=7.0, reference=None, reference_note="")]
    assert entry["figures"] == ["figures/fam_alpha/samples.png"]
    assert os.path.isfile(os.path.join(out, "figures", "fam_alpha", "samples.png"))
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    row = "| [1](https://kexue.fm/archives/1) alpha article | `experiments/fam/alpha.py` | smoke |"
    assert f"{row} `m` | 1.235 | 2 | ref_m | " in md
    assert f"{row} `n` | 1.2346e+04 | 0.5 | cited | " in md
    assert f"{row} `arg_smoke` | 7 | – |  | " in md
    assert "- fam/alpha (smoke): [figures/fam_alpha/samples.png](figures/fam_alpha/samples.png)" in md


def test_full_run_loads_the_default_config_and_the_variant(repo, tmp_path, fake_run):
    out = str(tmp_path / "out")
    assert reproduce.main(["--scale", "full", "--only", "alpha", "--out", out]) == 0
    assert reproduce.main(["--scale", "full", "--only", "alpha", "--arg", "v1", "--out", out]) == 0
    assert [c[3:] for c in fake_run.calls] == [
        ["--config=experiments/fam/alpha.py", f"--workdir={out}/workdirs/full/fam/alpha"],
        ["--config=experiments/fam/alpha.py:v1", f"--workdir={out}/workdirs/full/fam/alpha_v1"]]
    assert [k["timeout"] for k in fake_run.kwargs] == [3600, 3600]
    rows = _rows(out)
    assert set(rows) == {("alpha", "full"), ("alpha:v1", "full")}
    assert [r["metric"] for r in rows["alpha", "full"]["reports"]] == ["m", "n"]  # get_config(None)
    assert [r["metric"] for r in rows["alpha:v1", "full"]["reports"]] == ["m", "n", "arg_v1"]
    assert rows["alpha:v1", "full"]["reports"][2]["value"] == 7.0
    assert rows["alpha:v1", "full"]["figures"] == ["figures/fam_alpha_v1/samples.png"]
    assert rows["alpha:v1", "full"]["command"] == ("python -m experiments.main "
                                                   "--config=experiments/fam/alpha.py:v1 --workdir=DIR")


def test_smoke_and_full_rows_live_side_by_side_and_a_rerun_replaces_its_row(repo, tmp_path, fake_run):
    out = str(tmp_path / "out")
    assert reproduce.main(["--scale", "full", "--only", "alpha", "--out", out]) == 0
    assert reproduce.main(["--scale", "smoke", "--only", "alpha", "--out", out]) == 0
    rows = _rows(out)
    assert set(rows) == {("alpha", "full"), ("alpha", "smoke")}
    assert rows["alpha", "full"]["results"]["m"] == 1.23456
    fake_run.m = 0.5
    assert reproduce.main(["--scale", "smoke", "--only", "alpha", "--out", out]) == 0
    rows = _rows(out)
    assert set(rows) == {("alpha", "full"), ("alpha", "smoke")}
    assert rows["alpha", "smoke"]["results"]["m"] == 0.5  # the new run's row
    assert rows["alpha", "full"]["results"]["m"] == 1.23456  # untouched
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "`experiments/fam/alpha.py` | smoke | `m` | 0.5 |" in md
    assert "`experiments/fam/alpha.py` | full | `m` | 1.235 |" in md
    assert "1.235 | 2 | ref_m | " in md and md.count("| `m` |") == 2


def test_failed_and_timed_out_runs_are_counted_and_set_the_exit_status(repo, tmp_path, fake_run, capsys):
    out = str(tmp_path / "out")
    assert reproduce.main(["--scale", "smoke", "--family", "fam", "--timeout", "5", "--out", out]) == 1
    assert [k["timeout"] for k in fake_run.kwargs] == [5.0, 5.0, 5.0]
    assert "(2 failed)" in capsys.readouterr().out
    rows = _rows(out)
    assert rows["alpha", "smoke"]["status"] == "ok"
    assert rows["beta", "smoke"]["status"] == "failed (exit 3)"
    assert rows["beta", "smoke"]["results"] == {"m": 9.0}  # what the failed run left is still shown
    assert rows["gamma", "smoke"]["status"] == "timed out after 5 s"
    assert rows["gamma", "smoke"]["results"] == {}
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "`experiments/fam/beta.py` | smoke | `m` | 9 | – | ref_m | " in md
    assert md.count("| failed (exit 3) |") == 3 and md.count("| timed out after 5 s |") == 3
    # a later run of the one good config alone succeeds and keeps the others' rows
    assert reproduce.main(["--scale", "smoke", "--only", "alpha", "--out", out]) == 0
    assert "(0 failed)" in capsys.readouterr().out
    assert set(_rows(out)) == {("alpha", "smoke"), ("beta", "smoke"), ("gamma", "smoke")}


@pytest.mark.parametrize("state, resumed", [("units/job_0/done.json", True),  # a custom runner's finished job
                                            ("run_a/checkpoints/40/x", True),  # a runner of several trainings
                                            ("checkpoints/", False),  # empty: nothing to resume from
                                            ("units/", False),
                                            ("other/keep.txt", False)])
def test_resume_is_marked_only_when_there_is_saved_state(repo, tmp_path, fake_run, state, resumed):
    out = tmp_path / "out"
    target = out / "workdirs" / "full" / "fam" / "alpha" / state
    if state.endswith("/"):
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True)
        target.write_text("saved")
    assert reproduce.main(["--scale", "full", "--only", "alpha", "--resume", "--out", str(out)]) == 0
    assert target.exists()
    assert _rows(str(out))["alpha", "full"]["status"] == ("ok (resumed)" if resumed else "ok")


def test_no_matching_config_is_exit_2(repo, tmp_path, fake_run):
    assert reproduce.main(["--scale", "smoke", "--only", "nosuch", "--out", str(tmp_path / "out")]) == 2
    assert fake_run.calls == []


def _entry(family, slug, scale, reports=(), figures=(), status="ok", wall=1.25):
    return dict(family=family, slug=slug, scale=scale, config=f"experiments/{family}/{slug}.py", status=status,
                wall_s=wall, article=dict(id="7", title="T"), reports=list(reports), figures=list(figures),
                results={}, command="")


def test_write_markdown_sorts_rows_by_family_slug_scale_and_writes_every_report(tmp_path):
    two = [dict(metric="a", value=1.0, reference=None, reference_note=""),
           dict(metric="b", value=float("nan"), reference=3.0, reference_note="paper")]
    entries = [_entry("zf", "s", "smoke", figures=["figures/zf_s/x.png"]),
               _entry("af", "y", "smoke", reports=two, status="failed (exit 1)", wall=12.34),
               _entry("af", "y", "full", reports=two[:1]),
               _entry("af", "x", "full", figures=["figures/af_x/p.png", "figures/af_x/q.png"])]
    path = tmp_path / "RESULTS.md"
    reproduce.write_markdown(entries, str(path))
    lines = path.read_text().splitlines()
    art = "[7](https://kexue.fm/archives/7) T"
    table = [line for line in lines if line.startswith(f"| {art} |")]
    assert table == [
        f"| {art} | `experiments/af/x.py` | full | `–` | – | – |  | 1.2 | ok |",
        f"| {art} | `experiments/af/y.py` | full | `a` | 1 | – |  | 1.2 | ok |",
        f"| {art} | `experiments/af/y.py` | smoke | `a` | 1 | – |  | 12.3 | failed (exit 1) |",
        f"| {art} | `experiments/af/y.py` | smoke | `b` | nan | 3 | paper | 12.3 | failed (exit 1) |",
        f"| {art} | `experiments/zf/s.py` | smoke | `–` | – | – |  | 1.2 | ok |"]
    figures = lines[lines.index("## Figures"):]
    assert [line for line in figures if line.startswith("- ")] == [
        "- zf/s (smoke): [figures/zf_s/x.png](figures/zf_s/x.png)",
        "- af/x (full): [figures/af_x/p.png](figures/af_x/p.png)",
        "- af/x (full): [figures/af_x/q.png](figures/af_x/q.png)"]


def test_merge_replaces_only_the_row_with_the_same_slug_and_scale(tmp_path):
    db = str(tmp_path / "results.json")
    reproduce._merge_and_write(db, _entry("f", "s", "full", status="ok"), str(tmp_path))
    reproduce._merge_and_write(db, _entry("f", "s", "smoke", status="ok"), str(tmp_path))
    reproduce._merge_and_write(db, _entry("f", "s:v", "full", status="ok"), str(tmp_path))
    entries = reproduce._merge_and_write(db, _entry("f", "s", "smoke", status="failed (exit 1)"), str(tmp_path))
    with open(db) as f:
        on_disk = json.load(f)
    assert on_disk == entries
    assert sorted((e["slug"], e["scale"], e["status"]) for e in on_disk) == [
        ("s", "full", "ok"), ("s", "smoke", "failed (exit 1)"), ("s:v", "full", "ok")]
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.count("`experiments/f/s.py` | smoke |") == 1 and "| smoke | `–` | – | – |  | 1.2 | failed (exit 1) |" in md


# --- experiments.main, run as a process on a fake config and runner -------------------------------------------

_MAIN_CONFIG = textwrap.dedent("""
    import ml_collections

    def get_config(arg=None):
        config = ml_collections.ConfigDict()
        config.runner = "fake_runner_mod." + ("fail" if arg and arg.startswith("fail") else "run")
        config.arg = str(arg)
        config.num_steps = 3
        config.lr = 0.1
        return config
""")
_MAIN_RUNNER = textwrap.dedent("""
    import os

    def run(config, workdir):
        os.makedirs(workdir, exist_ok=True)
        return dict(arg=config.arg, num_steps=config.num_steps, lr=config.lr, workdir=workdir)

    def fail(config, workdir):
        if config.arg == "fail_config":
            from kexue_jax.core.config import ConfigError
            raise ConfigError("`lr` must be positive")
        from kexue_jax.core.train import NonFiniteError
        raise NonFiniteError("loss is nan at step 2")
""")


def _main(tmp_path, *args):
    (tmp_path / "fake_cfg.py").write_text(_MAIN_CONFIG)
    (tmp_path / "fake_runner_mod.py").write_text(_MAIN_RUNNER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), reproduce.REPO]))
    return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=reproduce.REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_main_runs_the_config_runner_with_variant_overrides_and_workdir(tmp_path):
    workdir = str(tmp_path / "w")
    proc = _main(tmp_path, f"--config={tmp_path}/fake_cfg.py:big", f"--workdir={workdir}",
                 "--config.num_steps=7", "--config.lr=0.25")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dict(arg="big", num_steps=7, lr=0.25, workdir=workdir)
    assert os.path.isdir(workdir)


@pytest.mark.parametrize("arg, message", [("fail_config", "error: `lr` must be positive"),
                                          ("fail_nan", "error: loss is nan at step 2")])
def test_main_config_error_or_nan_is_exit_1_with_the_message(tmp_path, arg, message):
    proc = _main(tmp_path, f"--config={tmp_path}/fake_cfg.py:{arg}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == message
    assert proc.stdout == ""


def test_main_needs_a_workdir(tmp_path):
    proc = _main(tmp_path, f"--config={tmp_path}/fake_cfg.py", "--workdir=")
    assert proc.returncode != 0
    assert "--config and --workdir are required" in proc.stderr
    assert proc.stdout == ""
