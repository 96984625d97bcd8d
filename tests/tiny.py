"""Tiny random models of every family, built in the test session from small configs (no download, < 1 s each).

Each family gets a tokenizer of its own kind trained on the shipped sentences: WordPiece (BERT, DistilBERT,
MobileBERT, ELECTRA, and MPNet with RoBERTa-style <s> </s></s> pairs), Unigram with Metaspace (ALBERT and DeBERTa-v3,
like their SentencePiece models) and byte-level BPE (RoBERTa; ModernBERT with [CLS]/[SEP] templates).
"""

from __future__ import annotations

from pathlib import Path

from bertship.exporter.golden import sentences

MAX_POSITIONS = 64  # the longest golden sentence is longer: truncation is exercised too
NUM_LABELS = 3


def _wordpiece(cls_name: str = "BertTokenizerFast"):
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(sentences(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return getattr(transformers, cls_name)(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                           cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                           model_max_length=MAX_POSITIONS)


def _mpnet_wordpiece():
    """WordPiece with MPNet's special tokens (<pad> is id 1, the embedding's padding_idx) and its pair template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import MPNetTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]
    tok.train_from_iterator(sentences(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return MPNetTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                              cls_token="<s>", unk_token="[UNK]", pad_token="<pad>", mask_token="<mask>",
                              model_max_length=MAX_POSITIONS)


def _unigram(cls_name: str = "AlbertTokenizerFast", pad: str = "<pad>", unk: str = "<unk>", lowercase: bool = True):
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = [pad, "[CLS]", "[SEP]", unk, "[MASK]"]
    tok.train_from_iterator(sentences(), trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token=unk))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return getattr(transformers, cls_name)(tokenizer_object=tok, unk_token=unk, pad_token=pad, cls_token="[CLS]",
                                           sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_POSITIONS)


def _deberta_unigram():
    """DeBERTa-v3's SentencePiece kind: Unigram + Metaspace, cased, [PAD] id 0, [CLS] A [SEP] B [SEP] pairs."""
    return _unigram("DebertaV2TokenizerFast", pad="[PAD]", unk="[UNK]", lowercase=False)


def _trained_bpe(specials: list[str]):
    """A byte-level BPE (cased, no prefix space) trained on the shipped sentences, with these special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sentences(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _bytelevel_bpe():
    """RoBERTa's kind: <s> A </s></s> B </s>."""
    from tokenizers import processors
    from transformers import RobertaTokenizerFast

    tok = _trained_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                model_max_length=MAX_POSITIONS)


def _modernbert_bpe():
    """ModernBERT's kind: [CLS] A [SEP] B [SEP] templates."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _trained_bpe(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=MAX_POSITIONS,
                                   model_input_names=["input_ids", "attention_mask"])


def _config(family: str, vocab: int, pad_id: int):
    import transformers as tf

    common = dict(vocab_size=vocab, pad_token_id=pad_id, num_labels=NUM_LABELS, initializer_range=0.2)
    if family == "bert":
        return tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=MAX_POSITIONS, **common)
    if family == "distilbert":
        return tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                   max_position_embeddings=MAX_POSITIONS, **common)
    if family == "roberta":
        # RoBERTa counts positions from padding_idx + 1, so it needs two more than the longest sequence.
        return tf.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, bos_token_id=0,
                                eos_token_id=2, **common)
    if family == "albert":
        return tf.AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=MAX_POSITIONS, **common)
    if family == "mobilebert":
        return tf.MobileBertConfig(hidden_size=32, embedding_size=16, true_hidden_size=16, intra_bottleneck_size=16,
                                   intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                   num_feedforward_networks=2, max_position_embeddings=MAX_POSITIONS, **common)
    if family == "electra":  # factorized embedding: embedding_size < hidden_size, projected up
        return tf.ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=MAX_POSITIONS, **common)
    if family == "mpnet":  # positions from padding_idx + 1, like RoBERTa; relative attention buckets
        return tf.MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              max_position_embeddings=MAX_POSITIONS + 2,
                              bos_token_id=0, eos_token_id=2, **common)
    if family == "deberta-v2":  # DeBERTa-v3's shape: relative positions only, shared keys, no token types
        return tf.DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=MAX_POSITIONS, relative_attention=True, position_buckets=16,
                                  max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                  share_att_key=True, position_biased_input=False, type_vocab_size=0, **common)
    if family == "modernbert":
        # 3 layers: global attention in layers 0 and 2, a 16-token sliding window in layer 1 (golden texts are longer)
        return tf.ModernBertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                                   max_position_embeddings=MAX_POSITIONS, local_attention=16,
                                   global_attn_every_n_layers=2, reference_compile=False, **common)
    raise ValueError(family)


TOKENIZERS = {"bert": _wordpiece, "distilbert": _wordpiece, "mobilebert": _wordpiece, "albert": _unigram,
              "roberta": _bytelevel_bpe, "electra": lambda: _wordpiece("ElectraTokenizerFast"),
              "mpnet": _mpnet_wordpiece, "deberta-v2": _deberta_unigram, "modernbert": _modernbert_bpe}
HEADS = {
    "feature-extraction": "AutoModel",
    "sentence-embedding": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "rerank": "AutoModelForSequenceClassification",  # one logit: a cross-encoder's relevance score
    "sparse-embedding": "AutoModelForMaskedLM",  # SPLADE: the masked-LM head's logits, pooled in the graph
    "multi-vector": "AutoModel",
}


def build(family: str, task: str, seed: int = 0, layers: int | None = None):
    """(model, tokenizer) in memory: a random tiny model of `family` with the head `task` needs (`layers`: depth)."""
    import torch
    import transformers

    tokenizer = TOKENIZERS[family]()
    config = _config(family, len(tokenizer), tokenizer.pad_token_id)
    if layers is not None:
        setattr(config, "n_layers" if family == "distilbert" else "num_hidden_layers", layers)
    if task == "question-answering":
        config.num_labels = 2  # start and end logits
    if task == "rerank":
        config.num_labels = 1
    torch.manual_seed(seed)
    model = getattr(transformers, HEADS[task]).from_config(config, attn_implementation="eager").eval()
    return model, tokenizer


def save(family: str, task: str, folder: Path, seed: int = 0) -> Path:
    """A Hugging Face model folder (config.json, model.safetensors, tokenizer files) of a tiny random model."""
    model, tokenizer = build(family, task, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_outlier(folder: Path, level: float = 300.0) -> Path:
    """A tiny BERT with a planted outlier channel: one FFN neuron per layer always on at ~`level` (like the outlier
    channels of trained BERTs), its own weight into the residual stream nearly zero, the others' weights enlarged so
    the FFN matters. One activation scale per tensor then leaves the other neurons a few int8 steps each."""
    import torch

    model, tokenizer = build("bert", "feature-extraction")
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.intermediate.dense.bias[5] = level
            layer.output.dense.weight *= 4.0
            layer.output.dense.weight[:, 5] *= 0.0002
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
