"""The matrix behind `POST /attention`: one sentence's cross-attention, heads averaged.

The search does not keep its tokens past the text it returns, so the output ids are the
translation re-encoded with the target tokenizer. That is the tokenization the model was
trained on and almost always the one the search produced; where the search chose another
segmentation of the same text (rare), the matrix is that of the canonical one, which the
model reads by teacher forcing just as well. An ensemble is drawn with its first member.
"""

from __future__ import annotations

from typing import Any

from mt.decode.alignment import cross_attention
from mt.decode.inputs import prepare_ids

EOS_PIECE = "</s>"


def attention_matrix(translator: Any, text: str, translation: str) -> dict[str, Any]:
    """{"source", "output", "translation", "weights"} of `text` translated as `translation`.

    `source` and `output` are the SentencePiece pieces, each ending with "</s>"; weights has
    a row per output piece (the position predicting it) and a column per source piece, each
    row summing to 1. The layer is decode.alignment_layer (-1, the last, by default).
    `translator` is a Translator or CT2Translator: anything with `.run` and `.decode`.
    """
    run = translator.run
    (src,) = prepare_ids(run, [text], "<request>", 1)
    (out,) = run.tgt_tok.encode([translation])
    out = out[: run.max_len - 1]  # bos takes the first of the decoder's positions
    model = getattr(run.model, "members", [run.model])[0]  # an ensemble's first member
    weights = cross_attention(model, src, out, translator.decode.alignment_layer).mean(dim=0)
    return {
        "source": [*map(run.src_tok.sp.id_to_piece, src), EOS_PIECE],
        "output": [*map(run.tgt_tok.sp.id_to_piece, out), EOS_PIECE],
        "translation": translation,
        "weights": [[round(w, 6) for w in row] for row in weights.tolist()],
    }
