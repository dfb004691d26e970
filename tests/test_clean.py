from mt.clean import clean_split, normalize
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
