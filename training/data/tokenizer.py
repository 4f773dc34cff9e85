"""Train a WordPiece tokenizer on the training titles (used when no pretrained tokenizer is given)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4; [SEP] is the CLIP "EOS"


def train_wordpiece(titles: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator([t for t in titles if t], trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """pad / bos / eos ids for the text tower, for our WordPiece or a CLIP BPE tokenizer."""
    def first(*names):
        for n in names:
            i = tok.token_to_id(n)
            if i is not None:
                return i
        raise ValueError(f"tokenizer has none of the special tokens {names}")

    return {
        "pad_token_id": first("[PAD]", "<pad>", "<|endoftext|>"),
        "bos_token_id": first("[CLS]", "<|startoftext|>", "<s>"),
        "eos_token_id": first("[SEP]", "<|endoftext|>", "</s>"),
    }


def save(tok: Tokenizer, path: Path) -> None:
    # padding/truncation are applied at load time from the recorded max length
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(path))
