/**
 * Tokens: the sampled token stream as text, each token's top-k experts per layer.
 * Token strings are data, never markup: they only ever become text nodes (JSX children).
 */
import type { Analysis, TokenRow } from '../engine/analyzer';
import type { Store } from '../store';

function tokenText(row: TokenRow, i: number): string {
  const t = row.texts?.[i];
  if (t !== undefined) return t;
  const id = row.tokenIds?.[i];
  return id !== undefined ? `#${id}` : `·${i}`;
}

export function Tokens({ store, a }: { store: Store; a: Analysis }) {
  const rows = a.tokens;
  const sel = store.state.token;
  if (!rows.length) return <p class="empty" data-testid="tokens-empty">No token records yet: the probe samples a few passes per second.</p>;
  const row = (sel && rows.find((r) => r.pass === sel.pass)) ?? null;
  return (
    <div class="tokens">
      <p class="muted">Last {rows.length} sampled passes ({a.tokenPassesKept} kept). Click a token to see its path through the layers.</p>
      {rows.map((r) => (
        <div class="token-pass" key={r.pass} data-testid="token-pass" data-pass={r.pass}>
          <div class="muted">pass {r.pass} · {r.phase} · {r.n} tokens</div>
          <div class="token-stream">
            {Array.from({ length: r.n }, (_, i) => {
              const first = r.layers[0];
              const top = first ? first.ids[i * first.k] : undefined;
              return (
                <span key={i} class={`tok ${sel && sel.pass === r.pass && sel.index === i ? 'selected' : ''}`} data-testid="token" data-index={i}
                  title={`token ${i}${r.tokenIds ? ` (id ${r.tokenIds[i]})` : ''}; layer ${first?.layer ?? '?'} top expert ${top ?? '?'}`}
                  style={top !== undefined ? { borderBottomColor: `hsl(${(top * 47) % 360} 70% 50%)` } : undefined}
                  onClick={() => store.selectToken({ pass: r.pass, index: i })}>
                  {tokenText(r, i)}
                </span>
              );
            })}
          </div>
        </div>
      ))}
      {row && sel && (
        <div class="token-path" data-testid="token-path">
          <h3>Path of token {sel.index} “{tokenText(row, sel.index)}” (pass {row.pass})</h3>
          <table class="grid">
            <thead><tr><th>Layer</th><th>Experts (weight)</th></tr></thead>
            <tbody>
              {row.layers.map((l) => (
                <tr key={l.layer} data-layer={l.layer}>
                  <td>{l.layer}</td>
                  <td data-testid="token-experts">
                    {Array.from({ length: l.k }, (_, j) => {
                      const id = l.ids[sel.index * l.k + j];
                      const w = l.weights?.[sel.index * l.k + j];
                      return <span class="chip" key={j}>{id}{w !== undefined ? ` (${w.toFixed(3)})` : ''}</span>;
                    })}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
