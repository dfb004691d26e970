import numpy as np

from mt.clean import SplitCleaner, clean_split, normalize, pair_hashes
from mt.config import CleanConfig
from mt.corpus import Pairs


def test_normalize_strips_collapses_whitespace_and_composes():
    decomposed = "Cafe\u0301  au\tlait \u00a0 "
    assert normalize([decomposed], "NFC") == ["Café au lait"]
    assert normalize([decomposed], "NFD") == ["Cafe\u0301 au lait"]
    assert normalize(["  x  "], "none") == ["x"]
    assert normalize(["ﬁ"], "NFKC") == ["fi"]


def test_training_split_drops_each_reason_and_reports_it():
    src = ["a b", "", "w " * 300, "one two three four five six seven", "a b", "keep me"]
    tgt = ["x y", "nonempty", "x", "eins", "x y", "behalte mich"]
    cfg = CleanConfig(max_words=250, max_ratio=3.0, ratio_min_words=5)
    cleaned, report = clean_split(Pairs(src, tgt), cfg, filter_pairs=True)
    assert cleaned.src == ["a b", "keep me"]
    assert cleaned.tgt == ["x y", "behalte mich"]
    assert report.read == 6 and report.kept == 2
    assert report.dropped == {"empty": 1, "too_long": 1, "ratio": 1, "duplicate": 1}


def test_ratio_filter_spares_short_pairs():
    cfg = CleanConfig(max_ratio=2.0, ratio_min_words=5)
    cleaned, _ = clean_split(Pairs(["a b c d"], ["x"]), cfg, filter_pairs=True)
    assert len(cleaned) == 1


def test_dedup_can_be_switched_off():
    cfg = CleanConfig(dedup=False)
    cleaned, report = clean_split(Pairs(["a", "a"], ["b", "b"]), cfg, filter_pairs=True)
    assert len(cleaned) == 2 and report.dropped["duplicate"] == 0


def test_validation_is_never_filtered_only_flagged():
    src, tgt = ["", "a", "a"], ["x", "b", "b"]
    cleaned, report = clean_split(Pairs(src, tgt), CleanConfig(), filter_pairs=False)
    assert cleaned.src == ["", "a", "a"]
    assert report.kept == 3
    assert report.flagged == {"empty": 1}
    assert sum(report.dropped.values()) == 0


def _pairs_with_repeats() -> Pairs:
    # 40 pairs in which pairs repeat across the chunk boundaries used below, plus one of each
    # reason to drop and a pair only a whitespace fix makes a duplicate
    src = [f"s{i % 13} w" for i in range(40)] + ["", "w " * 300, "a b c d e f g", " s1  w "]
    tgt = [f"t{i % 13}" for i in range(40)] + ["x", "y", "z", "t1"]
    return Pairs(src, tgt)


def test_chunked_cleaning_equals_cleaning_the_whole_split():
    pairs, cfg = _pairs_with_repeats(), CleanConfig()
    whole, whole_report = clean_split(pairs, cfg, filter_pairs=True)
    for size in (1, 3, 7, 100):
        cleaner = SplitCleaner(cfg, filter_pairs=True)
        src, tgt = [], []
        for i in range(0, len(pairs), size):
            kept = cleaner.clean(Pairs(pairs.src[i : i + size], pairs.tgt[i : i + size]))
            src += kept.src
            tgt += kept.tgt
        assert (src, tgt) == (whole.src, whole.tgt)
        assert cleaner.report() == whole_report
    assert whole_report.kept == 13
    assert whole_report.dropped == {"empty": 1, "too_long": 1, "ratio": 1, "duplicate": 28}


def test_dedup_across_chunks_keeps_the_first_occurrence():
    cleaner = SplitCleaner(CleanConfig(), filter_pairs=True)
    assert cleaner.clean(Pairs(["a", "b"], ["x", "y"])).src == ["a", "b"]
    later = cleaner.clean(Pairs(["c", "b", "c", "a"], ["z", "y", "z", "x"]))
    assert (later.src, later.tgt) == (["c"], ["z"])
    assert cleaner.report().dropped["duplicate"] == 3


def test_pair_hash_tells_where_one_side_ends():
    hashes = pair_hashes(["a b", "a", "a b"], ["c", "b c", "c"])
    assert hashes.dtype == np.uint64
    assert hashes[0] == hashes[2] and hashes[0] != hashes[1]


def test_validation_chunks_are_only_flagged():
    cleaner = SplitCleaner(CleanConfig(), filter_pairs=False)
    cleaner.clean(Pairs(["", "a"], ["x", "b"]))
    cleaner.clean(Pairs(["a"], ["b"]))
    report = cleaner.report()
    assert (report.read, report.kept, report.flagged) == (3, 3, {"empty": 1})
