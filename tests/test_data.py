import numpy as np

from mt.data import ParallelData, batches_by_tokens, epoch_batches, eval_batches
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def test_batches_by_tokens_respects_the_padded_budget():
    lens = np.array([3, 3, 4, 5, 9, 20])
    batches = batches_by_tokens(np.arange(6), lens, max_tokens=12)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3], [4], [5]]
    for b in batches[:-1]:
        assert lens[b].max() * len(b) <= 12
    # a sentence longer than the budget still gets a batch of its own
    assert batches[-1].tolist() == [5]


def test_epoch_order_is_seeded_and_changes_between_epochs(prepared_dir):
    data = ParallelData(prepared_dir, "train", max_len=64)
    a = epoch_batches(data, 200, seed=1, epoch=0)
    b = epoch_batches(data, 200, seed=1, epoch=0)
    c = epoch_batches(data, 200, seed=1, epoch=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    assert sorted(np.concatenate(a).tolist()) == list(range(len(data)))


def test_ranks_get_disjoint_equal_shards(prepared_dir):
    data = ParallelData(prepared_dir, "train", max_len=64)
    r0 = epoch_batches(data, 200, seed=3, epoch=0, rank=0, world=2)
    r1 = epoch_batches(data, 200, seed=3, epoch=0, rank=1, world=2)
    assert len(r0) == len(r1)
    assert not set(np.concatenate(r0).tolist()) & set(np.concatenate(r1).tolist())


def test_no_rank_runs_out_of_batches_first(prepared_dir):
    """Every rank of a job gets the same number of batches in every epoch, also when the
    epoch's batch count does not divide by the world size, so no rank waits in a collective
    for a rank that has finished its epoch."""
    data = ParallelData(prepared_dir, "train", max_len=64)
    uneven = 0
    for world in (2, 3, 4):
        for max_tokens in (64, 100, 200, 333):
            for epoch in range(3):
                total = len(epoch_batches(data, max_tokens, seed=1, epoch=epoch))
                uneven += total % world != 0
                counts = {
                    len(epoch_batches(data, max_tokens, 1, epoch, rank=rank, world=world))
                    for rank in range(world)
                }
                assert counts == {total // world}, (world, max_tokens, epoch, counts)
    assert uneven  # the cases include batch counts that do not divide by the world size


def test_collate_shifts_targets_and_pads(prepared_dir):
    data = ParallelData(prepared_dir, "valid", max_len=64)
    ids = np.array([0, 1, 2])
    batch = data.collate(ids)
    for row, i in enumerate(ids):
        src, tgt = data.src[i].tolist(), data.tgt[i].tolist()
        n, m = len(src), len(tgt)
        assert batch.src[row, :n].tolist() == src and batch.src[row, n] == EOS_ID
        assert batch.src_pad_mask[row, n + 1 :].all() and not batch.src_pad_mask[row, : n + 1].any()
        assert batch.tgt_in[row, : m + 1].tolist() == [BOS_ID, *tgt]
        assert batch.tgt_out[row, : m + 1].tolist() == [*tgt, EOS_ID]
        assert (batch.tgt_out[row, m + 1 :] == PAD_ID).all()
    assert batch.n_tgt_tokens == int((batch.tgt_out != PAD_ID).sum())


def test_long_sentences_are_truncated_to_max_len(prepared_dir):
    data = ParallelData(prepared_dir, "train", max_len=4)
    batch = data.collate(np.arange(8))
    assert batch.src.shape[1] <= 4 and batch.tgt_in.shape[1] <= 4


def test_eval_batches_cover_every_sentence_once(prepared_dir):
    data = ParallelData(prepared_dir, "valid", max_len=64)
    covered = np.concatenate(eval_batches(data, 100)).tolist()
    assert sorted(covered) == list(range(len(data)))
