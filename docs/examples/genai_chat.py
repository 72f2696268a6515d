"""A chat app on an exported ONNX folder that needs nothing but onnxruntime-genai: its tokenizer, chat
template, greedy generation and streaming decoder. Usage: python genai_chat.py FOLDER [PROMPT ...]
Prints each streamed reply, then the replies' token ids as one JSON line (tests/test_onnx_real.py)."""
import json
import sys

import onnxruntime_genai as og

folder, prompts = sys.argv[1], sys.argv[2:] or ["Name three rivers in Europe.", "Write a haiku about the sea."]
model = og.Model(folder)
tokenizer = og.Tokenizer(model)
replies = []
for prompt in prompts:
    text = tokenizer.apply_chat_template(messages=json.dumps([{"role": "user", "content": prompt}]),
                                         add_generation_prompt=True)
    ids = tokenizer.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 48)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    stream, reply = tokenizer.create_stream(), []
    while not generator.is_done():
        generator.generate_next_token()
        token = generator.get_next_tokens()[0]
        reply.append(int(token))
        print(stream.decode(token), end="", flush=True)
    print()
    replies.append(reply)
print(json.dumps(replies))
