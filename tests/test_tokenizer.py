import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb

from gemma_edge.model import GemmaEdgeError, StreamDecoder, Tokenizer, format_chat
from gemma_edge.model.tokenizer import tiny_tokenizer_model

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界。今天天气很好。",
    "def f(x):\n\treturn {'a': [x ** 2 for _ in range(3)]}  # comment\n",
    "emoji 😀🚀👩‍👩‍👧 and accents: café naïve",
    "   leading, double  spaces,\n\n\nnewlines\t\ttabs and trailing   ",
]


@pytest.fixture(params=["tiny", "real"])
def tokenizer(request):
    if request.param == "tiny":
        return Tokenizer(tiny_tokenizer_model())
    return request.getfixturevalue("real_model").tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_decode_encode_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_id == 2
    assert tokenizer.decode(ids[1:]) == text


def test_chat_template_literal_format():
    assert format_chat([{"role": "user", "content": "Hi there "}]) == \
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert format_chat(conversation) == (
        "<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4<end_of_turn>\n"
        "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n")
    assert format_chat(conversation[1:3], add_generation_prompt=False) == \
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
    with pytest.raises(GemmaEdgeError, match="must alternate"):
        format_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_chat_markers_encode_to_their_ids(tokenizer):
    ids = tokenizer.encode(format_chat([{"role": "user", "content": "Hi"}]))
    assert ids.count(tokenizer.start_of_turn_id) == 2 and ids.count(tokenizer.end_of_turn_id) == 1
    assert tokenizer.stop_ids == (tokenizer.eos_id, tokenizer.end_of_turn_id)


@pytest.mark.real
def test_real_ids_and_piece_types(real_model):
    tok = real_model.tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (262_144, 2, 1, 0)
    assert (tok.start_of_turn_id, tok.end_of_turn_id) == (105, 106)
    proto = sp_pb.ModelProto()
    proto.ParseFromString(tok.serialized)
    types = {i: proto.pieces[i].type for i in (0, 1, 2, 3, 105, 106)}
    assert types == {0: 3, 1: 3, 2: 3, 3: 2, 105: 4, 106: 4}  # unk UNKNOWN, turn markers USER_DEFINED


@pytest.mark.real
def test_real_tokenizer_agrees_with_transformers(real_hf_dir, real_model):
    """transformers builds its own (Rust `tokenizers`) Gemma tokenizer from our tokenizer.model."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(real_hf_dir)
    for text in TEXTS + [format_chat([{"role": "user", "content": "Hi"}])]:
        assert real_model.tokenizer.encode(text) == hf(text)["input_ids"], text


def test_stream_decoder_holds_back_partial_utf8():
    tok = Tokenizer(tiny_tokenizer_model())
    ids = tok.encode("a😀b", add_bos=False)  # the emoji is four byte-fallback pieces
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == "a😀b"
    assert "😀" in pieces and all("\ufffd" not in p for p in pieces)


def _agreement_texts(tokenizer: Tokenizer) -> list[str]:
    """Multilingual prose, code, chat, runs of spaces and newlines, and every user-defined piece in text."""
    from gemma_edge.calibration.data import held_out_domains

    proto = sp_pb.ModelProto()
    proto.ParseFromString(tokenizer.serialized)
    user_defined = [p.piece for p in proto.pieces if p.type == 4 and set(p.piece) != {"\u2581"}]
    runs = [f"x{' ' * n}y{' ' * n}" for n in range(1, 40)] + ["\n" * n + "\t" * n + "z" for n in range(1, 8)]
    return TEXTS + runs + list(held_out_domains().values()) + ["a" + "a".join(user_defined) + "a"]


def test_tokenizer_json_encodes_and_decodes_as_sentencepiece(tokenizer, tmp_path):
    """The Hugging Face tokenizer.json we write (`tokenizers`, the library transformers uses) gives
    SentencePiece's ids on every text, and `<bos>` spelled in text is the BOS id, as in Hugging Face's Gemma."""
    from gemma_edge.model.hf_tokenizer import tokenizer_json

    hf = tokenizer_json(tokenizer)
    for text in _agreement_texts(tokenizer):
        ids = tokenizer.encode(text)
        assert hf.encode(text).ids == ids, text[:60]
        assert hf.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids[1:])
    assert hf.encode("<bos>Hi", add_special_tokens=False).ids == tokenizer.encode("Hi")


@pytest.mark.real
def test_written_chat_template_renders_format_chat(real_model, tmp_path):
    """transformers reads the folder we write; its rendering of our Jinja chat template is `<bos>` + format_chat
    (system prompt, alternating turns, generation prompt, and the image items of a multimodal turn)."""
    from transformers import AutoTokenizer

    from gemma_edge.model.hf_tokenizer import write_hf_tokenizer

    write_hf_tokenizer(real_model.tokenizer, tmp_path, 1024)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    conversations = [[{"role": "user", "content": " Hi there "}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]]
    for messages in conversations:
        for prompt in (True, False):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert text == "<bos>" + format_chat(messages, add_generation_prompt=prompt)
            assert hf(text, add_special_tokens=False)["input_ids"] == real_model.tokenizer.encode(text[5:])
    image_turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    assert hf.apply_chat_template(image_turn, tokenize=False, add_generation_prompt=True) == \
        "<bos><start_of_turn>user\n<start_of_image>Describe it.<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(Exception, match="must alternate"):
        hf.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tokenize=False)
