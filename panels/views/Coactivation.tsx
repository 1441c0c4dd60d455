/** Co-activation: P(j | i) for the chosen layer, from the sampled tokens' top-k choices in the window. */
import type { Analysis } from '../engine/analyzer';
import { fmt } from './format';
import { MatrixCanvas } from './MatrixCanvas';

export function Coactivation({ a, layer }: { a: Analysis; layer: number }) {
  const co = a.coactivation;
  const row = a.rows[layer];
  const label = row?.label ?? `layer ${layer}`;
  if (!co || co.layer !== layer) {
    const hidden = row?.info.token_source === 'none';
    return (
      <p class="empty" data-testid="coactivation-empty">
        {hidden
          ? `${label}: per-token choices are not visible for this layer (${row!.info.design === 'expert-choice' ? 'experts choose their tokens' : 'its counts come from the rows each expert received'}), so there is nothing to co-activate.`
          : `No sampled tokens for ${label} in this window yet.`}
      </p>
    );
  }
  const E = co.experts;
  const m = co.matrix;
  return (
    <div class="coactivation" data-testid="coactivation-view" data-layer={layer} data-tokens={co.tokens}>
      <p class="muted">{label}: row i, column j = P(expert j chosen | expert i chosen), from {co.tokens} sampled tokens. Diagonal is 1 for used experts.
        {row?.info.token_source === 'recomputed' ? ' Per-token choices here are recomputed from the router’s logits.' : ''}</p>
      {a.vocabulary && a.vocabulary.layer === layer && (
        <p data-testid="vocabulary" data-share={a.vocabulary.share}>
          Vocabulary specialization: {fmt(100 * a.vocabulary.share, 1)}% of occurrences go (first choice) to each token id's most
          frequent expert, over {a.vocabulary.ids} token ids seen at least {a.vocabulary.minOccurrences} times
          ({a.vocabulary.tokens} tokens). Routing that ignored the token would give about {fmt(100 / E, 1)}%.
        </p>
      )}
      <MatrixCanvas rows={E} cols={E} data={m} height={Math.min(520, Math.max(160, E * 12))} intensity={(i, j) => (i === j ? 0 : m[i * E + j]!)}
        describe={(i, j) => `P(expert ${j} | expert ${i}) = ${fmt(m[i * E + j]!, 3)}`} rowLabel="expert i" colLabel="expert j" testid="coactivation" />
    </div>
  );
}
