"""The requests data-free calibration starts its samples from: what users ask for, in several languages.

Sampled from BOS alone, the 270M writes mostly English prose, and GPTQ fitted to that loses on German,
French and Chinese (docs/quantization.md). Each request below, in Gemma's chat template, starts one
sequence; the model writes the rest. Written for the project (no held-out text: `heldout/` is never read
here); order matters (sequence i takes request i mod 16): the first eight mix seven languages and code.
"""

from __future__ import annotations

from gemma_edge.model.tokenizer import Tokenizer, format_chat

REQUESTS = (
    "Write a short story about a lighthouse keeper.",
    "Schreibe einen kurzen Bericht über das Wetter in den Alpen.",
    "Écris une lettre à un ami pour raconter tes vacances à la mer.",
    "用中文写一段关于城市生活的短文。",
    "Escribe una receta sencilla de cocina casera y explica cada paso.",
    "Write a Python function that parses a CSV file and sums one column, with comments.",
    "Scrivi un breve articolo sulla storia di una piccola città italiana.",
    "日本語で、季節の変化についての短いエッセイを書いてください。",
    "Explain how a bicycle gear system works, step by step.",
    "Erkläre einem Kind, wie ein Regenbogen entsteht.",
    "Décris le fonctionnement d'une bibliothèque municipale.",
    "请解释一下计算机是如何存储数据的。",
    "Escreva um parágrafo sobre a importância das florestas.",
    "Напиши короткий рассказ о зимнем вечере в деревне.",
    "Write a JavaScript class for a simple to-do list with add and remove methods.",
    "Give me three tips for learning a new language, and explain each one.",
)


def calibration_prompts(tokenizer: Tokenizer) -> list[list[int]]:
    """Each request as a user turn followed by the model's turn opening, as token ids starting with BOS."""
    return [tokenizer.encode(format_chat([{"role": "user", "content": r}])) for r in REQUESTS]
