"""Schemas of `mt train`: the model group, the train loop group and `TrainConfig` that holds
them with the prepare groups."""

from __future__ import annotations

from dataclasses import dataclass, field

from mt.config.prepare import CleanConfig, DataConfig, SpmConfig


@dataclass
class ModelConfig:
    """Transformer hyperparameters; names match the builder `mt.model.transformer`."""

    d_model: int = 512
    """Width of embeddings and of every residual stream."""
    n_heads: int = 8
    """Attention heads; must divide d_model."""
    n_layers_enc: int = 6
    """Encoder layers."""
    n_layers_dec: int = 6
    """Decoder layers."""
    d_ff: int = 2048
    """Inner width of the feed-forward blocks."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches."""
    attn_dropout: float = 0.0
    """Dropout on attention weights."""
    act_dropout: float = 0.0
    """Dropout after the feed-forward activation."""
    activation: str = "relu"
    """relu | gelu | swish (SiLU, as most OPUS-MT models use)."""
    norm: str = "pre"
    """pre (LayerNorm before each block, default) | post (the original paper)."""
    positions: str = "sinusoidal"
    """sinusoidal | learned (added to the embeddings) | rope (rotary queries and keys in
    self-attention, GPT-NeoX half-split layout, base 10000) | relative (Shaw et al. 2018 clipped
    relative keys and values in self-attention; set max_relative_positions)."""
    max_positions: int = 1024
    """Longest sequence in tokens (learned positions; longer inputs are truncated)."""
    share_embeddings: bool = True
    """Tie source, target and output embeddings (needs a joint vocabulary)."""
    max_relative_positions: int = 0
    """positions=relative: distances clip at +-this many tokens (> 0); 0 otherwise."""
    attn_window: int = 0
    """Self-attention sees only this many positions either side (decoder: back); 0 = all."""
    scale_embeddings: bool = True
    """Multiply token embeddings by sqrt(d_model) (false: as Marian models with
    scale_embedding=false)."""
    sinusoid: str = "vaswani"
    """positions=sinusoidal table layout: vaswani (sin/cos interleaved, mt's own) | marian
    (sin half, cos half) | fairseq (halves, frequency step log(10000)/(d_model/2 - 1): M2M100,
    NLLB)."""
    position_offset: int = 0
    """Added to every position before the sinusoidal lookup (M2M100 and NLLB: 2)."""
    output_bias: bool = False
    """A fixed (untrained) bias on the output logits, as imported Marian and M2M100 models carry
    (their final_logits_bias; -inf at ids the model never emits)."""


@dataclass
class TrainLoopConfig:
    """The optimization loop: batches, schedule, precision, cadence, stopping."""

    max_tokens: int = 4096
    """Padded tokens per batch (the longer side of each pair), per device."""
    update_freq: int = 1
    """Batches accumulated into one optimizer step."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0 for no limit."""
    max_epochs: int = 0
    """Stop after this many epochs; 0 for no limit."""
    max_minutes: float = 0.0
    """Stop after this much wall-clock training time; 0 for no limit (at most 10,000,000)."""
    lr: float = 7e-4
    """Peak learning rate, reached at the end of warmup; above 0, at most 1."""
    warmup_steps: int = 4000
    """Linear warmup steps before the decay."""
    schedule: str = "inverse_sqrt"
    """inverse_sqrt (lr * sqrt(warmup / step)) | linear (decays to 0 at train.max_steps, or sooner
    where train.max_minutes ends the run first: at the pace so far, the steps that fit in it)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas, each in [0, 1)."""
    eps: float = 1e-8
    """AdamW epsilon, 0 to 1."""
    weight_decay: float = 0.0
    """Decoupled weight decay of linear weights, 0 to 1."""
    clip_norm: float = 1.0
    """Clip the gradient norm to this; 0 disables clipping."""
    label_smoothing: float = 0.1
    """Label smoothing epsilon."""
    precision: str = "auto"
    """auto | bf16 | fp16 | fp32. auto: on CUDA bf16 where supported; on a CPU that multiplies
    bf16 natively, bf16 or fp32, whichever a few timed updates of this model run faster (logged
    with both times); else fp32. bf16 on a CPU without native bf16 matmuls is refused."""
    device: str = "auto"
    """auto | cpu | cuda (auto: cuda when available)."""
    seed: int = 1
    """Seed for initialization, dropout and batch order, 0 to 2**32 - 1."""
    valid_every: int = 1000
    """Validate (loss, greedy BLEU) and checkpoint every N steps; 0: only at the end."""
    valid_bleu: bool = True
    """Greedy-decode the validation set and report BLEU at each validation."""
    patience: int = 0
    """Stop after this many validations without a better BLEU (loss if valid_bleu=false); 0 off."""
    keep_last: int = 5
    """Step checkpoints kept besides last.pt and best.pt."""
    average_last: int = 0
    """At the end, average the last N step checkpoints into averaged.pt; 0 skips it."""
    log_every: int = 100
    """Log training scalars every N steps."""
    threads: int = 0
    """CPU threads for PyTorch; 0 keeps its default (all cores)."""
    compile: bool = False
    """Train the model under torch.compile with dynamic shapes (one graph for the varying
    batch shapes of token batching); the log counts graphs and recompilations. Off by default:
    `python scripts/bench_train.py --compile` measures whether it pays on a machine."""
    tune_decoding: bool = True
    """At the end, decode validation with the final checkpoint under every train.tune_beams x
    train.tune_lenpens pair and store the best by BLEU in RUN_DIR/decoding.json: the beam and
    lenpen that `mt translate`, `mt eval`, `mt serve` and exports use unless told otherwise."""
    tune_beams: list[int] = field(default_factory=lambda: [4, 5])
    """Beam sizes tried by train.tune_decoding."""
    tune_lenpens: list[float] = field(default_factory=lambda: [0.6, 1.0, 1.4, 1.8])
    """Length penalties tried by train.tune_decoding."""
    dist_timeout: float = 300.0
    """Under torchrun: seconds a collective may wait for the other ranks before every waiting
    rank ends the job with one sentence naming the rank that stopped answering (died, was
    stopped, or is stuck). It must exceed the longest pause of rank 0 alone, a checkpoint
    write; setup (preparing data, checking the run folder) is not held to it."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    fallback_model: str = ""
    """A model preset (configs/model/) to train instead when the configured model, timed for a
    few updates on this machine before training, would make fewer than
    train.fallback_below_steps updates in train.max_minutes. The preset's sizes (d_model,
    n_heads, layers, d_ff) replace the model's; its other settings stay. The choice is logged and
    written to the run's config.yaml; a resumed run keeps the model it started with. Empty: off."""
    fallback_below_steps: int = 0
    """See train.fallback_model."""


@dataclass
class TrainConfig:
    """`mt train`: a prepared data folder -> a run folder with checkpoints and logs."""

    data_dir: str | None = None
    """Prepared data folder; null prepares `data` first (cached) into prepare_dir."""
    init_from: str | None = None
    """A run folder (mt-trained, or written by `mt import`) whose weights this new run starts
    from, at step 0 with a fresh optimizer and schedule (fine-tuning). Its model is this run's
    model (only model.dropout, model.attn_dropout, model.act_dropout may change) and data_dir
    must hold its vocabulary (`mt prepare tokenizer.from_run=RUN_DIR`); with data_dir null,
    `data` is prepared with its tokenizer. null: random initial weights."""
    run_dir: str = "runs/${data.name}.${data.src}-${data.tgt}"
    """Run folder: checkpoints/, TensorBoard events, train.log, config.yaml."""
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)
    prepare_dir: str = "data-bin/${data.name}.${data.src}-${data.tgt}"
    """Where `data` is prepared when data_dir is null."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
