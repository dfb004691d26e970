"""The WMT14 recipes compose with the published settings and train two steps on CPU.

The real data comes from the hub on a connected GPU box; here they train on the tiny prepared
corpus with a tiny token budget, which exercises everything but the data and the scale.
"""

import pytest

from mt.config import validate_train
from mt.train import run_train
from tests.conftest import compose_config

RECIPES = {
    # name: (model, dropout, lr, steps, checkpoints averaged)
    "wmt14_en_de_base": ((512, 8, 6, 6, 2048), 0.1, 7e-4, 100_000, 5),
    "wmt14_en_de_big": ((1024, 16, 6, 6, 4096), 0.3, 5e-4, 300_000, 20),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_has_the_published_settings(name):
    cfg = compose_config("train", [f"experiment={name}"])
    validate_train(cfg)
    dims, dropout, lr, steps, averaged = RECIPES[name]
    m, t = cfg.model, cfg.train
    assert (m.d_model, m.n_heads, m.n_layers_enc, m.n_layers_dec, m.d_ff) == dims
    assert m.dropout == dropout and m.share_embeddings
    assert cfg.data.hub_id == "wmt/wmt14" and cfg.spm.vocab_size == 32000 and cfg.spm.joint
    assert t.max_tokens * t.update_freq == 25_600  # ~25k target tokens per update on 1 GPU
    assert (t.lr, t.warmup_steps, t.schedule) == (lr, 4000, "inverse_sqrt")
    assert t.label_smoothing == 0.1 and t.max_steps == steps and t.average_last == averaged


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_two_steps_on_cpu(name, prepared_dir, tmp_path):
    overrides = [
        f"experiment={name}",
        f"data_dir={prepared_dir}",
        f"run_dir={tmp_path / 'run'}",
        "train.device=cpu",
        "train.max_steps=2",
        "train.max_tokens=64",
        "train.threads=2",
        "train.tune_decoding=false",  # an untrained model decodes to its length caps
    ]
    if name.endswith("big"):  # full width, one layer each side: the big layers, CI-sized
        overrides += ["model.n_layers_enc=1", "model.n_layers_dec=1"]
    results = run_train(compose_config("train", overrides))
    assert results["step"] == 2
    assert results["stop_reason"] == "reached train.max_steps=2"
