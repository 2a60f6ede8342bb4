"""benchmarks/diffusion_throughput.py: each printed rate and ratio is its documented formula of the timed intervals.

main() runs with the digits U-Net, batch 2, NFE 3, 2 train steps per timed run, 2 repeats and 2 ancestral
steps; its clock is scripted so that every interval is known. The trainer's step runs for real; the programs
the benchmark jits itself (forward pass, samplers, chains, ancestral sampler) are stand-ins that compute
nothing (see scripted_clock.py): compiling them all takes ~15 s on 2 cores. Documented: t_train = min over repeats of the
run's time / train steps, t_fwd = min of one forward pass; train images/s = batch / t_train and its ratio
t_train / t_fwd; per sampler images/s = batch / min T_sampler and 'vs chain' = min T_chain / min T_sampler
(sampler images/s ÷ chain images/s); ancestral DDPM: batch / T, T / steps per step, and T / steps / t_fwd.
"""
from benchmarks import diffusion_throughput as bench
from tests.benchmarks.scripted_clock import close, install, no_compile

CASES = ["ddim", "ddpm (ancestral)", "heun", "dpm_solver_2", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "ipndm",
         "deis", "unipc", "amed (predictor, AFS)", "amed_plugin (iPNDM)"]
BATCH, NFE, TRAIN_STEPS, R, DDPM_STEPS = 2, 3, 2, 2, 2
U = 2.0 ** -8  # time unit (~3.9 ms); all intervals are multiples of it


def test_printed_rates_and_ratios_follow_the_documented_formula(monkeypatch, capsys):
    iv = [64 * U + 3 * U, 64 * U]  # R runs of TRAIN_STEPS train steps -> t_train = 32U
    iv += [20 * U, 20 * U + 5 * U]  # R forward passes -> t_fwd = 20U
    t_train, t_fwd = 64 * U / TRAIN_STEPS, 20 * U
    want = {}
    for i, name in enumerate(CASES):  # sampler, chain alternating, R repeats
        s, c = (16 + 2 * i) * U, (40 + 3 * i) * U
        iv += [s + 7 * U, c, s, c + 2 * U]
        want[name] = (BATCH / s, c / s)
    t_anc = 48 * U  # max(1, R // 3) = 1 run of the ancestral sampler
    iv += [t_anc]
    clock = install(monkeypatch, bench, iv)
    no_compile(monkeypatch, bench)
    bench.main(["--model", "digits", "--batch", str(BATCH), "--nfe", str(NFE), "--train-steps", str(TRAIN_STEPS),
                "--repeats", str(R), "--ddpm-steps", str(DDPM_STEPS)])
    clock.assert_consumed()
    lines = capsys.readouterr().out.splitlines()

    train = next(line for line in lines if line.startswith("train:")).split()
    # train:  <images/s> images/s (<ms> ms/step; <ratio> x one forward pass of <ms> ms)
    assert close(float(train[1]), BATCH / t_train, 1), train
    assert close(float(train[3][1:]), 1e3 * t_train, 1), train
    assert close(float(train[5]), t_train / t_fwd, 2) and t_train / t_fwd > 1.1, train
    assert close(float(train[11]), 1e3 * t_fwd, 1), train

    seen = []
    for line in lines:
        name = line[:24].rstrip()
        if name not in want:
            continue
        seen.append(name)
        steps, k, ips, vs_chain = line[24:].split()
        assert 1 <= int(steps) <= NFE and 1 <= int(k) <= NFE, line
        assert close(float(ips), want[name][0], 1), (line, want[name])
        assert close(float(vs_chain), want[name][1], 3) and want[name][1] > 1.5, (line, want[name])
    assert seen == CASES

    anc = next(line for line in lines if line.startswith("ddpm ancestral")).split(": ")[1].split()
    # <images/s> images/s (<ms> ms per step; <ratio> x one forward pass)
    assert close(float(anc[0]), BATCH / t_anc, 2), anc
    assert close(float(anc[2][1:]), 1e3 * t_anc / DDPM_STEPS, 1), anc
    assert close(float(anc[6]), t_anc / DDPM_STEPS / t_fwd, 2) and t_anc / DDPM_STEPS / t_fwd > 1.1, anc
