// Writes test/vectors/probe-frames.json: probe -> host frames (src/protocol/probe.ts)
// with the exact MessagePack bytes msgpackr produces for them, so the Python probe's
// encoder is held to the JavaScript side's bytes instead of a second hand-written copy
// of the protocol.
//
//   node scripts/gen-probe-vectors.mjs          rewrite the file
//   node scripts/gen-probe-vectors.mjs --check  exit 1 if the file is not what this script writes
//
// Each vector is {name, frame, msgpack_hex}; binary fields of `frame` are written as
// {"$bin": "<hex>"}. Vectors with "invalid": true are well-formed MessagePack that
// parseProbeFrame must reject with a ProtocolError whose message contains `expect_error`.
//
// Encoding: useRecords false (plain maps) and variableMapSize true (fixmap for small maps;
// without it msgpackr writes every map as map16). That is the smallest-representation
// encoding of the MessagePack spec, which is what the probe's encoder and the reference
// Python msgpack package produce. Numbers: integers below 2^32 and non-integral floats only
// (msgpackr writes larger integers as float64, the probe as uint64; the protocol never
// sends such integers), and no integral floats (JSON could not tell them from integers).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Packr } from 'msgpackr';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'test/vectors/probe-frames.json');
const packr = new Packr({ useRecords: false, variableMapSize: true });

/** int64 little-endian payload of a counts frame, as {"$bin": hex}. */
function int64s(values) {
  const buf = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => buf.writeBigInt64LE(BigInt(v), i * 8));
  return { $bin: buf.toString('hex') };
}

function float64s(values) {
  const buf = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => buf.writeDoubleLE(v, i * 8));
  return { $bin: buf.toString('hex') };
}

function float32s(values) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return { $bin: buf.toString('hex') };
}

function int32s(values) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeInt32LE(v, i * 4));
  return { $bin: buf.toString('hex') };
}

function bytes(n, seed = 1) {
  const buf = Buffer.alloc(n);
  for (let i = 0; i < n; i++) buf[i] = (i * 37 + seed) & 0xff;
  return { $bin: buf.toString('hex') };
}

/** One layer as the probe describes it (src/protocol/probe.ts LayerInfo). */
function layer(index, experts, topK, more = {}) {
  return {
    index, name: `model.layers.${index}.mlp`, arch: 'moe-block', experts, top_k: topK, model_index: index, stack: 'model.layers',
    kind: 'mlp', design: 'top-k', source: 'dispatched', token_source: 'dispatched', identity_experts: 0, shared_experts: 0, gating: '',
    ...more,
  };
}

function layers(n, experts, topK, more = {}) {
  return Array.from({ length: n }, (_, i) => layer(i, experts, topK, more));
}

/** The JSON value with {"$bin": hex} turned into Buffers. */
function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value && typeof value === 'object') {
    if (typeof value.$bin === 'string' && Object.keys(value).length === 1) return Buffer.from(value.$bin, 'hex');
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
}

const longTrace = [
  'Traceback (most recent call last):',
  '  File "/opt/job/moe_probe/recorder.py", line 97, in _on_routing',
  '    counts.scatter_add_(0, flat, ones[: flat.numel()])',
  'RuntimeError: index 9 is out of bounds for dimension 0 with size 8',
  '  (the probe disabled itself; the job goes on without it)',
].join('\n');

const valid = [
  {
    name: 'hello',
    frame: {
      t: 'hello', v: 2, pid: 4242, mode: 'library', framework: 'torch', framework_version: '2.13.0+cpu',
      python: '3.12.3', argv: ['train.py', '--layers', '4'],
      models: [{ id: 0, class: 'MixtralForCausalLM', model_type: 'mixtral', device: 'cpu', dtype: 'float32', layers: layers(4, 8, 2) }],
      // An open map of numbers. The probe sends some of these as floats with integral values
      // (10.0), which JSON cannot write: float-valued settings here are non-integral.
      settings: { flush_interval_s: 0.05, token_sample: 128, token_passes_per_s: 10.5, token_bytes_per_s: 2000000, health_passes_per_s: 50.5 },
      warnings: [],
    },
  },
  {
    name: 'hello_injected_two_models',
    frame: {
      t: 'hello', v: 2, pid: 3141592, mode: 'injected', framework: 'torch', framework_version: '2.5.1+cu124',
      python: '3.11.9',
      // 16 items: an array16 header; non-ASCII and long strings: str8 with multi-byte UTF-8.
      argv: ['/home/ana/données/train_moe.py', '--config', 'configs/mixtral-8x7b-instruct-finetune.yaml', ...Array.from({ length: 13 }, (_, i) => `--opt${i}=ü${i}`)],
      models: [
        { id: 0, class: 'Qwen3MoeForCausalLM', model_type: 'qwen3_moe', device: 'cuda:0', dtype: 'bfloat16', layers: layers(18, 128, 8) },
        {
          // A hand-written model: no layer number in its paths (model_index -1), counts from each expert's rows.
          id: 1, class: 'MyTinyMoE', model_type: '', device: 'cuda:1', dtype: 'float16',
          layers: [0, 1].map((i) => layer(i, 4, 1, { name: `moe_${i}`, model_index: -1, stack: '', source: 'expert-inputs', token_source: 'none' })),
        },
      ],
      warnings: [{ code: 'cuda_graphs', message: 'This process holds 2 captured CUDA graphs: passes replayed from a graph run no Python hooks, so the probe cannot see them.' }],
    },
  },
  {
    name: 'hello_mixed_layers',
    frame: {
      // JetMoE-like: attention experts beside MLP experts of another width; LongCat-like zero-compute
      // experts; an encoder-decoder stack; hash, soft, expert-choice and variable-k designs; a sigmoid gate.
      t: 'hello', v: 2, pid: 31337, mode: 'library', framework: 'torch', framework_version: '2.13.0+cpu',
      python: '3.11.7', argv: ['mixed.py'],
      models: [{
        id: 0, class: 'MixedMoE', model_type: 'mixed', device: 'cpu', dtype: 'float32',
        layers: [
          layer(0, 8, 2, { name: 'model.layers.0.self_attention.experts', kind: 'attention' }),
          layer(1, 4, 2, { name: 'model.layers.0.mlp', model_index: 0 }),
          layer(2, 10, 2, { identity_experts: 2, gating: 'sigmoid', shared_experts: 1 }),
          layer(3, 16, 2, { name: 'encoder.block.1.layer.1.mlp', model_index: 1, stack: 'encoder.block', design: 'hash' }),
          layer(4, 6, 1, { name: 'decoder.block.1.layer.2.mlp', model_index: 1, stack: 'decoder.block', design: 'soft' }),
          layer(5, 8, 8, { design: 'expert-choice', token_source: 'none' }),
          layer(6, 8, 8, { design: 'variable-k', source: 'router', token_source: 'router' }),
          layer(7, 8, 2, { source: 'recomputed', token_source: 'recomputed', arch: 'router' }),
        ],
      }],
      warnings: [],
    },
  },
  {
    name: 'hello_expert_parallel_rank',
    frame: {
      // Rank 1 of 4 of a torchrun job; it holds experts 2 and 3 of each layer's 8 (expert parallel),
      // so its counts are at global ids; the router of the last layer is read on every rank alike.
      t: 'hello', v: 2, pid: 90210, mode: 'injected', framework: 'torch', framework_version: '2.13.0+cpu',
      python: '3.11.7', argv: ['ep_moe_job.py', '--mode', 'ep'],
      models: [{
        id: 0, class: 'Model', model_type: '', device: 'cpu', dtype: 'float32',
        layers: [
          layer(0, 8, 2, { name: 'layers.0.mlp', stack: 'layers', source: 'expert-inputs', token_source: 'recomputed', held: [2, 3] }),
          layer(1, 8, 2, { name: 'layers.1.mlp', stack: 'layers', source: 'expert-inputs', token_source: 'recomputed', held: [2, 3] }),
          layer(2, 4, 1, { name: 'layers.2.mlp', stack: 'layers' }),
        ],
      }],
      settings: { flush_interval_s: 0.03, token_sample: 128, token_passes_per_s: 50.5, token_bytes_per_s: 2000000, health_passes_per_s: 50.5 },
      warnings: [],
      dist: {
        rank: 1, world_size: 4, local_rank: 1, node: 'gpu-node-7', run_id: 'a3f9c1d2-moe', master: '10.1.0.7:29500',
        backend: 'gloo', source: 'torch.distributed',
      },
    },
  },
  {
    name: 'hello_error',
    frame: {
      t: 'hello', v: 2, pid: 77, mode: 'injected', framework: 'torch', framework_version: '2.13.0+cpu',
      python: '3.10.14', argv: ['-c'], models: [],
      settings: { flush_interval_s: 0.05, token_sample: 128, token_passes_per_s: 10.5, token_bytes_per_s: 2000000, health_passes_per_s: 50.5 },
      warnings: [],
      error: { code: 'no_moe', message: 'No MoE layer the probe understands was found among the 312 live torch modules.' },
    },
  },
  {
    name: 'counts',
    frame: {
      t: 'counts', model: 0, seq: 1, ts: 1700000000.25, passes: 3, layers: 2, widths: [4, 4],
      counts: int64s([12, 0, 7, 5, 3, 9, 0, 12]), tokens: int64s([12, 12]), dropped: 0,
    },
  },
  {
    name: 'counts_widths_differ',
    frame: {
      // Layers of different widths (8, then 4, then 10): counts hold 22 values, each layer after the last.
      t: 'counts', model: 0, seq: 2, ts: 1700000000.5, passes: 1, layers: 3, widths: [8, 4, 10],
      counts: int64s([1, 2, 0, 0, 3, 2, 0, 0, 4, 0, 4, 0, 2, 0, 0, 1, 1, 0, 0, 0, 1, 3]), tokens: int64s([4, 4, 4]), dropped: 0,
    },
  },
  {
    name: 'counts_full',
    frame: {
      // With every optional field the torch probe sends: router health [layers x HEALTH_COLUMNS]
      // and max logit as float64, per-layer time, probe time, phase counts, last input shape.
      t: 'counts', model: 0, seq: 7, ts: 1700000123.125, passes: 3, layers: 2, widths: [4, 4],
      counts: int64s([12, 0, 7, 5, 3, 9, 0, 12]), tokens: int64s([12, 12]), dropped: 0,
      health: float64s([48, 61.25, 130.5, 0, 0, 0, 48, 58.75, 122.0625, 1, 2, 3]),
      max_logit: float64s([3.5, -0.25]),
      time_s: [0.0125, 0.0375], probe_s: 0.00025, prefill: 1, decode: 2, shape: [2, 8], dropped_tokens: 0,
      // How the passes ran: 3 read from torch.compile'd code after one recompilation of 4.5 s;
      // CUDA graphs: 2 passes captured while attached, 40 counted from their replays, 7 replays unseen.
      visibility: {
        compiled_passes: 3, tap_compiles: 1, tap_compile_s: 4.5, other_compiles: 0, graph_breaks: 0,
        captured_passes: 2, replayed_passes: 40, unseen_replays: 7,
      },
    },
  },
  {
    name: 'counts_expert_parallel',
    frame: {
      // A rank of an expert-parallel job: counts at global ids of the experts it holds (2 and 3 of
      // layer 0), and the time inside its own experts beside the time in its blocks.
      t: 'counts', model: 0, seq: 4, ts: 1700000200.5, passes: 2, layers: 2, widths: [4, 4],
      counts: int64s([0, 0, 9, 7, 3, 5, 4, 4]), tokens: int64s([8, 8]), dropped: 0,
      health: float64s([16, 20.5, 40.25, 0, 0, 0, 16, 19.5, 38.75, 0, 0, 0]),
      max_logit: float64s([2.5, 1.75]),
      time_s: [0.0625, 0.03125], probe_s: 0.00025, prefill: 2, decode: 0, shape: [2, 4], dropped_tokens: 0,
      expert_s: [0.015625, 0],
      // every pass eager, in view of the probe
      visibility: {
        compiled_passes: 0, tap_compiles: 0, tap_compile_s: 0, other_compiles: 0, graph_breaks: 0,
        captured_passes: 0, replayed_passes: 0, unseen_replays: 0,
      },
    },
  },
  {
    name: 'counts_large',
    frame: {
      // 4 x 16 int64 = 512 bytes (bin16); values past 2^32; seq, passes as uint16/uint32.
      t: 'counts', model: 1, seq: 300, ts: 1754321098.765432, passes: 70000, layers: 4, widths: [16, 16, 16, 16],
      counts: int64s(Array.from({ length: 64 }, (_, i) => (i % 5 === 0 ? 2 ** 33 + i : i * 1000))),
      tokens: int64s([2 ** 33, 2 ** 33, 2 ** 33 + 1, 70000]), dropped: 200,
    },
  },
  {
    name: 'tokens',
    frame: {
      // int32 ids [n x k] and float32 weights [n x k] per layer; int32 input token ids [n].
      t: 'tokens', model: 0, pass: 1, phase: 'prefill', n: 3, k: 2,
      token_ids: int32s([1, 4711, 63]), texts: ['<s>', '▁données', 'ü'],
      layers: [
        { layer: 0, n: 3, k: 2, ids: int32s([0, 3, 2, 1, 3, 0]), weights: float32s([0.75, 0.25, 0.5, 0.5, 0.625, 0.375]) },
        { layer: 1, n: 3, k: 2, ids: int32s([1, 2, 2, 3, 0, 1]), weights: float32s([0.5, 0.5, 0.875, 0.125, 0.5, 0.5]) },
      ],
    },
  },
  {
    name: 'tokens_decode_bare',
    frame: {
      // No input ids seen, no tokenizer, a router that does not expose its weights.
      t: 'tokens', model: 1, pass: 300, phase: 'decode', n: 1, k: 2, token_ids: null, texts: null,
      layers: [{ layer: 0, n: 1, k: 2, ids: int32s([3, 1]), weights: null }],
    },
  },
  {
    name: 'error',
    frame: { t: 'error', code: 'probe_failed', message: 'RuntimeError: index 9 is out of bounds for dimension 0 with size 8', detail: longTrace },
  },
  { name: 'error_no_detail', frame: { t: 'error', code: 'probe_failed', message: 'CUDA error: device-side assert triggered' } },
  { name: 'bye', frame: { t: 'bye', reason: 'detached' } },
  {
    name: 'layers',
    frame: {
      // What the first calls showed: this layer's router returned only logits, so its ids are recomputed.
      t: 'layers', model: 0, layers: [layer(0, 8, 2), layer(1, 8, 2, { source: 'recomputed', token_source: 'recomputed' })],
    },
  },
  {
    name: 'explanation',
    frame: {
      // Token 14 of pass 2 (row 1, position 2 of a batch of 12-token rows): 3 positions here for brevity.
      t: 'explanation', id: 11, model: 0, pass: 2, index: 14, layer: 1, expert: 3, row: 1, position: 2,
      token_ids: int32s([17, 4711, 63]), texts: ['def', '▁données', '('], steps: 32, baseline: 'zero', baseline_token: -1,
      prob_kind: 'softmax', logit: 1.625, prob: 0.4375, baseline_logit: -0.125, baseline_prob: 0.1875,
      gxi_logit: float64s([0.5, -0.25, 1.125]), gxi_prob: float64s([0.0625, -0.03125, 0.15625]),
      ig_logit: float64s([0.625, -0.375, 1.5]), ig_prob: float64s([0.0625, -0.0625, 0.25]),
      recomputed: int32s([3, 0]), seconds: 0.375, peak_bytes: 1048576, batch: 32, device: 'cpu', notes: [],
    },
  },
  {
    name: 'explanation_generated_token',
    frame: {
      // A generated token (decode pass), no tokenizer, a token baseline, a router that hands out probabilities.
      t: 'explanation', id: 12, model: 1, pass: 300, index: 0, layer: 0, expert: 0, row: 0, position: 1,
      token_ids: int32s([5, 9]), texts: null, steps: 64, baseline: 'token', baseline_token: 2,
      prob_kind: 'row', logit: 0.75, prob: 0.75, baseline_logit: 0.5, baseline_prob: 0.5,
      gxi_logit: float64s([0.125, 0.25]), gxi_prob: float64s([0.125, 0.25]),
      ig_logit: float64s([0.0625, 0.1875]), ig_prob: float64s([0.0625, 0.1875]),
      recomputed: int32s([0, 2]), seconds: 2.5, peak_bytes: 3221225472, batch: 8, device: 'cuda:0',
      notes: ['a generated token: the sequence is the prompt and every token generated since, recomputed without the job\'s KV cache'],
    },
  },
  {
    name: 'expert_params',
    frame: {
      // Three experts; NaN marks what does not exist (a zeroed router row has no direction).
      t: 'expert-params', id: 20, model: 0, layer: 1, part: 1, parts: 4, experts: 3, compute_experts: 3,
      router_name: 'weight', router_norms: float64s([0.5, 0.25, 0]),
      router_cosine: float32s([1, 0.5, NaN, 0.5, 1, NaN, NaN, NaN, NaN]),
      router_bias_name: 'e_score_correction_bias', router_bias: float64s([0.125, -0.125, 0.5]),
      layout: 'stacked', groups: ['gate_up_proj', 'down_proj'], params: 49152,
      expert_norms: float64s([1.5, 1.25, 1.75]), group_norms: float64s([1.25, 1.125, 1.5, 0.75, 0.5, 0.875]),
      weight_cosine: float32s([1, 0.015625, 1, 0.015625, 1, 0.015625, 1, 0.015625, 1]),
      seconds: 0.0625, peak_bytes: 67108864, notes: [],
    },
  },
  {
    name: 'expert_params_unreadable',
    frame: {
      // No router weight and experts whose weights were not found (quantized); two zero-compute experts.
      t: 'expert-params', id: 21, model: 0, layer: 0, part: 0, parts: 1, experts: 4, compute_experts: 2,
      router_name: '', router_norms: null, router_cosine: null, router_bias_name: '', router_bias: null,
      layout: '', groups: [], params: 0, expert_norms: null, group_norms: null, weight_cosine: null,
      seconds: 0.001, peak_bytes: 256,
      notes: ['no router weight with one row per expert was found', 'the last 2 experts compute nothing (identity): no weights of their own'],
    },
  },
  {
    name: 'refused',
    frame: { t: 'refused', id: 11, request: 'explain', code: 'no_context', message: 'The probe cannot recompute pass 99: pass 99 was not sampled by this probe.' },
  },
];

const byName = (name) => valid.find((v) => v.name === name).frame;
const hello = byName('hello');
const counts = byName('counts');
const countsFull = byName('counts_full');
const tokens = byName('tokens');
const explanation = byName('explanation');
const expertParams = byName('expert_params');
const without = (obj, key) => Object.fromEntries(Object.entries(obj).filter(([k]) => k !== key));

const invalid = [
  { name: 'hello_wrong_version', frame: { ...hello, v: 1 }, expect_error: 'probe speaks protocol version 1, this host speaks 2' },
  { name: 'hello_missing_pid', frame: without(hello, 'pid'), expect_error: 'field "pid" should be a whole number' },
  { name: 'hello_bad_mode', frame: { ...hello, mode: 'attached' }, expect_error: 'field "mode" should be "injected" or "library"' },
  { name: 'hello_argv_not_strings', frame: { ...hello, argv: ['train.py', 3] }, expect_error: 'field "argv" should be a list of strings' },
  {
    name: 'hello_top_k_over_experts',
    frame: { ...hello, models: [{ ...hello.models[0], layers: [layer(0, 4, 5)] }] },
    expect_error: 'layer has 4 experts and top_k 5',
  },
  {
    name: 'hello_layer_unknown_design',
    frame: { ...hello, models: [{ ...hello.models[0], layers: [layer(0, 4, 2, { design: 'top-p' })] }] },
    expect_error: 'field "design" should be one of top-k, variable-k, expert-choice, soft, hash, fixed',
  },
  {
    name: 'hello_layer_all_identity',
    frame: { ...hello, models: [{ ...hello.models[0], layers: [layer(0, 4, 2, { identity_experts: 4 })] }] },
    expect_error: 'layer has 4 experts, 4 of them zero-compute',
  },
  {
    name: 'hello_layer_missing_source',
    frame: { ...hello, models: [{ ...hello.models[0], layers: [without(layer(0, 4, 2), 'source')] }] },
    expect_error: 'field "source" should be one of dispatched, expert-inputs, router, recomputed',
  },
  {
    name: 'hello_held_out_of_range',
    frame: { ...hello, models: [{ ...hello.models[0], layers: [layer(0, 8, 2, { held: [6, 8] })] }] },
    expect_error: 'field "held" should name distinct experts below 8, got [6,8]',
  },
  {
    name: 'hello_held_twice',
    frame: { ...hello, models: [{ ...hello.models[0], layers: [layer(0, 8, 2, { held: [3, 3] })] }] },
    expect_error: 'field "held" should name distinct experts below 8, got [3,3]',
  },
  {
    name: 'hello_rank_not_below_world',
    frame: { ...byName('hello_expert_parallel_rank'), dist: { ...byName('hello_expert_parallel_rank').dist, rank: 4 } },
    expect_error: 'rank 4 is not below the world size 4',
  },
  {
    name: 'layers_out_of_order',
    frame: { t: 'layers', model: 0, layers: [layer(1, 8, 2)] },
    expect_error: 'layer 0 says it is layer 1',
  },
  { name: 'counts_wrong_length', frame: { ...counts, counts: bytes(60) }, expect_error: 'counts holds 60 bytes, expected 8 int64 values (the sum of the widths)' },
  { name: 'counts_widths_per_layer', frame: { ...counts, widths: [4] }, expect_error: 'field "widths" has 1 values for 2 layers' },
  { name: 'counts_width_zero', frame: { ...counts, widths: [8, 0] }, expect_error: 'field "widths": every layer has at least one expert' },
  { name: 'counts_missing_tokens', frame: without(counts, 'tokens'), expect_error: 'field "tokens" should be binary data' },
  { name: 'counts_tokens_wrong_length', frame: { ...counts, tokens: bytes(8) }, expect_error: 'field "tokens" holds 8 bytes, expected 16' },
  { name: 'counts_missing_counts', frame: without(counts, 'counts'), expect_error: 'field "counts" should be binary data' },
  { name: 'counts_negative_seq', frame: { ...counts, seq: -1 }, expect_error: 'field "seq" should be a whole number' },
  { name: 'counts_ts_string', frame: { ...counts, ts: 'now' }, expect_error: 'field "ts" should be a number' },
  { name: 'counts_health_wrong_length', frame: { ...countsFull, health: bytes(88) }, expect_error: 'field "health" holds 88 bytes, expected 96' },
  { name: 'counts_time_s_per_layer', frame: { ...countsFull, time_s: [0.5] }, expect_error: 'field "time_s" has 1 values for 2 layers' },
  { name: 'counts_visibility_not_a_map', frame: { ...countsFull, visibility: [1, 2] }, expect_error: 'field "visibility" should be a map' },
  { name: 'counts_visibility_missing_field', frame: { ...countsFull, visibility: without(countsFull.visibility, 'unseen_replays') }, expect_error: 'field "unseen_replays" should be a whole number' },
  { name: 'counts_expert_s_per_layer', frame: { ...countsFull, expert_s: [0.5, 0.25, 0.125] }, expect_error: 'field "expert_s" has 3 values for 2 layers' },
  { name: 'hello_settings_not_numbers', frame: { ...hello, settings: { token_sample: 'all' } }, expect_error: 'field "settings" should map names to numbers' },
  { name: 'tokens_bad_phase', frame: { ...tokens, phase: 'middle' }, expect_error: 'field "phase" should be "prefill" or "decode"' },
  {
    name: 'tokens_ids_wrong_length',
    frame: { ...tokens, layers: [{ ...tokens.layers[0], ids: int32s([0, 3, 2, 1, 3]) }] },
    expect_error: 'field "ids" holds 20 bytes, expected 24',
  },
  { name: 'explanation_short_gxi', frame: { ...explanation, gxi_logit: float64s([0.5, -0.25]) }, expect_error: 'field "gxi_logit" holds 16 bytes, expected 24' },
  { name: 'explanation_position_outside', frame: { ...explanation, position: 3 }, expect_error: 'position 3 is outside the 3-token sequence' },
  { name: 'explanation_logit_missing', frame: without(explanation, 'logit'), expect_error: 'field "logit" should be a number' },
  { name: 'expert_params_matrix_wrong_size', frame: { ...expertParams, weight_cosine: float32s([1, 0, 0, 1]) }, expect_error: 'field "weight_cosine" holds 16 bytes, expected 36' },
  { name: 'refused_unknown_request', frame: { t: 'refused', id: 1, request: 'train', code: 'bad_request', message: 'no' }, expect_error: 'field "request" should be "explain", "expert-params" or "unknown"' },
  { name: 'unknown_t', frame: { t: 'hullo', reason: 'x' }, expect_error: 'unknown frame type "hullo"' },
  { name: 'missing_t', frame: { reason: 'detached' }, expect_error: 'unknown frame type undefined' },
  { name: 'not_a_map', frame: ['bye', 'detached'], expect_error: 'frame should be a MessagePack map' },
  { name: 'bye_reason_number', frame: { t: 'bye', reason: 7 }, expect_error: 'field "reason" should be a string' },
  { name: 'error_missing_message', frame: { t: 'error', code: 'probe_failed' }, expect_error: 'field "message" should be a string' },
];

const vectors = [
  ...valid.map((v) => ({ name: v.name, frame: v.frame, msgpack_hex: packr.pack(fromJson(v.frame)).toString('hex') })),
  ...invalid.map((v) => ({
    name: v.name, invalid: true, expect_error: v.expect_error, frame: v.frame, msgpack_hex: packr.pack(fromJson(v.frame)).toString('hex'),
  })),
];

const text = `${JSON.stringify(vectors, null, 2)}\n`;
if (process.argv.includes('--check')) {
  const current = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
  if (current !== text) {
    console.error(`${path.relative(root, out)} is out of date: run node scripts/gen-probe-vectors.mjs`);
    process.exit(1);
  }
} else {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, text);
  console.log(`wrote ${vectors.length} vectors to ${path.relative(root, out)}`);
}
