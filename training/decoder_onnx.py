"""A generator checkpoint as an ONNX decoder for ONNX Runtime: the graph that serving.onnx_decoder drives token by
token, with ONNX Runtime's fused CPU kernels, and weights in fp32 or int8.

The graph is written node by node (as ONNX Runtime GenAI's model builder writes its graphs) rather than traced,
because decoding wants ONNX Runtime's contrib operators: GroupQueryAttention (rotary positions, the key/value cache
and causal masking in one kernel), SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (RMSNorm with the
residual add) and, after quantization by onnxruntime's own MatMulNBitsQuantizer, MatMulNBits (block-quantized
weights). Llama-family models (SmolLM2) and GPT-2 are built.

Inputs: `input_ids` (batch, new), `attention_mask` (batch, total): each row's tokens first, padding after (the cache
is right-padded: row b holds its keys at [0, length_b)), `logits_positions` (batch, k): which of the new positions to
project to the vocabulary, and per layer `past_key_values.N.key/value` (batch, kv heads, past, head dim). Outputs:
`logits` (batch, k, vocab) and `present.N.key/value`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.export import Exported
from training.tasks.specs.generator import SPEC as GENERATOR

# int8: measured on SmolLM2-135M (2 cores): 12 ms a token against 38 in fp32, WikiText-2 test perplexity +0.25%.
# 4-bit weights were measured and left out: MatMulNBits' fast 4-bit kernel wants integer zero points, which cannot
# hold Q4_1's grid (max logit difference 14.6, greedy text different from the first token), and with float zero
# points (exact) it decodes at 126 ms a token.
WEIGHTS = ("int8", "fp32")
BLOCK = 32  # quantization block along each weight's input dimension (GGUF's Q8_0 blocks are 32 too)
MS = "com.microsoft"


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    positions: int


def decoder_shape(config: Any) -> DecoderShape:
    if config.model_type == "gpt2":
        return DecoderShape(config.n_layer, config.n_head, config.n_head, config.n_embd // config.n_head,
                            config.vocab_size, config.n_positions)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return DecoderShape(config.num_hidden_layers, heads, config.num_key_value_heads, head_dim, config.vocab_size,
                        config.max_position_embeddings)


class _Graph:
    """Nodes and initializers being written, with unique names; matrices in fp32 or block-quantized to 8 bits."""

    def __init__(self, quantized: bool, accuracy_level: int = 4) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.quantized, self.accuracy_level = quantized, accuracy_level
        self._count = 0

    def weight(self, name: str, array: np.ndarray | torch.Tensor) -> str:
        from onnx import numpy_helper

        if isinstance(array, torch.Tensor):
            array = array.detach().float().numpy() if array.is_floating_point() else array.detach().numpy()
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs: Any) -> Any:
        from onnx import helper

        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{self._count}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def matmul(self, x: str, weight: torch.Tensor, name: str, bias: torch.Tensor | None = None,
               output: str | None = None) -> str:
        """x @ weight.T (`weight`: (out, in), as nn.Linear keeps it): a MatMul, or MatMulNBits over the weight
        quantized by quantize_blocks."""
        out_name = output or f"{name}.out"
        if not self.quantized:
            out = self.node("MatMul", [x, self.weight(f"{name}.weight", weight.t())], [out_name])
        else:
            codes, scales = quantize_blocks(weight.detach().float())
            n, k = weight.shape
            out = self.node("MatMulNBits", [x, self.weight(f"{name}.q8", codes), self.weight(f"{name}.scales", scales)],
                            [out_name], domain=MS, K=k, N=n, bits=8, block_size=BLOCK,
                            accuracy_level=self.accuracy_level)
        if bias is not None:
            out = self.node("Add", [out, self.weight(f"{name}.bias", bias)])
        return out


def quantize_blocks(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' 8-bit layout of `weight` (out, in): per block of BLOCK inputs, codes q and a scale, symmetric
    (w = (q - 128) * scale, MatMulNBits' default zero point): GGUF's Q8_0, whose weights it reproduces exactly."""
    n, k = weight.shape
    if k % BLOCK:
        weight = torch.nn.functional.pad(weight, (0, BLOCK - k % BLOCK))
    blocks = weight.reshape(n, -1, BLOCK).double()
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = ((blocks / scale).round().clamp(-127, 127) + 128).to(torch.uint8).numpy()
    return codes, scale.float().reshape(-1).numpy()


def _rotary_caches(model: nn.Module, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (positions, head_dim / 2) from the model's own rotary embedding (any rope scaling included)."""
    rotary = model.model.rotary_emb
    with torch.no_grad():
        x = torch.zeros(1, dtype=torch.float32)
        cos, sin = rotary(x, torch.arange(positions).unsqueeze(0))
    half = cos.shape[-1] // 2
    return cos[0, :, :half].numpy(), sin[0, :, :half].numpy()


def _attention_inputs(g: _Graph) -> tuple[str, str]:
    """seqlens_k (each row's total length - 1) and total_sequence_length, as GroupQueryAttention reads them."""
    one = g.weight("one", np.array([1], dtype=np.int64))
    lengths = g.node("ReduceSum", ["attention_mask", one], keepdims=0)
    seqlens = g.node("Cast", [g.node("Sub", [lengths, one])], to=6)  # int32
    total = g.node("Cast", [g.node("Gather", [g.node("Shape", ["attention_mask"]), g.weight("axis1", np.array(
        1, dtype=np.int64))], axis=0)], to=6)
    return seqlens, total


def _project(g: _Graph, hidden: str, lm_head: torch.Tensor) -> str:
    """The hidden states at `logits_positions` (batch, k) through the output projection."""
    index = g.node("Unsqueeze", ["logits_positions", g.weight("axis_last", np.array([-1], dtype=np.int64))])
    picked = g.node("GatherND", [hidden, index], batch_dims=1)
    return g.matmul(picked, lm_head, "lm_head", output="logits")


def _llama(g: _Graph, model: nn.Module, shape: DecoderShape) -> None:
    config = model.config
    eps = float(config.rms_norm_eps)
    cos, sin = _rotary_caches(model, shape.positions)
    g.weight("cos_cache", cos), g.weight("sin_cache", sin)
    seqlens, total = _attention_inputs(g)
    hidden = g.node("Gather", [g.weight("embed_tokens", model.model.embed_tokens.weight), "input_ids"])
    layers = model.model.layers
    residual = hidden
    normed = g.node("SimplifiedLayerNormalization", [hidden, g.weight("layers.0.input_norm",
                                                                     layers[0].input_layernorm.weight)],
                    epsilon=eps, axis=-1)
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv_bias = None
        if attn.q_proj.bias is not None:
            qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        qkv = g.matmul(normed, qkv_weight, f"layers.{i}.qkv", qkv_bias)
        context = g.node("GroupQueryAttention", [qkv, "", "", f"past_key_values.{i}.key",
                                                 f"past_key_values.{i}.value", seqlens, total, "cos_cache",
                                                 "sin_cache"],
                         [f"layers.{i}.attention", f"present.{i}.key", f"present.{i}.value"], domain=MS,
                         num_heads=shape.heads, kv_num_heads=shape.kv_heads, do_rotary=1, rotary_interleaved=0,
                         scale=float(shape.head_dim ** -0.5))[0]
        attended = g.matmul(context, attn.o_proj.weight, f"layers.{i}.o_proj", attn.o_proj.bias)
        normed, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [
            residual, attended, g.weight(f"layers.{i}.post_norm", layer.post_attention_layernorm.weight)],
            4, domain=MS, epsilon=eps)
        gate = g.matmul(normed, mlp.gate_proj.weight, f"layers.{i}.gate")
        up = g.matmul(normed, mlp.up_proj.weight, f"layers.{i}.up")
        activated = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])
        down = g.matmul(activated, mlp.down_proj.weight, f"layers.{i}.down")
        next_norm = layers[i + 1].input_layernorm.weight if i + 1 < len(layers) else model.model.norm.weight
        normed, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [
            residual, down, g.weight(f"layers.{i + 1}.input_norm", next_norm)], 4, domain=MS, epsilon=eps)
    _project(g, normed, model.lm_head.weight)


def _gpt2(g: _Graph, model: nn.Module, shape: DecoderShape) -> None:
    transformer = model.transformer
    eps = float(model.config.layer_norm_epsilon)
    seqlens, total = _attention_inputs(g)
    # positions of the new tokens: each row's past length onwards, seqlens_k + 1 - new, which is negative for the
    # shorter prompts of a right-padded first pass: those start at 0
    new = g.node("Gather", [g.node("Shape", ["input_ids"]), g.weight("axis1b", np.array(1, dtype=np.int64))],
                 axis=0)
    start = g.node("Max", [g.node("Sub", [g.node("Add", [g.node("Cast", [seqlens], to=7), g.weight(
        "one_b", np.array(1, dtype=np.int64))]), new]), g.weight("zero_b", np.array(0, dtype=np.int64))])
    steps = g.node("Range", [g.weight("zero", np.array(0, dtype=np.int64)), new, g.weight("step", np.array(
        1, dtype=np.int64))])
    positions = g.node("Add", [g.node("Unsqueeze", [start, g.weight("axis_one", np.array([1], dtype=np.int64))]),
                               g.node("Unsqueeze", [steps, g.weight("axis_zero", np.array([0], dtype=np.int64))])])
    hidden = g.node("Add", [g.node("Gather", [g.weight("wte", transformer.wte.weight), "input_ids"]),
                            g.node("Gather", [g.weight("wpe", transformer.wpe.weight), positions])])
    blocks = transformer.h
    residual = hidden
    normed = g.node("LayerNormalization", [hidden, g.weight("h.0.ln_1.weight", blocks[0].ln_1.weight),
                                           g.weight("h.0.ln_1.bias", blocks[0].ln_1.bias)], epsilon=eps, axis=-1)
    for i, block in enumerate(blocks):
        attn, mlp = block.attn, block.mlp
        # transformers' Conv1D keeps its weight as (in, out): transposed to nn.Linear's (out, in)
        qkv = g.matmul(normed, attn.c_attn.weight.t(), f"h.{i}.c_attn", attn.c_attn.bias)
        context = g.node("GroupQueryAttention", [qkv, "", "", f"past_key_values.{i}.key",
                                                 f"past_key_values.{i}.value", seqlens, total],
                         [f"h.{i}.attention", f"present.{i}.key", f"present.{i}.value"], domain=MS,
                         num_heads=shape.heads, kv_num_heads=shape.kv_heads,
                         scale=float(shape.head_dim ** -0.5))[0]
        attended = g.matmul(context, attn.c_proj.weight.t(), f"h.{i}.attn_proj", attn.c_proj.bias)
        normed, _, _, residual = g.node("SkipLayerNormalization", [
            residual, attended, g.weight(f"h.{i}.ln_2.weight", block.ln_2.weight),
            g.weight(f"h.{i}.ln_2.bias", block.ln_2.bias)], 4, domain=MS, epsilon=eps)
        up = g.matmul(normed, mlp.c_fc.weight.t(), f"h.{i}.c_fc", mlp.c_fc.bias)
        activated = g.node("FastGelu", [up], domain=MS)  # GPT-2's tanh approximation
        down = g.matmul(activated, mlp.c_proj.weight.t(), f"h.{i}.mlp_proj", mlp.c_proj.bias)
        last = i + 1 == len(blocks)
        ln = transformer.ln_f if last else blocks[i + 1].ln_1
        normed, _, _, residual = g.node("SkipLayerNormalization", [
            residual, down, g.weight(f"h.{i + 1}.ln.weight", ln.weight), g.weight(f"h.{i + 1}.ln.bias", ln.bias)],
            4, domain=MS, epsilon=eps)
    _project(g, normed, model.lm_head.weight)


def build_decoder(model: nn.Module, path: Path, weights: str = "int8", accuracy_level: int = 4) -> DecoderShape:
    """Write `model` (a transformers llama-family or GPT-2 causal LM) as an ONNX decoder at `path` (weights in
    `path` + .data), its matrices in fp32 or quantized to 8 bits by quantize_blocks. ONNX Runtime computes the
    quantized matrices in int8 (activations quantized per block too) with `accuracy_level` 4, in fp32 with 1 (exact,
    and 35 times slower on a 2-core AVX2 CPU)."""
    import onnx
    from onnx import TensorProto, helper

    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of: {', '.join(WEIGHTS)}")
    config = model.config
    shape = decoder_shape(config)
    g = _Graph(weights == "int8", accuracy_level)
    model = model.eval()
    with torch.no_grad():
        if config.model_type == "gpt2":
            _gpt2(g, model, shape)
        elif hasattr(model, "model") and hasattr(model.model, "rotary_emb"):
            _llama(g, model, shape)
        else:
            raise ValueError(f"no ONNX decoder for {config.model_type!r} models (llama-family and GPT-2 are "
                             f"built); serve it with --runtime torch")
    cache = ["batch", shape.kv_heads, "past", shape.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
              helper.make_tensor_value_info("logits_positions", TensorProto.INT64, ["batch", "k"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "k", shape.vocab])]
    for i in range(shape.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, cache))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["batch", shape.kv_heads, "total", shape.head_dim]))
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                              producer_name="modelyard")
    proto.ir_version = 8
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)
    return shape



DECODER_FILE = GENERATOR.onnx_file  # decoder.onnx, named once in the task spec


@dataclass
class DecoderParity:
    max_abs_diff: float  # of the logits, ONNX Runtime against torch
    top1_agreement: float  # share of positions where both predict the same next token


def export_decoder(ckpt: Path, weights: str = "int8") -> DecoderParity:
    """Write CKPT/decoder.onnx (+ .data) for a generator checkpoint, check ONNX Runtime against torch on a batch of
    two prompts of different lengths (right-padded, as the runtime batches them), record both files and the
    parity in the manifest."""
    import onnxruntime as ort

    from training.checkpoint import read_manifest, record_files
    from training.models import load_model

    ckpt = Path(ckpt)
    manifest, model = load_model(ckpt)
    shape = build_decoder(model, ckpt / DECODER_FILE, weights)
    session = ort.InferenceSession(str(ckpt / DECODER_FILE), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, shape.vocab, (n,), generator=generator) for n in (13, 7)]
    ids = np.zeros((2, 13), dtype=np.int64)
    mask = np.zeros((2, 13), dtype=np.int64)
    for i, prompt in enumerate(prompts):
        ids[i, :len(prompt)], mask[i, :len(prompt)] = prompt.numpy(), 1
    empty = np.zeros((2, shape.kv_heads, 0, shape.head_dim), dtype=np.float32)
    got = session.run(["logits"], {"input_ids": ids, "attention_mask": mask,
                                   "logits_positions": np.tile(np.arange(13), (2, 1)),
                                   **{f"past_key_values.{i}.{kind}": empty for i in range(shape.layers)
                                      for kind in ("key", "value")}})[0]
    diffs, agree, positions = [], 0, 0
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            expected = model(prompt.unsqueeze(0)).logits[0].numpy()
            ours = got[i, :len(prompt)]
            diffs.append(float(np.abs(ours - expected).max()))
            agree += int((ours.argmax(-1) == expected.argmax(-1)).sum())
            positions += len(prompt)
    parity = DecoderParity(max(diffs), agree / positions)
    manifest = read_manifest(ckpt)
    manifest.preprocessing["decoder_weights"] = weights
    manifest.metrics.update({"decoder_max_abs_diff": parity.max_abs_diff,
                             "decoder_top1_agreement": parity.top1_agreement})
    record_files(ckpt, manifest, [DECODER_FILE, DECODER_FILE + ".data"])
    return parity


def export_for_serving(ckpt: Path, weights: str | None = None) -> Exported:
    """The generator's `modelyard export`: decoder.onnx with `weights` (int8 by default), and its parity."""
    parity = export_decoder(Path(ckpt), weights or "int8")
    return Exported(DECODER_FILE, parity.max_abs_diff, f"{weights or 'int8'} weights; the same next token at "
                                                       f"{100 * parity.top1_agreement:.1f}% of positions")
