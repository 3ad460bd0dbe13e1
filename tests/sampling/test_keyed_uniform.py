"""The sampler's counter-based uniforms (sedd_megatron/sampling/rng.py): the int64 tensor code
against an independent Python-integer evaluation of the documented construction, the range of
u, and a battery of statistical checks over about 10^6 draws (uniformity, independence of
neighbours along every key axis, bit balance, no overlapping streams) that the real stream
passes and deliberately weak variants fail."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sedd_megatron.sampling import rng

MASK64 = (1 << 64) - 1
# p-values below this fail a check: the battery runs about 80 tests, so a correct generator
# fails one by chance with probability below 1e-4
ALPHA = 1e-6


# --------------------------------------------------------------------------------------------
# An independent evaluation of the construction in rng's docstring, on Python integers


def ref_mix(x: int) -> int:
    """SplitMix64's output function (Stafford's mix 13), modulo 2^64."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def ref_row_key(seed: int, sample: int, step: int, position: int) -> int:
    k = ref_mix(ref_mix(seed ^ rng.C_SEED) + ref_mix(sample ^ rng.C_SAMPLE))
    k = ref_mix(k + ref_mix((step & MASK64) ^ rng.C_STEP))
    return ref_mix(k + ref_mix(position ^ rng.C_POSITION))


def ref_bits(key: int, column: int) -> int:
    return ref_mix(ref_mix(key + column * 0x9E3779B97F4A7C15) ^ key)


def ref_uniform(bits: int) -> float:
    return max(bits >> 11, 0.5) * 2.0**-53  # exact: an integer below 2^53 times a power of two


def unsigned(t: torch.Tensor) -> list:
    return [v & MASK64 for v in t.flatten().tolist()]


def test_row_keys_match_python_integers():
    seeds = [0, 7, 2**63 - 1]
    samples = [0, 1, 123456789]
    for seed in seeds:
        streams = rng.KeyedStreams(seed, samples, 5, "cpu")
        for step in (0, 1, 127, rng.LIMIT_STEP):
            got = unsigned(streams.rows(step))
            want = [ref_row_key(seed, s, step, p) for s in samples for p in range(5)]
            assert got == want, (seed, step)


@pytest.mark.parametrize("width", [1, 7, 64, 5000])
def test_bits_and_uniforms_match_python_integers(width):
    """Wrapping int64 arithmetic (vectorised and scalar paths, any key sign) is exact."""
    g = torch.Generator().manual_seed(width)
    keys = torch.randint(-(2**63), 2**63 - 1, (3,), generator=g, dtype=torch.int64)
    keys[0] = -(2**63)
    columns = torch.randint(0, 2**20, (width,), generator=g)
    bits = rng.element_bits(keys, rng.column_strides(columns))
    want = [ref_bits(k & MASK64, c) for k in keys.tolist() for c in columns.tolist()]
    assert unsigned(bits) == want
    u = rng.keyed_uniforms(keys, columns)
    assert u.dtype == torch.float64
    assert u.flatten().tolist() == [ref_uniform(b) for b in want]
    # a strided (non-contiguous) view goes through torch's other loops: same words
    assert unsigned(rng.element_bits(keys[::2], rng.column_strides(columns[::3]))) == [
        ref_bits(k & MASK64, c) for k in keys[::2].tolist() for c in columns[::3].tolist()
    ]


def test_uniforms_are_strictly_inside_the_unit_interval():
    words = torch.tensor([0, 2047, 2048, -1, 2**63 - 1, -(2**63)], dtype=torch.int64)
    u = rng.bits_to_uniform(words)
    expected = [2.0**-54, 2.0**-54, 2.0**-53, 1 - 2.0**-53, 0.5 - 2.0**-53, 0.5]
    assert u.tolist() == expected
    e = -torch.log(u)
    assert bool(((e > 0) & torch.isfinite(e)).all())
    tmp = torch.empty_like(words)
    assert torch.equal(rng.bits_to_uniform_(words.clone(), tmp), u)


def test_streams_do_not_depend_on_the_batch():
    alone = rng.KeyedStreams(5, [3], 8, "cpu").uniforms(4, 100, 200)
    batch = rng.KeyedStreams(5, [9, 3, 0], 8, "cpu").uniforms(4, 100, 200)
    assert torch.equal(alone[0], batch[1])
    # a column range is a slice of a wider range (a tensor-parallel shard)
    wide = rng.KeyedStreams(5, [3], 8, "cpu").uniforms(4, 0, 300)
    assert torch.equal(wide[..., 100:200], alone)


def test_randint_is_uniform_and_in_range():
    streams = rng.KeyedStreams(11, list(range(400)), 256, "cpu")
    draws = streams.randint(rng.LIMIT_STEP, 7)
    assert draws.shape == (400, 256) and draws.dtype == torch.int64
    counts = torch.bincount(draws.flatten(), minlength=7)
    assert counts.numel() == 7
    assert stats.chisquare(counts.numpy()).pvalue > ALPHA


# --------------------------------------------------------------------------------------------
# The statistical battery


SEEDS, STEPS, SAMPLES, LENGTH, COLUMNS = 2, 2, 16, 32, 512  # 2^20 draws
COLUMN0 = 40_000  # a column range far from 0, like a tensor-parallel shard's


def block(row_bits) -> np.ndarray:
    """The 64-bit words (as int64) of every (seed, step, sample, position, column) of the block,
    shape (SEEDS, STEPS, SAMPLES, LENGTH, COLUMNS); ``row_bits(seed, sample_ids, step)`` gives
    (SAMPLES * LENGTH, COLUMNS) words for the block's columns."""
    out = np.empty((SEEDS, STEPS, SAMPLES, LENGTH, COLUMNS), dtype=np.int64)
    for seed in range(SEEDS):
        for step in range(STEPS):
            words = row_bits(seed, list(range(SAMPLES)), step)
            out[seed, step] = words.reshape(SAMPLES, LENGTH, COLUMNS).numpy()
    return out


COLUMNS_T = torch.arange(COLUMN0, COLUMN0 + COLUMNS)


def real_bits(seed, samples, step):
    keys = rng.KeyedStreams(seed, samples, LENGTH, "cpu").rows(step)
    return rng.element_bits(keys, rng.column_strides(COLUMNS_T))


def weyl_only_bits(seed, samples, step):
    """Weak: the row keys are fine but the columns are not mixed (a bare Weyl sequence)."""
    keys = rng.KeyedStreams(seed, samples, LENGTH, "cpu").rows(step)
    return keys[:, None] + rng.column_strides(COLUMNS_T)[None, :]


def linear_key_bits(seed, samples, step):
    """Weak: the element mixing is fine but the key fields are added up unmixed, so that
    e.g. (sample k, step t + 1) and (sample k + 1, step t) are the same stream."""
    s = torch.tensor(samples)[:, None]
    p = torch.arange(LENGTH)[None, :]
    keys = ((seed + s + step + p) * rng.signed64(rng.GOLDEN)).reshape(-1)
    return rng.element_bits(keys, rng.column_strides(COLUMNS_T))


def uniforms_of(words: np.ndarray) -> np.ndarray:
    return rng.bits_to_uniform(torch.from_numpy(words)).numpy()


def pair_chi2(a: np.ndarray, b: np.ndarray, bins: int = 16) -> float:
    """p-value of the independence and uniformity of the pairs (a_i, b_i): chi-square over a
    bins x bins grid."""
    cells = np.floor(a * bins).astype(np.int64) * bins + np.floor(b * bins).astype(np.int64)
    counts = np.bincount(cells.ravel(), minlength=bins * bins)
    return float(stats.chisquare(counts).pvalue)


def correlation_p(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of zero Pearson correlation between the Exp(1) variates -log a and -log b."""
    ea, eb = -np.log(a.ravel()), -np.log(b.ravel())
    r = np.corrcoef(ea, eb)[0, 1]
    return float(math.erfc(abs(r) * math.sqrt(ea.size) / math.sqrt(2)))


NEIGHBOURS = {  # axis of the block -> how to pair each draw with its neighbour along it
    "column": lambda u: (u[..., :-1], u[..., 1:]),
    "position": lambda u: (u[:, :, :, :-1], u[:, :, :, 1:]),
    "sample": lambda u: (u[:, :, :-1], u[:, :, 1:]),
    "step": lambda u: (u[:, 0], u[:, 1]),
    "seed": lambda u: (u[0], u[1]),
}


def battery(words: np.ndarray) -> dict[str, float]:
    """p-values (and 0/1 for the exact checks) of every check on a block of words."""
    u = uniforms_of(words)
    flat = u.ravel()
    out = {"ks uniform": float(stats.kstest(flat, "uniform").pvalue)}
    out["chi2 uniform (1024 bins)"] = float(
        stats.chisquare(np.bincount((flat * 1024).astype(np.int64), minlength=1024)).pvalue
    )
    for axis, pair in NEIGHBOURS.items():
        a, b = pair(u)
        out[f"pairs along {axis}"] = pair_chi2(a, b)
        out[f"correlation along {axis}"] = correlation_p(a, b)
    # every bit of the words is a fair coin: a two-sided z-test per bit
    as_unsigned = words.ravel().view(np.uint64)
    n = as_unsigned.size
    for bit in range(64):
        ones = int(np.count_nonzero((as_unsigned >> np.uint64(bit)) & np.uint64(1)))
        z = (ones - n / 2) / math.sqrt(n / 4)
        out[f"bit {bit}"] = float(math.erfc(abs(z) / math.sqrt(2)))
    # 2^20 draws of 53 bits coincide with probability ~6e-5: a repeat means overlapping streams
    out["no repeated draws"] = float(np.unique(words.ravel() >> 11).size == n)
    return out


def test_real_stream_passes_the_battery():
    results = battery(block(real_bits))
    failed = {name: p for name, p in results.items() if p <= ALPHA}
    assert not failed, f"checks failed (p <= {ALPHA}): {failed}"


@pytest.mark.parametrize(
    ("variant", "caught_by"),
    [
        (weyl_only_bits, ["pairs along column"]),
        (linear_key_bits, ["no repeated draws"]),
    ],
    ids=["weyl-only", "linear-keys"],
)
def test_weak_variants_fail_the_battery(variant, caught_by):
    """The battery has power: a stream with unmixed columns, or with keys whose fields are not
    mixed, fails it (the real stream differs from each only in the part left out)."""
    results = battery(block(variant))
    for name in caught_by:
        assert results[name] <= ALPHA, f"{variant.__name__} passed {name!r}: {results[name]}"


def test_outer_mix_separates_rows_whose_keys_differ_by_a_column_stride():
    """Rows whose keys differ by k * GOLDEN would repeat each other's numbers k columns apart
    with the inner mix alone (a plain SplitMix64 stream per row); the outer mix with the key
    keeps them apart."""
    key = rng.signed64(0x0123456789ABCDEF)
    keys = torch.tensor([key, rng.signed64(key + 7 * rng.GOLDEN)])
    strides = rng.column_strides(torch.arange(4096))
    inner_only = rng.mix64(keys[:, None] + strides[None, :])
    assert torch.equal(inner_only[0, 7:], inner_only[1, :-7])  # the weakness is real
    bits = rng.element_bits(keys, strides)
    assert np.intersect1d(bits[0].numpy(), bits[1].numpy()).size == 0
