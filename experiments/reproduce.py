"""Runs every experiment config and writes results/RESULTS.md, results/results.json and figures.

    python -m experiments.reproduce --scale smoke            # what `make demo` runs (minutes on 2 CPUs)
    python -m experiments.reproduce --scale full --family vae
    python -m experiments.reproduce --scale full --only realnvp --arg mnist5k   # a config's named variant
    python -m experiments.reproduce --scale full --only ddpm --resume   # continue a timed-out run

Each config under experiments/<family>/<slug>.py is run in its own process through
`experiments.main` (a crash or a hang in one cannot take the others down), in a fresh work directory.
Each config declares the metrics it reports (`config.reports`) with the reference they are compared to:
either a value computed in the same run (`reference_metric`) or a cited number (`reference` plus
`reference_note`). Rows are keyed by (slug, scale), so smoke and full results live side by side; a full
run of one config's named variant (`--only realnvp --arg mnist5k` passes 'mnist5k' to `get_config`) is its
own row, slug 'realnvp:mnist5k'.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def discover(family: str | None = None, only: str | None = None) -> list[str]:
    """Experiment config files, sorted: experiments/<family>/<slug>.py."""
    paths = sorted(glob.glob(os.path.join(REPO, "experiments", "*", "*.py")))
    paths = [p for p in paths if not os.path.basename(p).startswith("_")]
    if family:
        paths = [p for p in paths if os.path.basename(os.path.dirname(p)) == family]
    if only:
        paths = [p for p in paths if os.path.splitext(os.path.basename(p))[0] == only]
    return paths


def load_config(path: str, arg: str | None):
    spec = importlib.util.spec_from_file_location("_exp_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if x != x:  # NaN
        return "nan"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.4e}"


def run_one(path: str, scale: str, out: str, timeout: float, arg: str | None = None, resume: bool = False) -> dict:
    family = os.path.basename(os.path.dirname(path))
    slug = os.path.splitext(os.path.basename(path))[0]
    variant = arg if scale == "full" else None  # a named variant of a full run gets its own row and dirs
    config = load_config(path, "smoke" if scale == "smoke" else variant)
    name = f"{slug}_{variant}" if variant else slug
    workdir = os.path.join(out, "workdirs", scale, family, name)
    if not resume:  # with resume, a timed-out or killed run continues from its last checkpoint in `workdir`
        shutil.rmtree(workdir, ignore_errors=True)
    # Trainers checkpoint under checkpoints/ (a runner of several trainings, such as the dequantisation
    # comparison, under <run>/checkpoints/); the custom runners' finished jobs sit under units/.
    state_dirs = [os.path.join(workdir, "units")] + glob.glob(os.path.join(workdir, "**", "checkpoints"),
                                                               recursive=True)
    resumed = resume and any(os.path.isdir(d) and bool(os.listdir(d)) for d in state_dirs)
    rel = os.path.relpath(path, REPO)
    suffix = ":smoke" if scale == "smoke" else (f":{variant}" if variant else "")
    cmd = [sys.executable, "-m", "experiments.main", f"--config={rel}{suffix}",
           f"--workdir={workdir}"]
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        log = proc.stdout[-3000:] + proc.stderr[-3000:]
    except subprocess.TimeoutExpired:
        status, log = f"timed out after {timeout:.0f} s", ""
    wall = time.perf_counter() - t0
    results = {}
    if os.path.exists(os.path.join(workdir, "results.json")):
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
    fig_dir = os.path.join(out, "figures", f"{family}_{name}")
    os.makedirs(fig_dir, exist_ok=True)
    figures = []
    for png in sorted(glob.glob(os.path.join(workdir, "*.png"))):
        shutil.copy(png, fig_dir)
        figures.append(os.path.relpath(os.path.join(fig_dir, os.path.basename(png)), out))
    article = dict(config.get("article") or {})
    reports = []
    for r in config.get("reports") or []:
        r = dict(r)
        value = results.get(r["metric"])
        ref = results.get(r["reference_metric"]) if r.get("reference_metric") else r.get("reference")
        reports.append(dict(metric=r["metric"], value=value, reference=ref,
                            reference_note=r.get("reference_note", r.get("reference_metric", ""))))
    if status != "ok":
        print(log, file=sys.stderr)
    if variant:
        slug, rel = f"{slug}:{variant}", f"{rel}:{variant}"
    if resumed and status == "ok":
        status = "ok (resumed)"  # wall_s then counts only the resumed part
    return dict(family=family, slug=slug, scale=scale, config=rel, status=status, wall_s=wall,
                article=article, reports=reports, figures=figures, results=results,
                command=" ".join(["python -m experiments.main", cmd[3], "--workdir=DIR"]))


def write_markdown(entries: list[dict], path: str) -> None:
    lines = ["# Results", "",
             "Written by `python -m experiments.reproduce` (`make demo` runs `--scale smoke`). Every value "
             "comes from the run that wrote this file; smoke runs are seconds-long and only show the "
             "pipeline works, full runs are the reproductions.", "",
             "| article | experiment | scale | metric | value | reference | reference source | wall (s) | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["family"], e["slug"], e["scale"])):
        art = e["article"]
        article = f"[{art.get('id', '')}](https://kexue.fm/archives/{art.get('id', '')}) {art.get('title', '')}"
        rows = e["reports"] or [dict(metric="–", value=None, reference=None, reference_note="")]
        for r in rows:
            lines.append(f"| {article} | `{e['config']}` | {e['scale']} | `{r['metric']}` | {_fmt(r['value'])} | "
                         f"{_fmt(r['reference'])} | {r['reference_note']} | {e['wall_s']:.1f} | {e['status']} |")
    lines += ["", "## Figures", ""]
    for e in entries:
        for fig in e["figures"]:
            lines.append(f"- {e['family']}/{e['slug']} ({e['scale']}): [{fig}]({fig})")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _merge_and_write(db_path: str, entry: dict, out: str) -> list[dict]:
    """Adds `entry` to the results database on disk (read again under an exclusive lock) and rewrites it."""
    with open(db_path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = {}
        if os.path.exists(db_path):
            with open(db_path) as f:
                db = {(e["slug"], e["scale"]): e for e in json.load(f)}
        db[(entry["slug"], entry["scale"])] = entry
        entries = list(db.values())
        tmp = db_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, db_path)
        write_markdown(entries, os.path.join(out, "RESULTS.md"))
    return entries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("smoke", "full"), default="smoke")
    parser.add_argument("--family", default=None, help="only experiments/<family>/")
    parser.add_argument("--only", default=None, help="only the experiment with this slug")
    parser.add_argument("--arg", default=None,
                        help="a named variant passed to get_config (e.g. mnist5k); needs --scale full, --only")
    parser.add_argument("--resume", action="store_true",
                        help="keep each work directory, so an interrupted run continues from its last checkpoint")
    parser.add_argument("--out", default=os.path.join(REPO, "results"))
    parser.add_argument("--timeout", type=float, default=None, help="seconds per experiment")
    args = parser.parse_args(argv)
    # one config at a time: a config that does not know the variant would run its default under its name
    if args.arg is not None and (args.scale != "full" or args.arg == "smoke" or args.only is None):
        parser.error(f"--arg must be a named variant other than 'smoke' and needs --scale full and --only SLUG; "
                     f"got --arg {args.arg!r} with --scale {args.scale} and --only {args.only!r}")
    timeout = args.timeout or (900 if args.scale == "smoke" else 3600)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    db_path = os.path.join(out, "results.json")
    paths = discover(args.family, args.only)
    if not paths:
        print("no experiment configs matched", file=sys.stderr)
        return 2
    failures = 0
    variant = f":{args.arg}" if args.arg else ""
    for path in paths:
        print(f"[reproduce] {os.path.relpath(path, REPO)}{variant} ({args.scale}) ...", flush=True)
        entry = run_one(path, args.scale, out, timeout, args.arg, resume=args.resume)
        failures += not entry["status"].startswith("ok")
        summary = ", ".join(f"{r['metric']}={_fmt(r['value'])}" for r in entry["reports"])
        print(f"[reproduce]   {entry['status']} in {entry['wall_s']:.1f} s: {summary}", flush=True)
        # Rewritten after every experiment, so an interrupted run keeps what it measured. The database is
        # re-read under a lock first, so two reproduce runs with different --only keep each other's rows.
        _merge_and_write(db_path, entry, out)
    print(f"[reproduce] wrote {os.path.join(out, 'RESULTS.md')} ({failures} failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
