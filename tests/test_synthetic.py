"""Synthetic locality: stack distances, profile files, LRU replay across bags and batches, Zipf, trace CLI.

Stated tolerance: a stream generated from a profile reproduces the profile's stack-distance CDF
within 0.01 (max absolute difference over the profile's distances) once the stream is 5x as
long as the trace the profile came from, for the skewed trace below; on the real Criteo tables
of the bundled sample, within 0.025 on every table and 0.012 on average. The gap left is the
stream's warm-up, when the LRU stack is shallower than the profile's distances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.criteo_cache import preprocess
from model.data import RandomData
from model.stack_distance import LRUStream, stack_distances
from model.synthetic import Locality, SyntheticData, TableLocality, ZipfRows, parse_locality
from model.traces import StackDistanceProfile, read_trace, summarize_trace
from profiler.cli import main

TRACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dlrm_traces"
CRITEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "criteo" / "wide-resdnn" / "train.txt"
_needs_shared = pytest.mark.skipif(not TRACES.is_dir(), reason=f"reference trace inputs absent: {TRACES}")
CDF_TOLERANCE = 0.01


def _max_cdf_gap(profile: StackDistanceProfile, stream: np.ndarray) -> float:
    d = np.sort(stack_distances(stream))
    got = np.searchsorted(d, profile.distances, side="right") / d.size
    return float(np.abs(got - profile.normalized_cdf()).max())


def test_stack_distances_by_hand():
    # trace 1 2 3 4 5 3 4 1 1 6 3: '3' at t=5 has 3, 4, 5 above it... (itself included): 3
    trace = [1, 2, 3, 4, 5, 3, 4, 1, 1, 6, 3]
    assert stack_distances(trace).tolist() == [0, 0, 0, 0, 0, 3, 3, 5, 1, 0, 4]


@_needs_shared
def test_reference_files_read_and_match_our_profile():
    ref = StackDistanceProfile.read(TRACES / "dist_emb_0.log")
    assert ref.distances == (0, 1, 3, 4, 5) and ref.cdf[-1] == 1.0
    ours = summarize_trace(read_trace(TRACES / "trace.log")).profile
    assert ours.unique_accesses == ref.unique_accesses and ours.distances == ref.distances
    np.testing.assert_allclose(ours.cdf, ref.cdf, atol=0.005)  # the reference rounds to 2 decimals


def test_profile_round_trip_and_errors(tmp_path):
    prof = StackDistanceProfile((5, 6), (0, 2, 7), (0.5, 0.75, 1.0))
    prof.write(tmp_path / "p.log")
    assert StackDistanceProfile.read(tmp_path / "p.log") == prof
    for text, message in [
        ("1, 2\n0, 1\n0.5\n", "2 stack distances but 1 CDF values"),
        ("1\n0, 1\n0.6, 0.5\n", r":3: the CDF must be finite and non-decreasing.*value 2 is 0.5 after 0.6"),
        ("1\n1, 2\n0.5, 1.0\n", ":2: stack distances must start at 0 .*the first is 1"),
        ("1\n0, 3, 2\n0.5, 0.7, 1.0\n", r":2: stack distances must be strictly increasing: value 3 \(2\) follows 3"),
        ("1\n0, 5\n0.0, 1.0\n", r":3: .*with P\(distance 0\) > 0: value 1 is 0.0"),
        ("1\n0, 1\n0.5, 0.9\n", "must end at 1.0"),
        ("1\n0, x\n0.5, 1.0\n", ":2: stack distances: value 2 = 'x' is not int"),
        ("1\n0\n", "has 3 lines"),
        ("0, 1, 2, 3\n0, 1, 2\n0.3, nan, 1.0\n", ":3: CDF: value 2 = 'nan' is not a finite number"),
        ("0\n0, 1\n0.5, inf\n", ":3: CDF: value 2 = 'inf' is not a finite number"),
        ("0\n0, 99999999999999999999999\n0.5, 1.0\n", ":2: stack distances: value 2 = '9+' does not fit in 64 bits"),
        ("\n0, 1\n0.5, 1.0\n", ":1: unique accesses: no value"),
        ("1\n\n0, 1\n0.5, 1.0\n\n", r"has 3 lines \(unique accesses, distances, CDF\), found 4, 1 of them blank"),
    ]:
        (tmp_path / "bad.log").write_text(text)
        with pytest.raises(ValueError, match=message):
            StackDistanceProfile.read(tmp_path / "bad.log")
    with pytest.raises(ValueError, match="the CDF must be finite"):
        StackDistanceProfile((0,), (0, 1), (0.5, float("nan"))).validate()


def test_bad_traces_name_the_file_line_and_value(tmp_path, capsys):
    (tmp_path / "t.log").write_text("1, 2\n3, 99999999999999999999999\n")
    (tmp_path / "text.npy").write_text("1, 2\n")
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object))
    np.save(tmp_path / "wide.npy", np.array([1, 2**63], dtype=np.uint64))
    for name, message in [
        ("t.log", ":2: row id: value 2 = '99999999999999999999999' does not fit in 64 bits"),
        ("text.npy", ": not a .npy file"),
        ("objects.npy", ": unreadable .npy file: Object arrays cannot be loaded"),
        ("wide.npy", ": row id 9223372036854775808 does not fit in 64 bits"),
    ]:
        with pytest.raises(ValueError, match=f"^{tmp_path / name}{message}"):
            read_trace(tmp_path / name)
    assert main(["trace", "profile", str(tmp_path / "t.log")]) == 2
    (tmp_path / "p.log").write_text("0, 1, 2, 3\n0, 1, 2\n0.3, nan, 1.0\n")
    assert main(["trace", "generate", str(tmp_path / "p.log"), "--rows=10", "--count=10",
                 f"--out={tmp_path / 'g.log'}"]) == 2  # fmt: skip
    assert not (tmp_path / "g.log").exists()
    err = capsys.readouterr().err
    assert "t.log:2: row id" in err and "p.log:3: CDF" in err and "Traceback" not in err


def test_generated_stream_reproduces_the_profile():
    rng = np.random.default_rng(0)
    trace = rng.zipf(1.2, 100_000) % 20_000  # a skewed trace with reuse at many depths
    prof = summarize_trace(trace).profile
    stream = LRUStream(prof.distances, prof.normalized_cdf(), 10**7, seed=1)
    gen = np.concatenate([stream.take(50_000) for _ in range(10)])  # in pieces: state carries over
    assert _max_cdf_gap(prof, gen) <= CDF_TOLERANCE
    assert gen.min() >= 0 and gen.max() < 10**7


def test_a_draw_deeper_than_the_stack_is_a_first_access():
    # P(0) = 0.1, P(1) = 0.5, P(100) = 0.4. In the first 100 accesses the stack is under 100 deep, so a
    # draw of 100 is a first access: 0.5 of them are new rows (mean 50, sd 5). Redrawing it among the
    # distances the stack allows (the reference) would make 0.1 / 0.6 of them new: mean 17, sd 3.7.
    news = [np.unique(LRUStream(np.array([0, 1, 100]), np.array([0.1, 0.6, 1.0]), 10**6, seed).take(100)).size
            for seed in range(20)]  # fmt: skip
    assert 45 <= np.mean(news) <= 55  # the mean of 20 runs: sd 1.1


@pytest.mark.skipif(not CRITEO.is_file(), reason=f"the bundled Criteo sample is absent: {CRITEO}")
def test_replayed_real_criteo_tables_match_their_profiles(tmp_path):
    cache, _ = preprocess(str(CRITEO), tmp_path / "cache", "error")
    gaps = []
    for t in range(26):
        empty = (np.asarray(cache.cat_empty) >> np.uint32(t)) & 1
        rows = np.asarray(cache.cats[:, t])[empty == 0].astype(np.int64)
        prof = summarize_trace(rows).profile
        if len(prof.distances) < 2:
            continue  # every value seen once or one value only: nothing to reuse
        gen = LRUStream(prof.distances, prof.normalized_cdf(), 10**8, seed=t).take(5 * rows.size)
        gaps.append(_max_cdf_gap(prof, gen))
    assert len(gaps) >= 20 and max(gaps) <= 0.025 and np.mean(gaps) <= 0.012


def test_tables_too_small_for_their_profile_are_named(tmp_path):
    prof = StackDistanceProfile((0,), (0, 1), (0.5, 1.0))  # half the accesses are first ones
    prof.write(tmp_path / "p.log")
    fixed = RandomData((50, 1000), 4, batch_size=10, data_size=100, pooling_factor=2, fixed=True)
    notes = SyntheticData(fixed, parse_locality(f"sd:{tmp_path / 'p.log'}", 2)).shortfalls()
    # 100 samples x 2 lookups = 200 accesses, 100 of them first: table 0 (50 rows) falls short, table 1 does not
    assert len(notes) == 1 and notes[0].startswith("table 0: 50 rows")
    assert "about 100 new rows in 200 accesses" in notes[0]
    # bags of max(1, round(u * min(E, L))): the accesses the note counts are those the batches hold
    varied = RandomData((50, 10**6), 4, batch_size=100, data_size=20_000, pooling_factor=7)
    data = SyntheticData(varied, parse_locality(f"sd:{tmp_path / 'p.log'}", 2))
    held = sum(int(b.offsets[b.batch_size]) for b in data)  # table 0's lookups, every batch
    (note,) = data.shortfalls()
    counted = float(note.split(" new rows in ")[1].split(" accesses")[0].replace(",", ""))
    assert counted == pytest.approx(held, rel=0.01)


def test_tables_past_3e9_rows_map_ranks_without_int64_overflow():
    E = 10**10  # a * (E - 1) + b would pass 2^63 for most multipliers a < E
    for seed in range(5):
        z = ZipfRows(E, 1.1, np.random.default_rng(seed))
        z.ranks = lambda k: np.array([E - 1, E // 2, 3], dtype=np.int64)
        assert z.take(3).tolist() == [(z.a * k + z.b) % E for k in (E - 1, E // 2, 3)]  # Python ints: exact
        stream = LRUStream(np.array([0]), np.array([1.0]), E, seed)  # every access a new row, in permuted order
        stream.state[2] = E - 2  # the last two fresh ranks
        assert stream.take(2).tolist() == [(stream.perm_a * k + stream.perm_b) % E for k in (E - 2, E - 1)]


def test_exhausted_table_recycles_the_lru_row():
    stream = LRUStream(np.array([0]), np.array([1.0]), 4, seed=0)  # every access "new"
    rows = stream.take(12)
    assert sorted(rows[:4].tolist()) == [0, 1, 2, 3]
    assert rows[4:].tolist() == rows[:8].tolist()  # then the least recently used row, round robin


def test_lru_state_spans_bags_and_batches(tmp_path):
    # distances up to 64, bags of 4: a generator that reset its stack per bag could not reuse past depth 4
    prof = StackDistanceProfile((0,), (0, 1, 16, 64), (0.2, 0.4, 0.7, 1.0))
    prof.write(tmp_path / "p.log")
    random = RandomData((10**6, 10**6), 4, batch_size=64, data_size=64 * 200, pooling_factor=4, fixed=True)
    data = SyntheticData(random, parse_locality(f"sd:{tmp_path / 'p.log'}", 2))
    batches = list(data)
    table0 = np.concatenate([b.indices[: b.offsets[b.batch_size]].numpy() for b in batches])
    assert table0.size == 4 * 64 * 200
    assert _max_cdf_gap(prof, table0) <= CDF_TOLERANCE
    again = list(data)  # every epoch sees the same data
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(batches, again, strict=True))


def test_zipf_frequencies():
    rng = np.random.default_rng(0)
    z = ZipfRows(1000, 1.15, rng)
    ranks = z.ranks(400_000)
    expected = np.arange(1, 1001) ** -1.15
    expected /= expected.sum()
    freq = np.bincount(ranks, minlength=1000) / ranks.size
    np.testing.assert_allclose(freq[:5], expected[:5], rtol=0.03)
    rows = z.take(1000)
    assert rows.min() >= 0 and rows.max() < 1000
    big = ZipfRows(10**8, 1.05, np.random.default_rng(1))  # tail past the exact CDF
    r = big.ranks(100_000)
    assert r.min() >= 0 and r.max() < 10**8 and (r >= 1 << 22).any()


def test_parse_locality():
    locs = parse_locality("uniform,zipf:1.09,zipf", 3)
    assert [x.kind for x in locs] == [Locality.UNIFORM, Locality.ZIPF, Locality.ZIPF]
    assert locs[1].zipf_exponent == 1.09 and locs[2].zipf_exponent == 1.15
    assert parse_locality("zipf:2", 4) == (TableLocality(Locality.ZIPF, 2.0),) * 4
    for text, message in [("zipf,uniform", "2 specs for 3 tables"), ("zipf:a", "is not a number"),
                          ("lru", "expected uniform")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_locality(text, 3)


def test_trace_cli_profile_write_and_replay(tmp_path, capsys):
    (tmp_path / "t.log").write_text("1, 2, 3, 4, 5, 3, 4, 1, 1, 6, 3\n")
    argv = ["trace", "profile", str(tmp_path / "t.log"), f"--write-profile={tmp_path / 'p.log'}",
            f"--json-out={tmp_path / 's.json'}"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "11 accesses, 6 unique rows" in out and "hottest 1% of rows" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["unique_rows"] == 6 and s["reuse_histogram"][0]["accesses"] == 6
    prof = StackDistanceProfile.read(tmp_path / "p.log")
    assert prof.unique_accesses == (0, 1, 2, 3, 4, 5)  # anonymised unless --keep-ids
    assert main(["trace", "generate", str(tmp_path / "p.log"), "--rows=100000", "--count=20000",
                 f"--out={tmp_path / 'g.log'}"]) == 0  # fmt: skip
    assert _max_cdf_gap(prof, read_trace(tmp_path / "g.log")) <= CDF_TOLERANCE
    assert "note: the profile makes" not in capsys.readouterr().out
    # 6 of 11 accesses are first ones: 20,000 accesses need about 10,910 rows, not 100
    assert main(["trace", "generate", str(tmp_path / "p.log"), "--rows=100", "--count=20000",
                 f"--out={tmp_path / 'g.log'}"]) == 0  # fmt: skip
    assert "note: the profile makes 54.5% of accesses first ones, 10,910 new rows in 20,000" in capsys.readouterr().out
    assert main(["trace", "profile", str(tmp_path / "missing.log")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_train_with_synthetic_locality(tmp_path, capsys):
    (tmp_path / "p.log").write_text("0\n0, 1, 8\n0.3, 0.6, 1.0\n")
    base = ["train", "--preset=tiny", "--data-generation=synthetic", "--data-size=32", "--mini-batch-size=8"]
    out = tmp_path / "r.json"
    assert main([*base, f"--data-trace-file={tmp_path / 'p.log'}", f"--json-out={out}"]) == 0
    assert "data: synthetic, stack distances from" in capsys.readouterr().out
    assert json.loads(out.read_text())["data"]["locality"].startswith("sd:")
    # the reference's convention: a j in the file's name stands for the table (./input/dist_emb_j.log)
    jdir = tmp_path / "jobs"  # a j in a folder's name stays
    jdir.mkdir()
    for t in range(3):
        (jdir / f"dist_emb_{t}.log").write_text(f"0\n0, 1, {t + 2}\n0.3, 0.6, 1.0\n")
    assert main([*base, f"--data-trace-file={jdir / 'dist_emb_j.log'}", f"--json-out={out}"]) == 0
    assert json.loads(out.read_text())["data"]["locality"] == f"sd:{jdir / 'dist_emb_{t}.log'}"
    assert "table 2: stack distances from" in capsys.readouterr().out  # one profile per table
    assert main([*base, f"--data-trace-file={jdir / 'project.log'}"]) == 2  # no such file, nor pro0ect.log
    assert f"{jdir / 'project.log'}: no such file" in capsys.readouterr().err
    assert main([*base, "--locality=zipf:1.09,uniform,zipf"]) == 0
    assert main([*base, "--locality=zipf", f"--data-trace-file={tmp_path / 'p.log'}"]) == 2
    assert main(["train", "--preset=tiny", "--locality=zipf"]) == 2
    assert "need --data-generation synthetic" in capsys.readouterr().err


def test_a_draw_as_deep_as_the_stack_reuses_its_oldest_row():
    # every draw is distance 2: the first two accesses find a stack under 2 deep (first accesses, rows a
    # and b); from then on depth 2 is the row before the last: a b a b a b
    rows = LRUStream(np.array([2]), np.array([1.0]), 1000, seed=0).take(6).tolist()
    a, b = rows[:2]
    assert a != b and rows == [a, b, a, b, a, b]


def test_zipf_tail_ranks_round_to_the_nearest_rank():
    # Past the exact head (2^22 ranks) rank r (1-based) owns [r - 1/2, r + 1/2) of the continuous law x^-s:
    # a draw whose inverse CDF lands at r - 0.3 or r + 0.3 is rank r, i.e. 0-based r - 1.
    import types

    K, s = 1 << 22, 1.05
    z = ZipfRows(K + 100, s, np.random.default_rng(0))
    total = z.head[-1] + z.tail_mass

    def u_at(x: float) -> float:  # the uniform draw whose inverse CDF is x (x past the head)
        return (z.head[-1] + (x ** (1 - s) - (K + 0.5) ** (1 - s)) / (1 - s)) / total

    r = K + 10
    z.rng = types.SimpleNamespace(random=lambda k: np.array([u_at(r - 0.3), u_at(r + 0.3), u_at(r + 0.7)]))
    assert z.ranks(3).tolist() == [r - 1, r - 1, r]
