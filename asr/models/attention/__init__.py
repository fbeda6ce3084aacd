from asr.models.attention.scorers import (  # noqa: F401
    ATTENTION_TYPES,
    AdditiveAttention,
    Attention,
    DotAttention,
    GeneralAttention,
    LocationAttention,
    LocalAttention,
    LocationAwareAttention,
    MultiHeadAttention,
    MultiHeadScorer,
    build_attention,
    harden,
)
