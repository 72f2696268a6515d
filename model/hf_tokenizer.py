"""Gemma's tokenizer in Hugging Face's format: `tokenizer.json` and `tokenizer_config.json` with the chat
template, which onnxruntime-genai (`og.Tokenizer`, its chat-template API) and transformers read.

Built from our SentencePiece model, not downloaded: a byte-fallback BPE whose merges are every split of a
piece into two pieces, ranked by the merged piece's score (SentencePiece's BPE merges the best-scoring pair
first), as transformers' Gemma converter does. Two things need care to give SentencePiece's ids:
- Runs of spaces are user-defined pieces (2 to 31 "▁") that SentencePiece matches before BPE. Here they
  are ordinary BPE pieces, and a pre-tokenizer isolates runs of two or more (at most the longest piece) as
  SentencePiece's greedy match does, so the word after such a run loses its "▁" as it does there.
  onnxruntime-genai 0.18 ignores that pre-tokenizer: runs longer than 31 spaces split differently there
  (docs/onnx.md); everything else matches.
- The other user-defined pieces (`<start_of_turn>`, `<end_of_turn>`, image markers, HTML tags, …) are added
  tokens matched in raw text. `<bos>`, `<eos>`, `<pad>` and `<unk>` are special added tokens, as in Hugging
  Face's own Gemma files: the chat template writes `<bos>` and encoding the rendered prompt gives its id.
"""

from __future__ import annotations

import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb

from .tokenizer import Tokenizer

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
SPACE = "\u2581"

# Gemma 3's chat template (the one its Hugging Face tokenizer_config carries); `format_chat` in
# tokenizer.py writes the same text without the leading `<bos>` (tests/test_tokenizer.py checks both agree).
CHAT_TEMPLATE = """{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""


def tokenizer_json(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` that encodes as `tokenizer` does (see the module docstring)."""
    import tokenizers as hf
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    m = sp_pb.ModelProto()
    m.ParseFromString(tokenizer.serialized)
    pieces = [(p.piece, p.type) for p in m.pieces]
    score = [p.score for p in m.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    spaces = {p for p, kind in pieces if kind == _USER_DEFINED and p and set(p) == {SPACE}}
    bpe = {p for p, kind in pieces if kind == _NORMAL} | spaces
    # space runs first: SentencePiece matches them before any BPE merge (and genai, which ignores the
    # pre-tokenizer, then still forms them first)
    merges = sorted((p not in spaces, -score[vocab[p]], vocab[p], vocab[p[:k]], vocab[p[k:]]) for p in bpe
                    for k in range(1, len(p)) if p[:k] in bpe and p[k:] in bpe)
    tok = hf.Tokenizer(BPE(vocab=vocab, merges=[(pieces[a][0], pieces[b][0]) for *_, a, b in merges],
                           unk_token=tokenizer.piece(tokenizer.sp.unk_id()), byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    if spaces:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{SPACE}{{2,{max(map(len, spaces))}}}"), "isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_tokens([AddedToken(p, normalized=False) for p, kind in pieces if kind == _USER_DEFINED and p not in spaces])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, kind in pieces if kind in (_CONTROL, _UNKNOWN)])
    bos = tokenizer.piece(tokenizer.bos_id)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tokenizer.bos_id)])
    return tok


def write_hf_tokenizer(tokenizer: Tokenizer, folder: Path, max_length: int) -> None:
    """`tokenizer.json` and `tokenizer_config.json` (with the chat template) into `folder`."""
    tokenizer_json(tokenizer).save(str(folder / "tokenizer.json"))
    piece = tokenizer.piece
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": piece(tokenizer.bos_id),
              "eos_token": piece(tokenizer.eos_id), "pad_token": piece(tokenizer.pad_id),
              "unk_token": piece(tokenizer.sp.unk_id()), "add_bos_token": True,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": max_length,
              "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
