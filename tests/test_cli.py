import subprocess
import sys
from pathlib import Path

import pytest

from gemma_edge.cli.main import build_parser, main
from gemma_edge.model import GemmaConfig, load
from gemma_edge.model.inspect import kv_cache_bytes


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gemma-edge {command}") and len(out.splitlines()) > 5


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("gemma-edge")  # beside this interpreter, in its venv
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "inspect" in proc.stdout


def test_inspect_kv_planner_by_hand(capsys):
    """4B at 128K context, bf16: 5 of every 6 layers hold 1024 tokens instead of 131072."""
    assert main(["inspect", "--preset", "4b", "--context", "131072"]) == 0
    out = capsys.readouterr().out
    per_token_layer = 2 * 4 * 256 * 2  # K and V, 4 KV heads, head_dim 256, bf16
    ring = (29 * 1024 + 5 * 131_072) * per_token_layer
    full = 34 * 131_072 * per_token_layer
    assert f"{ring / 2**20:,.1f} MiB" in out and f"{full / 2**20:,.1f} MiB" in out
    assert "pattern LLLLLGLLLLLGLLLLLGLLLLLGLLLLLGLLLL" in out


def test_kv_planner_short_context_equals_all_global():
    from gemma_edge.model import PRESETS

    c: GemmaConfig = PRESETS["270m"]
    assert kv_cache_bytes(c, 300) == kv_cache_bytes(c, 300, ring=False) == 18 * 300 * 2 * 256 * 2


def test_convert_then_run(tmp_path, tiny_dir, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(tiny_dir), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.model"}
    assert load(out).config == load(tiny_dir).config
    capsys.readouterr()
    assert main(["run", str(out), "--prompt", "the", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")


def test_run_streams_the_reference_greedy_text(tiny_dir, capsys):
    from gemma_edge.model import ReferenceRunner, generate

    loaded = load(tiny_dir)
    ids = loaded.tokenizer.encode("hello")
    new = generate(ReferenceRunner(loaded.model), ids, 8, stop_ids=loaded.tokenizer.stop_ids)
    expected = loaded.tokenizer.decode([t for t in new if t not in loaded.tokenizer.stop_ids])
    assert main(["run", str(tiny_dir), "--prompt", "hello", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == "hello" + expected + "\n"
