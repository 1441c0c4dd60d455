/** Overview: every layer's health at a glance, and the findings in plain words. */
import { useMemo } from 'preact/hooks';
import { routingDescription, type Finding, type FindingKind } from '../../src/analysis';
import type { LayerInfo } from '../../src/protocol/probe';
import type { Analysis } from '../engine/analyzer';
import type { Store, ViewId } from '../store';
import { fmt, int, pct } from './format';
import { analysisSource, useSettled } from './useSettled';

const FINDING_VIEW: Record<FindingKind, { view: ViewId; label: string }> = {
  dead_expert: { view: 'heatmap', label: 'Show in Heatmap' },
  imbalance: { view: 'load', label: 'Show in Load' },
  collapse: { view: 'load', label: 'Show in Load' },
  abnormal_entropy: { view: 'timeline', label: 'Show in Timeline' },
  nan_logits: { view: 'timeline', label: 'Show in Timeline' },
  dropped_tokens: { view: 'profiler', label: 'Show in Profiler' },
};

const KIND_LABEL: Record<FindingKind, string> = {
  dead_expert: 'Dead experts',
  imbalance: 'Load imbalance',
  collapse: 'Router collapse',
  abnormal_entropy: 'Abnormal router entropy',
  nan_logits: 'NaN/Inf router logits',
  dropped_tokens: 'Dropped tokens',
};

function thresholdText(f: Finding, a: Analysis): string {
  const th = a.thresholds;
  switch (f.kind) {
    case 'dead_expert':
      return `0 tokens over a window of ${int(f.value)} tokens (judged from ${int(f.threshold)}: minTokens ${int(th.minTokens)}, ${int(th.minExpectedPerExpert)} expected per expert)`;
    case 'imbalance':
      return `MaxVio ${fmt(f.value)} > ${fmt(f.threshold)}`;
    case 'collapse':
      if (f.metric === 'load_entropy') return `load entropy ${fmt(f.value)} < ${fmt(f.threshold)}`;
      if (f.metric === 'expert_token_share') return `tokens choosing expert ${f.experts?.[0]}: ${pct(f.value)} ≥ ${pct(f.threshold, 0)}`;
      return `top-k share ${pct(f.value)} ≥ ${pct(f.threshold, 0)}`;
    case 'abnormal_entropy':
      return `router entropy ${fmt(f.value, 3)} vs limit ${fmt(f.threshold, 3)} (healthy ${fmt(th.routerEntropyLow)}–${fmt(th.routerEntropyHigh)})`;
    case 'nan_logits':
      return `${int(f.value)} non-finite logits > ${int(f.threshold)}`;
    case 'dropped_tokens':
      return `${pct(f.value)} dropped > ${pct(f.threshold)}`;
  }
}

/** How the layer's counts were read, in a table cell; what the panel could not see directly is marked. */
const SOURCE_CELL: Record<LayerInfo['source'], string> = {
  dispatched: 'as dispatched',
  'expert-inputs': 'expert inputs',
  router: 'router output',
  recomputed: 'recomputed ⚠',
};

/**
 * What each layer's numbers are: how its routing was read and, for designs that are not "k experts
 * per token", what the counts show instead. Layers described alike share one line.
 */
function RoutingNotes({ a }: { a: Analysis }) {
  const groups = new Map<string, string[]>();
  for (const r of a.rows) {
    const text = routingDescription(r.info);
    groups.set(text, [...(groups.get(text) ?? []), r.label]);
  }
  return (
    <section>
      <h3>How routing is read</h3>
      <ul class="routing-notes" data-testid="routing-notes">
        {[...groups].map(([text, labels]) => (
          <li key={text} data-testid="routing-note">
            <span class="note-layers">{labels.length > 3 ? `${labels[0]} … ${labels[labels.length - 1]} (${labels.length} layers)` : labels.join(', ')}</span>
            {': '}<span class="note-text">{text}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

export function Overview({ store, a: latest }: { store: Store; a: Analysis }) {
  const a = useSettled(store, latest, analysisSource(latest));
  // the same element while the shown analysis is held: Preact skips the whole view
  return useMemo(() => <OverviewBody store={store} a={a} />, [store, a]);
}

function OverviewBody({ store, a }: { store: Store; a: Analysis }) {
  const byLayer = new Map<number, Finding[]>();
  for (const f of a.findings) byLayer.set(f.layer, [...(byLayer.get(f.layer) ?? []), f]);
  const go = (f: Finding) => {
    store.selectLayer(f.layer);
    store.selectView(FINDING_VIEW[f.kind].view);
  };
  const judgeable = Math.max(...a.judgeable);
  return (
    <div class="overview">
      <section>
        <h3>Findings <span class="muted">over the last {int(a.window.tokens)} tokens ({a.window.passes} passes, {fmt(a.window.seconds, 1)} s)</span></h3>
        {a.window.tokens < judgeable && (
          <p class="muted" data-testid="window-too-small">Dead experts and imbalance are judged once the window holds {int(judgeable)} tokens (now {int(a.window.tokens)}).</p>
        )}
        {a.findings.length === 0 ? (
          <p class="ok-line" data-testid="no-findings">No routing problems found in this window.</p>
        ) : (
          <ul class="findings" data-testid="findings">
            {a.findings.map((f, i) => (
              <li key={i} class={`finding ${f.kind}`} data-testid="finding" data-kind={f.kind} data-layer={f.layer} data-name={a.rows[f.layer]?.info.name}
                data-experts={(f.experts ?? []).join(',')}
                data-value={f.value} data-threshold={f.threshold}>
                <span class="finding-kind">{KIND_LABEL[f.kind]}</span>
                <span class="finding-message">{f.message}</span>
                <span class="finding-threshold muted">{thresholdText(f, a)}</span>
                <button class="link" data-testid="finding-link" onClick={() => go(f)}>{FINDING_VIEW[f.kind].label}</button>
              </li>
            ))}
          </ul>
        )}
      </section>
      <RoutingNotes a={a} />
      <section>
        <h3>Layers</h3>
        <div class="table-scroll">
          <table class="grid health fixed-grid" data-testid="layer-health">
            <thead>
              <tr><th>Layer</th><th title="How the counts were read: from what the block handed its experts, the rows each expert received, the router's output, or recomputed from the router's logits">Read</th><th>Experts</th><th>Tokens</th><th title="(max - mean) / mean">MaxVio</th><th title="H / ln E of the loads">Load entropy</th><th>Effective experts</th><th>Zero experts</th><th title="Mean normalized per-token router entropy">Router entropy</th><th>NaN/Inf</th><th>Dropped</th><th>Findings</th></tr>
            </thead>
            <tbody>
              {a.rows.map((r) => {
                const fs = byLayer.get(r.layer) ?? [];
                return (
                  <tr key={r.layer} data-layer={r.layer} data-name={r.info.name} data-source={r.info.source} class={fs.length ? 'bad' : ''}
                    title={routingDescription(r.info)} onClick={() => { store.selectLayer(r.layer); store.selectView('load'); }}>
                    <td class="layer-name" data-testid="layer-label">{r.label}{r.info.design !== 'top-k' ? <span class="tag">{r.info.design}</span> : null}</td>
                    <td class={r.info.source === 'recomputed' ? 'warn' : ''} data-testid="layer-source">{SOURCE_CELL[r.info.source]}</td>
                    <td class="num">{r.experts}{r.info.identity_experts ? ` (${r.info.identity_experts} ∅)` : ''} · {r.info.design === 'top-k' ? `top-${r.topK}` : r.info.design}</td>
                    <td class="num">{int(r.tokens)}</td>
                    <td class={`num ${r.maxVio > a.thresholds.imbalanceMaxVio ? 'warn' : ''}`}>{fmt(r.maxVio)}</td>
                    <td class={`num ${r.normalizedEntropy < a.thresholds.collapseEntropy ? 'warn' : ''}`}>{fmt(r.normalizedEntropy)}</td>
                    <td class="num">{fmt(r.effectiveExperts, 1)} / {r.experts}</td>
                    <td class={`num ${r.zeroExperts ? 'warn' : ''}`}>{r.zeroExperts}</td>
                    <td class="num">{fmt(r.routerEntropy, 3)}</td>
                    <td class={`num ${r.nan + r.inf ? 'warn' : ''}`}>{int(r.nan + r.inf)}</td>
                    <td class="num">{int(r.droppedTokens)}</td>
                    <td>{fs.map((f) => KIND_LABEL[f.kind]).join(', ') || <span class="ok-line">OK</span>}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      </section>
    </div>
  );
}
