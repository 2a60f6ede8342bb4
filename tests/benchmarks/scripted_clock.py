"""A scripted stand-in for `time.perf_counter`, for the benchmarks' timing arithmetic.

Every benchmark times an interval as `t0 = perf_counter(); work(); perf_counter() - t0`, so its calls come in
(start, end) pairs. `ScriptedClock(intervals)` makes the k-th pair exactly `intervals[k]` apart: starts are
the integers 1, 2, 3, ... and the intervals are multiples of a power of two below 1 s, so `end - start`
is exact in float64. `install(module, clock)` swaps the benchmark module's own `time` for a copy whose
`perf_counter` is the clock, leaving the real `time` module (which JAX also uses) alone.

`no_compile(monkeypatch, module)` gives the benchmark module a `jax` whose `jit` builds no program: the
"jitted" function returns its argument (its arguments, if several) unchanged. Compiling every sampler on
2 CPU cores takes 10-20 s per benchmark; what these tests check is the benchmark's arithmetic on the
intervals, and the samplers themselves are tested in tests/samplers.
"""
import time
import types

import jax


class ScriptedClock:
    def __init__(self, intervals):
        self.intervals = [float(v) for v in intervals]
        assert all(0 < v < 1 for v in self.intervals)
        self.calls = 0

    def __call__(self) -> float:
        k, is_end = divmod(self.calls, 2)
        self.calls += 1
        if k >= len(self.intervals):
            raise AssertionError(f"the benchmark timed more than the {len(self.intervals)} scripted intervals")
        return float(k + 1) + (self.intervals[k] if is_end else 0.0)

    def assert_consumed(self):
        assert self.calls == 2 * len(self.intervals), (
            f"the benchmark made {self.calls} perf_counter calls; the script has {len(self.intervals)} intervals")


def install(monkeypatch, module, intervals) -> ScriptedClock:
    clock = ScriptedClock(intervals)
    fake = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    fake.perf_counter = clock
    monkeypatch.setattr(module, "time", fake)
    return clock


def close(got: float, want: float, decimals: int) -> bool:
    """`got` (as printed with `decimals` decimals) is `want` rounded to that many decimals."""
    return abs(got - want) <= 0.5 * 10.0 ** -decimals + 1e-9


class _NoCompileJax(types.ModuleType):
    """`jax`, except that `jit(f)` returns a function that hands back its argument(s) without computing."""

    def __getattr__(self, name):
        return getattr(jax, name)

    @staticmethod
    def jit(fn, **kwargs):
        return lambda *args, **kw: args[0] if len(args) == 1 else args


def no_compile(monkeypatch, module):
    monkeypatch.setattr(module, "jax", _NoCompileJax("jax"))
