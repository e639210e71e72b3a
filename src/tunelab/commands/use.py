"""Using a finished run: `generate`, `chat`, `merge`, `export`, `serve`.

Cheap to import: torch, transformers and fastapi are imported inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from tunelab.errors import TunelabError

out = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True, soft_wrap=True)


def _sampling(max_tokens: int, temperature: float, top_p: float, greedy: bool, seed: int | None):
    from tunelab.inference.decoding import SamplingOptions

    if temperature < 0:
        raise TunelabError("must be >= 0", field="--temperature", expected="0 (greedy) to 2")
    if not 0 < top_p <= 1:
        raise TunelabError("must be in (0, 1]", field="--top-p", expected="e.g. 0.95")
    return SamplingOptions(max_new_tokens=max_tokens, temperature=0.0 if greedy else temperature, top_p=top_p,
                           seed=seed)


def generate(
    run: Path = typer.Argument(..., help="a finished run directory"),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="a prompt (repeatable)"),
    input: Path = typer.Option(None, "--input", "-i", help="a file of prompts: any supported row shape, or .txt lines"),
    output: Path = typer.Option(None, "--output", "-o", help="where to write rows + answers (.jsonl, .json, .csv)"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "--max-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="prompts decoded together"),
) -> None:
    """Answer prompts with a run's model, formatted exactly as in training (greedy)."""
    from tunelab import api

    if input is not None:
        if prompt:
            raise TunelabError("give --prompt or --input, not both", expected="tunelab generate RUN --input FILE --output FILE")
        if output is None:
            raise TunelabError("--input needs --output", expected="tunelab generate RUN --input FILE --output out.jsonl")
        res = api.generate_file(run, input, output, max_new_tokens=max_new_tokens, batch_size=batch_size)
        rate = f" · {res.new_tokens / res.seconds:.1f} tokens/s" if res.seconds else ""
        limit = f" · {res.hit_limit} stopped at --max-new-tokens" if res.hit_limit else ""
        err.print(f"[green]wrote[/green] {res.rows} rows to {res.output} in {res.seconds} s{rate}{limit}")
        return
    if output is not None:
        raise TunelabError("--output needs --input", expected="tunelab generate RUN --input FILE --output FILE")
    if not prompt:
        raise TunelabError("no prompt given", expected='--prompt "your question" or --input FILE --output FILE')
    answers = api.generate(run, list(prompt), max_new_tokens=max_new_tokens, batch_size=batch_size)
    for a in answers:
        out.print(a, markup=False, highlight=False)


def chat(
    run: Path = typer.Argument(..., help="a finished run directory"),
    max_tokens: int = typer.Option(256, "--max-tokens", "--max-new-tokens", min=1, help="longest answer"),
    temperature: float = typer.Option(0.7, "--temperature", "-t", help="0 = greedy"),
    top_p: float = typer.Option(0.95, "--top-p"),
    greedy: bool = typer.Option(False, "--greedy", help="always take the most likely token (deterministic)"),
    seed: int = typer.Option(None, "--seed", help="seed for sampling (reproducible answers)"),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for the model (default: torch's; "
                                "1 is steadier on a busy machine)"),
) -> None:
    """Chat with a run's model in the terminal: streamed answers, history, the run's own template."""
    from tunelab import api
    from tunelab.inference.chat import run_chat
    from tunelab.progress import status

    options = _sampling(max_tokens, temperature, top_p, greedy, seed)
    if threads:
        import torch

        torch.set_num_threads(threads)
    with status(f"Loading {run}"):
        loaded = api.load_run(run)
    loaded.require_generative()
    run_chat(loaded, options)


def merge(
    run: Path = typer.Argument(..., help="a finished run directory"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="directory to write the merged model to"),
    dtype: str = typer.Option("float32", "--dtype", help="weights dtype: float32, float16 or bfloat16"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT if it exists"),
) -> None:
    """Fold a LoRA/DoRA/IA3/QLoRA adapter into its base: a plain Hugging Face model directory."""
    from tunelab.export.merge import merge_run
    from tunelab.progress import status

    with status(f"Merging {run}"):
        res = merge_run(run, out_dir, dtype=dtype, overwrite=overwrite)
    for note in res.notes:
        err.print(f"[dim]{note}[/dim]")
    out.print(f"merged {res.method} run → [bold]{res.out}[/bold] (weights {res.precision})", highlight=False)
    if res.max_abs_logit_diff is not None and res.probe_tokens:
        out.print(f"max |Δlogit| merged vs adapter model: {res.max_abs_logit_diff:.3g} "
                  f"over {res.probe_tokens} prompt tokens", highlight=False)
    out.print(f"load with: AutoModelForCausalLM.from_pretrained({str(res.out)!r})", markup=False, highlight=False)


def export(
    run: Path = typer.Argument(..., help="a finished run directory"),
    format: str = typer.Option("gguf", "--format", "-f", help="gguf (one file for llama.cpp/Ollama), adapter or hf"),
    dtype: str = typer.Option(None, "--dtype", help="gguf: f32, f16 (default) or q8_0; hf: float32/float16/bfloat16"),
    out_path: Path = typer.Option(None, "--out", "-o", help="output file (gguf) or directory (adapter, hf)"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="gguf: read the file back with transformers and "
                                "compare greedy tokens with the merged model"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the output if it exists"),
) -> None:
    """Export a run: a GGUF file, the peft adapter with its tokenizer, or a merged HF model (hf)."""
    from tunelab.progress import status

    fmt = format.lower()
    if fmt == "gguf":
        from tunelab.export.gguf import export_gguf

        with status(f"Exporting {run} to GGUF"):
            res = export_gguf(run, out_path, dtype=dtype or "f16", verify=verify, overwrite=overwrite)
        for note in res.notes:
            err.print(f"[dim]{note}[/dim]")
        out.print(f"wrote [bold]{res.path}[/bold] ({res.arch}, {res.dtype}, {res.tensors} tensors, {res.size_mb} MB; "
                  "tokenizer and chat template embedded)", highlight=False)
        if res.verified is not None:
            tokens = "same" if res.same_tokens else f"differ from token {res.first_difference}"
            colour = "green" if res.verified else ("yellow" if res.dtype == "q8_0" else "red")
            out.print(f"[{colour}]read back with transformers' GGUF loader[/{colour}]: greedy tokens {tokens} "
                      f"({res.tokens_compared} compared) · prompt ids "
                      f"{'match' if res.tokenizer_match else 'DIFFER'}", highlight=False)
            if not res.verified and res.dtype != "q8_0":
                raise TunelabError("the GGUF file does not reproduce the merged model", file=str(res.path),
                                   expected="identical greedy tokens (please report this)")
        return
    if fmt == "adapter":
        from tunelab.export.merge import export_adapter

        if out_path is None:
            raise TunelabError("--out is required", expected="--out DIR")
        path = export_adapter(run, out_path, overwrite=overwrite)
        out.print(f"wrote adapter, tokenizer and chat template to [bold]{path}[/bold] "
                  "(load with PeftModel.from_pretrained(base, DIR))", highlight=False)
        return
    if fmt in ("hf", "merged"):
        if out_path is None:
            raise TunelabError("--out is required", expected="--out DIR")
        merge(run, out_path, dtype or "float32", overwrite)
        return
    raise TunelabError(f"unknown export format {format!r}", field="--format", expected="gguf, adapter or hf")


def serve(
    run: Path = typer.Argument(..., help="a finished run directory"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default: this machine only)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: str = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY",
                                help="require 'Authorization: Bearer KEY' (or set TUNELAB_API_KEY)"),
    model_name: str = typer.Option(None, "--model-name", help="model id reported by /v1/models (default: run name)"),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="most queued requests decoded together"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="default completion length when a request "
                                   "gives none (at most --max-tokens-cap)"),
    max_tokens_cap: int = typer.Option(1024, "--max-tokens-cap", min=1, help="most completion tokens one request "
                                       "may ask for (400 above)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="run model code shipped with the "
                                           "run, if its config asks for it (only for runs you trust)"),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for the model (default: torch's; "
                                "1 is steadier on a busy machine)"),
) -> None:
    """Serve a run over an OpenAI-compatible HTTP API (chat, completions, streaming)."""
    from tunelab.serve.app import serve as run_server

    run_server(run, host=host, port=port, api_key=api_key or None, model_id=model_name, max_batch=max_batch,
               default_max_tokens=max_tokens, max_tokens_cap=max_tokens_cap, trust_remote_code=trust_remote_code,
               threads=threads, log=lambda line: err.print(line, markup=False, highlight=False))


def check(
    run: Path = typer.Argument(..., help="a finished sft run directory"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, help="the budget every answer must stop within"),
    gguf_dtype: str = typer.Option("f32", "--gguf-dtype", help="GGUF weights to check: f32 (exact), f16 or q8_0"),
    json_out: Path = typer.Option(None, "--json", help="also write every prompt's tokens here"),
) -> None:
    """Prove the template/EOS contract: the adapter, the merged model, the GGUF file (read back by
    transformers) and `tunelab serve` render the same prompt tokens and give the same greedy answers,
    stopping at EOS. Exit code 1 names the first differing token."""
    import json

    from tunelab.export.gguf import GGUF_DTYPES
    from tunelab.serve.check import check_run

    if gguf_dtype not in GGUF_DTYPES:
        raise TunelabError(f"unknown GGUF dtype {gguf_dtype!r}", field="--gguf-dtype", expected=", ".join(GGUF_DTYPES))
    result = check_run(run, max_new_tokens=max_new_tokens, gguf_dtype=gguf_dtype)
    out = Console()
    reference = result.answers["adapter"]
    for way in result.ways:
        bad = [p for p in result.problems if p.startswith(f"{way},")]
        mark = "[red]✗[/red]" if bad else "[green]✓[/green]"
        tokens = sum(len(a.prompt_ids or []) for a in reference) if way == "adapter" else None
        extra = f" ({tokens} prompt tokens, {sum(len(a.token_ids or []) for a in reference)} answer tokens)" if tokens else ""
        out.print(f"{mark} {way}{extra}")
        for problem in bad:
            out.print(f"    {problem}", highlight=False, markup=False)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    if not result.passed:
        out.print(f"[red]the contract does not hold on {len(result.problems)} count(s)[/red]")
        raise typer.Exit(1)
    out.print(f"[green]adapter = merged = GGUF = served on {len(result.prompts)} prompts, token for token; every "
              f"answer stopped at EOS within {result.max_new_tokens} tokens[/green]")


def register(app: typer.Typer) -> None:
    app.command()(check)
    app.command()(generate)
    app.command()(chat)
    app.command()(merge)
    app.command()(export)
    app.command()(serve)
