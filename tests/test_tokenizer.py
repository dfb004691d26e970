from pathlib import Path

import pytest

from mt.errors import MTError
from mt.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    VOCAB_FORMAT,
    Tokenizer,
    VocabTokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from tests.conftest import make_pairs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    en, de = make_pairs(300, seed=0)
    prefix = tmp_path_factory.mktemp("spm") / "spm"
    path = train_sentencepiece(en + de, prefix, vocab_size=320, user_defined_symbols=["<2de>"])
    return Tokenizer(path)


def test_special_ids_are_fixed(tokenizer):
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert tokenizer.encode(["a man"])[0][0] not in (PAD_ID, BOS_ID, EOS_ID)


def test_round_trip_including_unseen_characters(tokenizer):
    texts = ["the man sees a dog", "Straße grün", "unseen: Ωmega ü 😀"]
    ids = tokenizer.encode(texts, threads=2)
    assert tokenizer.decode(ids) == texts  # byte fallback spells unseen characters
    assert UNK_ID not in {i for seq in ids for i in seq}


def test_user_defined_symbol_is_one_piece(tokenizer):
    ids = tokenizer.encode(["<2de> the man"])[0]
    assert tokenizer.sp.id_to_piece(ids[0]).endswith("<2de>") or "<2de>" in [
        tokenizer.sp.id_to_piece(i) for i in ids
    ]


def test_bpe_model_trains_and_round_trips(tmp_path):
    en, _ = make_pairs(200, seed=1)
    tok = Tokenizer(train_sentencepiece(en, tmp_path / "bpe", vocab_size=300, model_type="bpe"))
    assert tok.decode(tok.encode(en[:5])) == en[:5]


def test_vocabulary_smaller_than_the_alphabet_names_the_keys(tmp_path):
    alphabet = [chr(0x4E00 + i) for i in range(400)]  # 400 distinct characters
    lines = [" ".join(alphabet[i : i + 20]) for i in range(0, 400, 20)]
    with pytest.raises(MTError, match=r"spm\.vocab_size=300 is smaller than the \d+ distinct"):
        train_sentencepiece(lines, tmp_path / "spm", vocab_size=300)


def test_foreign_or_broken_models_are_clear_errors(tmp_path):
    import sentencepiece as spm

    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(MTError, match="is not a readable SentencePiece model"):
        Tokenizer(tmp_path / "broken.model")
    en, _ = make_pairs(200, seed=2)  # SentencePiece's own default ids: unk 0, bos 1, eos 2
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(en), model_prefix=str(tmp_path / "foreign"), vocab_size=40,
        minloglevel=2,
    )  # fmt: skip
    with pytest.raises(MTError, match="special ids .* differ from the pad/unk/bos/eos ids 0-3"):
        Tokenizer(tmp_path / "foreign.model")


def _vocab_file(tmp_path, spm_path, pieces, codes=False) -> Path:
    """A VocabTokenizer file over `spm_path` whose mt ids are `pieces` (specials first)."""
    import hashlib
    import json
    import shutil

    shutil.copyfile(spm_path, tmp_path / "m.spm")
    spec = {
        "format": VOCAB_FORMAT, "spm": "m.spm", "decode_spm": "m.spm", "codes": codes,
        "spm_sha256": hashlib.sha256((tmp_path / "m.spm").read_bytes()).hexdigest(),
        "special": [0, 1, 2, 3, 4], "pieces": pieces,
    }  # fmt: skip
    (tmp_path / "v.json").write_text(json.dumps(spec), encoding="utf-8")
    return tmp_path / "v.json"


def test_vocab_tokenizer_maps_pieces_through_its_vocabulary(tokenizer, tmp_path):
    pieces = tokenizer.pieces()
    kept = [p for p in pieces[4:] if p != "▁dog"]  # a piece outside the vocabulary
    mapped = ["<pad>", "<unk>", "<s>", "</s>", ">>de<<", *reversed(kept)]
    tok = load_tokenizer(_vocab_file(tmp_path, tokenizer.path, mapped, codes=True))
    assert isinstance(tok, VocabTokenizer) and tok.vocab_size == len(mapped)
    text = "the man sees a dog"
    cut = tokenizer.sp.encode(text, out_type=str)
    want = [mapped.index(p) if p in mapped else UNK_ID for p in cut]
    assert tok.encode([text]) == [want] and UNK_ID in want
    assert tok.encode([f">>de<< {text}"]) == [[4, *want]]  # a leading code is one piece
    assert tok.decode([[4, *tok.encode(["the man"])[0], EOS_ID]]) == ["the man"]  # specials skipped
    assert tok.piece_to_id("▁dog") == UNK_ID and tok.id_to_piece(4) == ">>de<<"


def test_vocab_tokenizer_refuses_another_sentencepiece_model(tokenizer, tmp_path):
    path = _vocab_file(tmp_path, tokenizer.path, tokenizer.pieces())
    (tmp_path / "m.spm").write_bytes(b"not the model")
    with pytest.raises(MTError, match="is not the SentencePiece model"):
        load_tokenizer(path)
