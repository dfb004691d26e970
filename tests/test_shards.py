import numpy as np

from mt.shards import Shard, flatten, token_dtype, write_shard


def test_binarize_round_trip(tmp_path):
    ids = [[5, 6, 7], [], [65535, 4], [9]]
    chunks = [flatten(ids[:2], token_dtype(65536)), flatten(ids[2:], token_dtype(65536))]
    lengths = write_shard(tmp_path, "train", "src", chunks)
    assert lengths.tolist() == [3, 0, 2, 1]
    shard = Shard.load(tmp_path, "train", "src")
    assert len(shard) == 4
    assert [shard[i].tolist() for i in range(4)] == ids
    assert shard.tokens.dtype == np.uint16
    assert isinstance(shard.tokens, np.memmap)
    assert shard.lengths.tolist() == [3, 0, 2, 1]


def test_large_vocabulary_uses_int32():
    tokens, _ = flatten([[70000]], token_dtype(80000))
    assert tokens.dtype == np.int32 and tokens.tolist() == [70000]
