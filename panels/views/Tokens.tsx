/**
 * Tokens: the sampled token stream as text, each token's top-k experts per layer.
 * Token strings are data, never markup: they only ever become text nodes (JSX children).
 */
import { Component } from 'preact';
import type { Analysis, TokenRow } from '../engine/analyzer';
import type { Store } from '../store';
import { ExplainToken, ExplanationList } from './ExplainToken';

function tokenText(row: TokenRow, i: number): string {
  const t = row.texts?.[i];
  if (t !== undefined) return t;
  const id = row.tokenIds?.[i];
  return id !== undefined ? `#${id}` : `·${i}`;
}

/** One line of the stream: a prefill pass (the prompt) and the decode passes that follow it. */
interface StreamLine {
  key: number;
  items: Array<{ row: TokenRow; i: number } | { gap: number }>;
}

/**
 * Consecutive decode passes carry one token each: joined after their prompt they read as the
 * text being generated. Passes the probe did not sample show as a gap marker.
 */
function streamLines(rows: TokenRow[]): StreamLine[] {
  const lines: StreamLine[] = [];
  let current: StreamLine | null = null;
  let lastPass = -1;
  for (const row of rows) {
    if (row.phase === 'prefill' || !current) {
      current = { key: row.pass, items: [] };
      lines.push(current);
    } else if (row.pass > lastPass + 1) {
      current.items.push({ gap: row.pass - lastPass - 1 });
    }
    for (let i = 0; i < row.n; i++) current.items.push({ row, i });
    lastPass = row.pass;
  }
  return lines;
}

/**
 * What a line shows, as one string: the passes and tokens it holds (a decode line grows), whether
 * their texts have come, the layer that colours it, the selected token in it, the model. The
 * stream has ~400 tokens in a dozen lines and every analysis (5 a second) brings it anew from
 * the worker; a line whose signature did not change is not rendered again (diffing its spans,
 * their titles and styles, was most of this view's frame work).
 */
function lineSignature(line: StreamLine, colourLayer: number, sel: { pass: number; index: number } | null, model: number): string {
  let passes = '';
  let lastRow: TokenRow | null = null;
  for (const item of line.items) {
    if ('gap' in item) passes += `g${item.gap},`;
    else if (item.row !== lastRow) {
      lastRow = item.row;
      passes += `${item.row.pass}:${item.row.n}${item.row.texts ? 't' : ''},`;
    }
  }
  const selected = sel && line.items.some((item) => !('gap' in item) && item.row.pass === sel.pass) ? `${sel.pass}:${sel.index}` : '';
  return `${model}|${colourLayer}|${selected}|${passes}`;
}

interface TokenLineProps {
  line: StreamLine;
  store: Store;
  colourLayer: number;
  labelOf: (layer: number) => string;
  /** lineSignature(): the line is rendered again only when it changes. */
  signature: string;
}

class TokenLine extends Component<TokenLineProps> {
  shouldComponentUpdate(next: TokenLineProps) {
    return next.signature !== this.props.signature;
  }

  render({ line, store, colourLayer, labelOf }: TokenLineProps) {
    const sel = store.state.token;
    return (
      <div class="token-pass" data-testid="token-pass" data-pass={line.key}>
        <div class="token-stream">
          {line.items.map((item, n) => {
            if ('gap' in item) return <span key={`g${n}`} class="tok-gap" title={`${item.gap} passes not sampled`}>…</span>;
            const { row: r, i } = item;
            const layer = r.layers.find((l) => l.layer === colourLayer) ?? r.layers[0];
            const first = layer ? layer.ids[i * layer.k] : undefined;
            const top = first !== undefined && first >= 0 ? first : undefined;
            return (
              <span key={`${r.pass}:${i}`} class={`tok ${sel && sel.pass === r.pass && sel.index === i ? 'selected' : ''}`} data-testid="token"
                data-pass={r.pass} data-index={i}
                title={`pass ${r.pass} (${r.phase}), token ${i}${r.tokenIds ? ` (id ${r.tokenIds[i]})` : ''}; ${layer ? labelOf(layer.layer) : '?'}: top expert ${top ?? 'none'}`}
                style={top !== undefined ? { borderBottomColor: `hsl(${(top * 47) % 360} 70% 50%)` } : undefined}
                onClick={() => store.selectToken({ pass: r.pass, index: i, row: r })}>
                {tokenText(r, i)}
              </span>
            );
          })}
        </div>
      </div>
    );
  }
}

export function Tokens({ store, a }: { store: Store; a: Analysis }) {
  // The list of explanations stays at one place in the tree whether or not token records have
  // arrived: remounted, it would forget which explanation the user opened (as when a recording's
  // token stream arrives just after the click).
  return (
    <div class="tokens">
      {a.tokens.length
        ? <TokenStream store={store} a={a} />
        : <p class="empty" data-testid="tokens-empty">No token records yet: the probe samples a few passes per second.</p>}
      <ExplanationList store={store} a={a} />
    </div>
  );
}

function TokenStream({ store, a }: { store: Store; a: Analysis }) {
  const rows = a.tokens;
  const sel = store.state.token;
  const row = (sel && (rows.find((r) => r.pass === sel.pass) ?? sel.row)) ?? null;
  const colourLayer = store.state.selectedLayer;
  const labelOf = (layer: number) => a.rows[layer]?.label ?? `layer ${layer}`;
  const hidden = a.rows.filter((r) => r.info.token_source === 'none');
  const recomputed = a.rows.filter((r) => r.info.token_source === 'recomputed');
  return (
    <>
      <p class="muted">
        Last {rows.length} sampled passes ({a.tokenPassesKept} kept); each prompt starts a line and decoded tokens follow it.
        Underline: top expert in {labelOf(colourLayer)} (choose the layer in Load). Click a token to see its path through the layers.
      </p>
      {hidden.length > 0 && <p class="muted" data-testid="tokens-hidden">Per-token choices are not visible for {hidden.map((r) => r.label).join(', ')} (counts only).</p>}
      {recomputed.length > 0 && <p class="muted" data-testid="tokens-recomputed">Per-token choices recomputed from the router’s logits (top-k) for {recomputed.map((r) => r.label).join(', ')}.</p>}
      {streamLines(rows).map((line) => (
        <TokenLine key={line.key} line={line} store={store} colourLayer={colourLayer} labelOf={labelOf}
          signature={lineSignature(line, colourLayer, sel, a.model)} />
      ))}
      {row && sel && (
        <div class="token-path" data-testid="token-path">
          <h3>Path of token {sel.index} “{tokenText(row, sel.index)}” (pass {row.pass})</h3>
          <table class="grid">
            <thead><tr><th>Layer</th><th>Experts (weight)</th></tr></thead>
            <tbody>
              {row.layers.map((l) => (
                <tr key={l.layer} data-layer={l.layer}>
                  <td>{labelOf(l.layer)}</td>
                  <td data-testid="token-experts">
                    {Array.from({ length: l.k }, (_, j) => {
                      const id = l.ids[sel.index * l.k + j]!;
                      const w = l.weights?.[sel.index * l.k + j];
                      if (id < 0) return null; // an empty slot: this token took fewer experts
                      return <span class="chip" key={j}>{id}{w !== undefined ? ` (${w.toFixed(3)})` : ''}</span>;
                    })}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <ExplainToken key={`${row.pass}:${sel.index}`} store={store} a={a} row={row} index={sel.index} />
        </div>
      )}
    </>
  );
}
