import { describe, expect, it } from 'vitest';
import { computeExperts, layerLabel, layerPlace, routingDescription, shortLayerLabel, stackWord } from '../../src/analysis';
import { layerInfo } from './layer-fixture';

describe('layer names', () => {
  it('name a layer by module path and the model\'s own layer number, stacks apart', () => {
    expect(layerLabel(layerInfo(1, 8, 2, { name: 'model.layers.2.mlp', model_index: 2 }))).toBe('model.layers.2.mlp (layer 2)');
    const dec = layerInfo(3, 8, 1, { name: 'decoder.block.3.layer.2.mlp', model_index: 3, stack: 'decoder.block' });
    expect(layerLabel(dec)).toBe('decoder.block.3.layer.2.mlp (decoder layer 3)');
    expect(shortLayerLabel(dec)).toBe('dec L3');
    const enc = { ...dec, name: 'encoder.block.3.layer.1.mlp', stack: 'encoder.block' };
    expect(shortLayerLabel(enc)).toBe('enc L3');
    expect(layerPlace({ model_index: 5, stack: 'model.visual.blocks' })).toBe('vision layer 5');
    expect(stackWord('thinker.model.layers')).toBe('thinker');
    const moa = layerInfo(0, 8, 2, { name: 'model.layers.0.self_attention.experts', kind: 'attention' });
    expect(layerLabel(moa)).toBe('model.layers.0.self_attention.experts (layer 0, attention experts)');
    expect(shortLayerLabel(moa)).toBe('L0 attn');
    const bare = layerInfo(4, 4, 1, { name: 'moe', model_index: -1, stack: '' });
    expect(layerLabel(bare)).toBe('moe');
    expect(shortLayerLabel(bare)).toBe('#4');
  });

  it('say how a layer is read and what its counts show for designs that are not k per token', () => {
    const longcat = layerInfo(0, 10, 2, { identity_experts: 2 });
    expect(computeExperts(longcat)).toBe(8);
    expect(routingDescription(longcat)).toBe(
      '10 experts (2 of them zero-compute: the last 2); top-2 per token; counts: ids as the block handed them to its experts');
    expect(routingDescription(layerInfo(0, 8, 2, { source: 'recomputed', token_source: 'recomputed' })))
      .toMatch(/counts: recomputed by the probe as the top-k of the router's logits/);
    expect(routingDescription(layerInfo(0, 8, 8, { design: 'expert-choice', token_source: 'none' })))
      .toMatch(/per-token choices: not visible; experts choose their tokens, so every expert takes the same number by design/);
    expect(routingDescription(layerInfo(0, 8, 1, { design: 'soft' }))).toMatch(/counts show each token's largest-weight expert/);
    expect(routingDescription(layerInfo(0, 8, 2, { shared_experts: 1, gating: 'sigmoid' }))).toMatch(/plus 1 shared expert every token goes through \(not counted\); sigmoid gate/);
    expect(routingDescription(layerInfo(0, 8, 2, { source: 'expert-inputs', token_source: 'none' }))).toMatch(/rows each expert module received/);
  });
});
