"""benchmarks/samplers_overhead.py: each printed number is its documented formula of the timed intervals.

main() runs with the conv denoiser, batch 2, 2 and 4 steps and 2 repeats; its clock is scripted so that every
interval is known, and its `jax.jit` is a stand-in that computes nothing (see scripted_clock.py).
Documented: t_D = min over the two measurements of (T_chain(n2) − T_chain(n1)) / (n2 − n1); per sampler,
overhead = (min T_sampler − min T_chain) / (n2 · t_D) and own ops = (min T_sampler,free − min T_chain,free) /
(n2 · t_D), mins over the repeats.
"""
import sys

from benchmarks import samplers_overhead as bench
from tests.benchmarks.scripted_clock import close, install, no_compile

CASES = ["euler", "ddpm", "heun", "heun_churn", "dpm_solver_2", "dpm_solver_pp_3m", "ipndm", "deis", "unipc",
         "amed (fixed r)", "amed (predictor)", "amed_plugin", "amed_plugin_dpmpp"]
N1, N2, R = 2, 4, 2
U = 2.0 ** -12  # time unit (~0.24 ms); all intervals are multiples of it
D = 64 * U  # the denoiser evaluation time the second t_D measurement gives


def _script():
    """(intervals in the benchmark's timing order, expected values)."""
    iv = []
    # t_D, first measurement: chain(n2) then chain(n1), R repeats each -> (min − min)/(n2 − n1) = D + 4U
    iv += [4 * D + 8 * U + 3 * U, 4 * D + 8 * U, 2 * D, 2 * D + 5 * U]
    rows, own = {}, {}
    for i, name in enumerate(CASES):  # against the U-Net stand-in: sampler, chain alternating, R repeats
        chain = 4 * D + 2 * i * U
        s, c = [chain + (i + 1) * 8 * U + 9 * U, chain + (i + 1) * 8 * U], [chain, chain + 5 * U]
        iv += [s[0], c[0], s[1], c[1]]
        rows[name] = (min(s), min(c))
    for i, name in enumerate(CASES):  # near-free denoiser: 10·R repeats, the minima somewhere in the middle
        s = [8 * U + (i + 1) * U + (3 if j != 7 else 0) * U + j * U / 4 for j in range(10 * R)]
        c = [8 * U + (2 if j != 3 else 0) * U + j * U / 4 for j in range(10 * R)]
        for a, b in zip(s, c):
            iv += [a, b]
        own[name] = (min(s), min(c))
    # t_D, second measurement -> D (the smaller, so t_D = D and "before" = D + 4U)
    iv += [4 * D + 2 * U, 4 * D, 2 * D + U, 2 * D]
    return iv, rows, own, D + 4 * U, D


def test_printed_overheads_follow_the_documented_formula(monkeypatch, capsys):
    intervals, rows, own, t_d_start, t_d = _script()
    clock = install(monkeypatch, bench, intervals)
    no_compile(monkeypatch, bench)
    monkeypatch.setattr(sys, "argv", ["samplers_overhead", "--denoiser", "conv", "--batch", "2",
                                      "--steps", f"{N1},{N2}", "--repeats", str(R)])
    bench.main()
    clock.assert_consumed()
    out = capsys.readouterr().out
    lines = out.splitlines()

    den = next(line for line in lines if line.startswith("denoiser:"))
    got_td = float(den.split()[1])
    got_before = float(den.split("(before ")[1].split(";")[0])
    assert close(got_td, 1e3 * t_d, 3) and close(got_before, 1e3 * t_d_start, 3), den

    seen, worst = [], -1.0
    for line in lines:
        name = line[:18].rstrip()
        if name not in rows:
            continue
        seen.append(name)
        ms_run, ms_chain, _per, overhead, free_ms, own_ratio = (float(v) for v in line[18:].split())
        (t_s, t_c), (f_s, f_c) = rows[name], own[name]
        want_over = (t_s - t_c) / (N2 * t_d)
        want_own = (f_s - f_c) / (N2 * t_d)
        worst = max(worst, want_own)
        assert close(ms_run, 1e3 * t_s, 1) and close(ms_chain, 1e3 * t_c, 1), line
        assert close(overhead, want_over, 3), (line, want_over)
        assert close(free_ms, 1e3 * f_s, 2), line
        assert close(own_ratio, want_own, 4), (line, want_own)
        assert want_over > 0.01 and want_own > 0.001  # an inverted or self-referenced difference shows
    assert seen == CASES
    last = next(line for line in lines if line.startswith("largest own-ops overhead"))
    assert close(float(last.split(": ")[1].split()[0]), worst, 4), last
    assert ("above" if worst > 0.05 else "within") in last
