"""The one table of model families: which config model_types belong to each, its inputs, and its tolerances.

A family is data, not a class: adding one is a row here (and a tiny config in tests/test_families.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bertship.runtimes.errors import SourceError
from bertship.runtimes.fidelity import Tolerance

WITH_TYPES = ("input_ids", "attention_mask", "token_type_ids")
WITHOUT_TYPES = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class Family:
    """One encoder family as bertship exports it."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values that belong to this family
    inputs: tuple[str, ...]  # graph inputs, in order; every one has axes [batch, sequence]
    position_offset: int  # position ids the model reserves before the first token (RoBERTa: padding_idx + 1)
    tolerance: Tolerance  # fp32 export vs PyTorch on the golden sentences
    # ONNX Runtime transformer fusions the family reaches: op -> (a, b), expected count a * layers + b
    fusions: dict[str, tuple[int, int]]
    fusion_note: str = ""
    # modules whose @torch.jit.script helpers are traced as the Python they were written in: scripted, their shape
    # branches export as If nodes with outputs of dynamic rank, which OpenVINO's CPU plugin refuses to compile
    script_modules: tuple[str, ...] = ()
    window: str = ""  # config attribute of a local (sliding-window) attention span: golden texts then go past it

    def for_config(self, config) -> Family:
        """The family as one checkpoint uses it: without token_type_ids where its config has no token-type embedding
        (type_vocab_size 0, as in DeBERTa-v3), since the graph then never reads them."""
        if "token_type_ids" in self.inputs and getattr(config, "type_vocab_size", 1) == 0:
            return replace(self, inputs=tuple(i for i in self.inputs if i != "token_type_ids"))
        return self


# fp32 tolerances: round-off between PyTorch and the runtimes' kernels (other GEMM blocking, fused softmax and layer
# norm). Measured max|diff| on the golden sentences: 4e-7 for the real MiniLM, at most 3e-6 for the tiny random
# model of every family and task (tests/tiny.py); the limit leaves a 30x margin over the worst.
_FP32 = Tolerance(max_abs_diff=1e-4, min_cosine=0.99999)


def _fusions(attention: int | None = 0, gelu: str = "BiasGelu", emb: int = 0, skip: int = 0) -> dict[str, tuple[int, int]]:
    """Expected fusions with L layers: Attention L + attention (None: not fused), gelu L, SkipLayerNorm 2L + skip,
    EmbedLayerNormalization emb."""
    table = {gelu: (1, 0), "SkipLayerNormalization": (2, skip)}
    if attention is not None:
        table["Attention"] = (1, attention)
    if emb:
        table["EmbedLayerNormalization"] = (0, emb)
    return table


# Fusion counts measured with onnxruntime 1.32 on the tiny model of each family (2, 3 and 4 layers) and on the real
# MiniLM (6 layers): BERT 1 EmbedLayerNormalization + L Attention + L BiasGelu + 2L SkipLayerNormalization. Where
# attention is not fused, ONNX Runtime runs it as separate MatMul/Softmax/Add kernels; what that costs at base size is
# measured in benchmarks/families.py (docs/benchmarks.md).
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        # BERT shapes include MiniLM and TinyBERT: they are BertModel with other sizes.
        Family("bert", ("bert",), WITH_TYPES, 0, _FP32, _fusions(emb=1)),
        Family("distilbert", ("distilbert",), WITHOUT_TYPES, 0, _FP32, _fusions(attention=None),
               "attention is not fused: DistilBERT scales Q with Div and masks scores with Where (masked_fill), a "
               "pattern ONNX Runtime 1.32's attention fusion does not match; ORT still fuses MatMul+Softmax at load"),
        # RoBERTa has a token-type embedding of size 1 that is always 0: not an input (as in optimum's exports).
        Family("roberta", ("roberta", "xlm-roberta"), WITHOUT_TYPES, 2, _FP32, _fusions(),
               "embeddings keep a plain LayerNormalization: RoBERTa computes position ids from input_ids, which "
               "EmbedLayerNormalization does not model"),
        Family("albert", ("albert",), WITH_TYPES, 0, _FP32, _fusions(attention=-1, gelu="FastGelu"),
               "the first layer's attention is not fused: its input is the embedding projection (MatMul+Add), not a "
               "LayerNormalization, which the fusion anchors on; shared layer weights are stored once"),
        Family("mobilebert", ("mobilebert",), WITH_TYPES, 0, _FP32, {},
               "no ONNX Runtime BERT fusion matches MobileBERT (NoNorm instead of LayerNorm, bottleneck blocks)"),
        # ELECTRA discriminators: BERT's layers after a factorized embedding (embedding_size -> hidden_size projection).
        Family("electra", ("electra",), WITH_TYPES, 0, _FP32, _fusions(emb=1)),
        # MPNet counts positions from padding_idx + 1 like RoBERTa and has no token types.
        Family("mpnet", ("mpnet",), WITHOUT_TYPES, 2, _FP32, _fusions(attention=None, skip=1),
               "attention is not fused: MPNet adds a relative-position bias (a bucketed Gather) to the scores, which "
               "ONNX Runtime 1.32's attention fusion does not match; the embedding LayerNorm fuses as one more "
               "SkipLayerNormalization (word + position embeddings)"),
        # DeBERTa-v2 and v3 (v3 has type_vocab_size 0: no token_type_ids input, see Family.for_config).
        Family("deberta-v2", ("deberta-v2",), WITH_TYPES, 0, _FP32, _fusions(attention=None),
               "attention is not fused: disentangled attention adds content-to-position and position-to-content terms "
               "(relative positions gathered per pair) that no ONNX Runtime 1.32 fusion models; the embedding and "
               "relative-embedding LayerNorms stay plain LayerNormalization",
               script_modules=("transformers.models.deberta_v2.modeling_deberta_v2",)),
        # ModernBERT: pre-norm, GLU feed-forward without biases, RoPE, global attention every n layers and a
        # sliding window elsewhere, no token types.
        Family("modernbert", ("modernbert",), WITHOUT_TYPES, 0, _FP32, _fusions(attention=None, gelu="Gelu"),
               "attention is not fused: the fused QKV projection, rotary embeddings and the sliding-window mask match "
               "no ONNX Runtime 1.32 attention fusion; the GLU's activation fuses as Gelu (ModernBERT's linears have "
               "no bias, so there is no BiasGelu) and the embedding LayerNorm stays plain", window="local_attention"),
    )
}


def family_of(model_type: str | None) -> Family:
    """The family a config's model_type belongs to, or SourceError listing the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise SourceError(
        f"model_type {model_type!r} is not a supported encoder family — bertship exports: {supported}"
    )
