"""experiments/reproduce.py bookkeeping: variant rows, commands and work directories (the runs are faked)."""
import json
import os
import subprocess

import pytest

from experiments import reproduce


def _fake_run(calls):
    def run(cmd, **kwargs):
        calls.append(cmd)
        workdir = next(c for c in cmd if c.startswith("--workdir=")).split("=", 1)[1]
        os.makedirs(workdir, exist_ok=True)
        value = 1.0 if any(c.endswith(":mnist5k") for c in cmd) else 2.0
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"test/bpd": value}, f)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_a_named_variant_is_its_own_row_next_to_the_default(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", _fake_run(calls))
    out = str(tmp_path)
    assert reproduce.main(["--scale", "full", "--only", "realnvp", "--arg", "mnist5k", "--out", out]) == 0
    assert reproduce.main(["--scale", "full", "--only", "realnvp", "--out", out]) == 0
    assert "--config=experiments/flows/realnvp.py:mnist5k" in calls[0]
    assert f"--workdir={out}/workdirs/full/flows/realnvp_mnist5k" in calls[0]
    assert "--config=experiments/flows/realnvp.py" in calls[1]
    assert f"--workdir={out}/workdirs/full/flows/realnvp" in calls[1]
    with open(tmp_path / "results.json") as f:
        rows = {e["slug"]: e for e in json.load(f)}
    assert set(rows) == {"realnvp", "realnvp:mnist5k"}
    assert rows["realnvp:mnist5k"]["results"] == {"test/bpd": 1.0}
    assert rows["realnvp"]["results"] == {"test/bpd": 2.0}
    assert rows["realnvp:mnist5k"]["config"] == "experiments/flows/realnvp.py:mnist5k"
    assert "`experiments/flows/realnvp.py:mnist5k` | full | `test/bpd` | 1 |" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.parametrize("argv", [["--scale", "smoke", "--arg", "mnist5k", "--only", "realnvp"],
                                  ["--scale", "full", "--arg", "smoke", "--only", "realnvp"],
                                  ["--scale", "full", "--arg", "mnist5k", "--family", "flows"]])
def test_arg_needs_full_scale_one_config_and_a_named_variant(argv, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(argv)
    assert ("--arg must be a named variant other than 'smoke' and needs --scale full and --only SLUG"
            in capsys.readouterr().err)


def test_resume_keeps_the_workdir_and_marks_the_row(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", _fake_run(calls))
    out = str(tmp_path)
    ckpt = tmp_path / "workdirs" / "full" / "flows" / "realnvp" / "checkpoints" / "2000"
    ckpt.mkdir(parents=True)
    assert reproduce.main(["--scale", "full", "--only", "realnvp", "--resume", "--out", out]) == 0
    assert ckpt.is_dir()  # kept: experiments.main resumes from it
    with open(tmp_path / "results.json") as f:
        assert json.load(f)[0]["status"] == "ok (resumed)"
    assert reproduce.main(["--scale", "full", "--only", "realnvp", "--out", out]) == 0
    assert not ckpt.exists()  # without --resume the run starts from scratch
    with open(tmp_path / "results.json") as f:
        assert json.load(f)[0]["status"] == "ok"
