"""What serving a generator from its exported decoder costs in quality: test perplexity through the ONNX decoder
(int8 by default) beside the checkpoint's own torch model on the same token windows, and the greedy text of the
recipe's report prompts from each runtime, with the first token where they part.

    python bench/generator_served_form.py --checkpoint runs/demo/generator [--tokens 16384] [--window 512]

Windows do not overlap (each token is scored once, with the tokens before it in its window as context), so the
numbers are comparable between the two runtimes rather than with the report's sliding-window perplexity.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def nll(logits: torch.Tensor, ids: list[int]) -> float:
    """Summed negative log-likelihood of ids[1:] under `logits` (len(ids), vocab)."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    return -float(logprobs.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum())


async def greedy(runtime, prompt: str, tokens: int) -> list[int]:
    from serving.decoding import Decoding

    stream = runtime.open([(runtime.encode(prompt, tokens), Decoding(max_new_tokens=tokens, temperature=0,
                                                                     logprobs=0))])[0]
    return [payload.token async for kind, payload in stream if kind == "token"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", help="WikiText-2 folder (default: the one the checkpoint trained on)")
    parser.add_argument("--tokens", type=int, default=16384, help="test tokens scored")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=60, help="greedy tokens per report prompt")
    args = parser.parse_args()
    from serving.text_generator import TextGenerator
    from training.data.wikitext import detokenize, find_split, read_split
    from training.tasks.generator import PROMPTS

    ckpt = Path(args.checkpoint)
    runtimes = {name: TextGenerator(ckpt, runtime=name) for name in ("torch", "onnx")}
    manifest = runtimes["torch"].manifest
    data = Path(args.data_dir or manifest.training["data_dir"])
    split = read_split(find_split(data, "test"), "test")
    texts = [detokenize(a) if manifest.preprocessing.get("detokenize") else a for a in split.articles]
    tokenizer = runtimes["torch"].tokenizer
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"][:args.tokens]
    windows = [ids[i:i + args.window] for i in range(0, len(ids) - 1, args.window) if len(ids[i:i + args.window]) > 1]
    console = Console(width=None if sys.stdout.isatty() else 150)
    scores = {}
    for name, runtime in runtimes.items():
        total = sum(nll(runtime.decoder.prefill([w], every_position=True)[0][0], w) for w in windows)
        scores[name] = math.exp(total / sum(len(w) - 1 for w in windows))
        runtime.decoder.keep([])
    weights = manifest.preprocessing.get("decoder_weights", "?")
    table = Table(title=f"{ckpt}: test perplexity, {sum(len(w) - 1 for w in windows):,} tokens in windows of "
                        f"{args.window}")
    for column in ("runtime", "perplexity", "vs torch"):
        table.add_column(column, justify="right")
    table.add_row("torch (the checkpoint, fp32)", f"{scores['torch']:.4f}", "")
    table.add_row(f"onnx ({weights} decoder)", f"{scores['onnx']:.4f}",
                  f"{100 * (scores['onnx'] / scores['torch'] - 1):+.2f}%")
    console.print(table)

    async def texts_of() -> dict[str, list[list[int]]]:
        return {name: [await greedy(rt, p, args.new_tokens) for p in PROMPTS] for name, rt in runtimes.items()}

    greedy_ids = asyncio.run(texts_of())
    for prompt, ours, theirs in zip(PROMPTS, greedy_ids["onnx"], greedy_ids["torch"], strict=True):
        parted = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
        head = prompt.splitlines()[0]
        if parted is None:
            console.print(f"{head}: the same {len(ours)} greedy tokens")
        else:
            console.print(f"{head}: the same up to token {parted + 1} of {len(ours)}: "
                          f"{tokenizer.decode(theirs[:parted])!r} then torch {tokenizer.decode(theirs[parted:])!r}"
                          f" | onnx {tokenizer.decode(ours[parted:])!r}")


if __name__ == "__main__":
    main()
