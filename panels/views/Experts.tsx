/**
 * Experts: what the experts themselves look like, from their weights (on request: the probe reads
 * them on its own thread, in chunks). Findings for near-duplicate experts and collapsed router rows,
 * a similarity graph and matrix per layer, and each expert's norms beside its load in the window.
 */
import { useMemo, useState } from 'preact/hooks';
import { PARAMETER_THRESHOLDS, parameterFindings, strongestPairsThreshold } from '../../src/analysis';
import type { Analysis } from '../engine/analyzer';
import type { Store } from '../store';
import { fmt, int } from './format';
import { MatrixCanvas } from './MatrixCanvas';
import { SimilarityGraph } from './SimilarityGraph';
import { complete } from '../engine/requests';
import { useStoreSlice } from './useStoreSlice';
import { analysisSource, useSettled } from './useSettled';

type Kind = 'weights' | 'router';

/**
 * Rows of the norms table shown at first: its load column changes with every analysis (5 a
 * second), and a table of hundreds of rows re-laid out that often costs more than a frame.
 */
const TABLE_ROWS = 64;

/**
 * The experts the table lists, in id order: all, or at most TABLE_ROWS of them: those a finding
 * names first (the findings list names every one of them anyway), then the lowest ids.
 */
function shownExperts(experts: number, all: boolean, dead: ReadonlySet<number>, duplicate: ReadonlySet<number>): number[] {
  const ids = Array.from({ length: experts }, (_, e) => e);
  if (all || experts <= TABLE_ROWS) return ids;
  const named = ids.filter((e) => dead.has(e) || duplicate.has(e)).slice(0, TABLE_ROWS);
  const chosen = new Set(named);
  for (let e = 0; e < experts && chosen.size < TABLE_ROWS; e++) chosen.add(e);
  return ids.filter((e) => chosen.has(e));
}

const KIND_LABEL: Record<Kind, string> = { weights: 'cosine of the experts’ weights', router: 'cosine of their router rows' };

export function Experts({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  const pid = a.pid;
  const result = useStoreSlice(store, (s) => s.jobs.get(pid)?.expertParams);
  const status = useStoreSlice(store, (s) => s.jobs.get(pid)?.status);
  const requests = useStoreSlice(store, (s) => s.requests);
  const request = [...requests.values()].filter((r) => r.pid === pid && r.kind === 'expert-params').pop();
  const running = request?.state === 'running';
  const label = (l: number) => a.rows[l]?.label ?? `layer ${l}`;
  // Findings scan every pair of every layer: computed once the whole answer is in (not with each
  // of its parts, nor with each analysis), and again only if the layer names change.
  const ready = result !== undefined && complete(result);
  const layers = useMemo(() => (result && ready ? [...result.layers.values()].sort((x, y) => x.layer - y.layer) : []), [result, ready]);
  const labels = a.rows.map((r) => r.label).join('\n');
  const findings = useMemo(() => parameterFindings(layers, label), [layers, labels]);
  const p = result?.layers.get(layer);
  const [kind, setKind] = useState<Kind>('weights');
  const [allRows, setAllRows] = useState(false);
  const [thresholdText, setThreshold] = useState('');
  const matrix = p ? (kind === 'weights' ? p.weightCosine ?? p.routerCosine : p.routerCosine ?? p.weightCosine) : null;
  const shownKind: Kind = p && matrix === p.weightCosine ? 'weights' : 'router';
  const auto = useMemo(() => (matrix && p ? strongestPairsThreshold(matrix, p.experts) : 1), [matrix, p]);
  const threshold = thresholdText.trim() !== '' && Number.isFinite(Number(thresholdText)) ? Number(thresholdText) : auto;
  const dead = new Set(findings.filter((f) => f.kind === 'dead_by_weights' && f.layer === layer).flatMap((f) => f.experts));
  const duplicate = new Set(findings.filter((f) => f.kind === 'near_duplicate' && f.layer === layer).flatMap((f) => f.experts));
  const deadKey = [...dead].join(',');
  const duplicateKey = [...duplicate].join(',');
  // The graph and the matrix depend on the weights alone: the same elements across the analysis'
  // updates (5 a second), so that Preact skips them; only the table follows the window's loads.
  const pictures = useMemo(() => (p && matrix ? (
    <div class="graph-box">
      <SimilarityGraph matrix={matrix} n={p.experts} threshold={threshold} dead={dead} what={KIND_LABEL[shownKind]}
        describe={(e) => `router row norm ${fmt(p.routerNorms?.[e] ?? NaN, 4)}, weights norm ${fmt(p.expertNorms?.[e] ?? NaN, 3)}${dead.has(e) ? ', router row collapsed' : ''}${duplicate.has(e) ? ', near-duplicate' : ''}`} />
      <div class="experts-matrix">
        <MatrixCanvas rows={p.experts} cols={p.experts} data={matrix} height={Math.min(420, Math.max(140, p.experts * 12))}
          intensity={(i, j) => (i === j ? NaN : Math.max(0, matrix[i * p.experts + j]!))}
          describe={(i, j) => `experts ${i} and ${j}: ${KIND_LABEL[shownKind]} ${fmt(matrix[i * p.experts + j]!, 4)}`}
          rowLabel="expert" colLabel="expert" testid="similarity-matrix" />
      </div>
    </div>
  ) : null), [p, matrix, threshold, shownKind, deadKey, duplicateKey]);

  // The table's load column follows the window at most once a second (useSettled), and the table
  // is the same element in between, so that Preact skips its rows (64 to all of them) at every
  // analysis; the norms beside the load change only with a new answer.
  const settled = useSettled(store, a, analysisSource(a));
  const table = useMemo(() => {
    if (!p) return null;
    const row = settled.rows[layer];
    const load = (e: number) => (row ? settled.window.counts[row.offset + e] ?? NaN : NaN);
    return (
      <div class="table-scroll">
        <table class="grid fixed-grid" data-testid="expert-params-table">
          <thead>
            <tr><th>Expert</th><th>Router row norm</th>{p.routerBias && <th>{p.routerBiasName}</th>}<th>Weights norm</th>{p.groups.map((g) => <th key={g}>{g}</th>)}<th>Assignments in window</th></tr>
          </thead>
          <tbody>
            {shownExperts(p.experts, allRows, dead, duplicate).map((e) => (
              <tr key={e} class={dead.has(e) ? 'zero' : ''} data-expert={e}>
                <td class="num">{e}{duplicate.has(e) ? ' ≈' : ''}</td>
                <td class="num" data-testid="router-norm">{fmt(p.routerNorms?.[e] ?? NaN, 4)}</td>
                {p.routerBias && <td class="num">{fmt(p.routerBias[e]!, 4)}</td>}
                <td class="num">{fmt(p.expertNorms?.[e] ?? NaN, 3)}</td>
                {p.groups.map((g, gi) => <td class="num" key={g}>{fmt(p.groupNorms?.[gi * p.experts + e] ?? NaN, 3)}</td>)}
                <td class="num">{int(load(e))}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    );
  }, [p, settled, layer, allRows, deadKey, duplicateKey]);

  return (
    <div class="experts-view" data-testid="experts-view" data-layer={layer}>
      <div class="controls">
        <button class="primary" data-testid="experts-analyze" disabled={status !== 'attached' || running}
          title={status === 'attached' ? 'The probe reads every expert’s weights on its own thread, 64 MiB at a time' : 'Needs a live job'}
          onClick={() => store.analyzeExperts()}>
          {result ? 'Analyze expert weights again' : 'Analyze expert weights'}
        </button>
        {running && <span class="muted" data-testid="experts-running">reading the weights… {result ? `${result.layers.size} of ${result.parts} layers` : ''}</span>}
        {result && !ready && !running && <span class="muted">only {result.layers.size} of {result.parts} layers arrived</span>}
        {result && ready && (
          <span class="muted" data-testid="experts-cost">
            {layers.length} layers read in {fmt(layers.reduce((s, l) => s + l.seconds, 0), 2)} s, at most {int(Math.max(0, ...layers.map((l) => l.peakBytes)) / 1024)} KiB held at once
          </span>
        )}
      </div>
      {request?.state === 'refused' && <p class="notice-inline" role="alert" data-testid="experts-refused">The probe could not analyse the weights: {request.message}</p>}
      {!result && !running && (
        <p class="muted" data-testid="experts-empty">
          {status === 'attached'
            ? 'Reads each MoE layer’s router rows and experts’ weights in the job: their norms, and how alike every pair of experts is. Nothing in the job changes.'
            : 'This job holds no expert-weight analysis (it is computed by the probe of a live job).'}
        </p>
      )}
      {result && ready && (
        <>
          <h3>Findings from the weights <span class="muted">(near-duplicate: cosine ≥ {PARAMETER_THRESHOLDS.duplicateCosine}; dead by weights: router row norm ≤ {100 * PARAMETER_THRESHOLDS.collapsedRouterRow} % of the layer’s median)</span></h3>
          {findings.length === 0 && !running ? <p class="ok-line" data-testid="experts-no-findings">No near-duplicate experts and no collapsed router rows in {layers.length} layers.</p> : (
            <ul class="findings">
              {findings.map((f, i) => (
                <li key={i} class={`finding ${f.kind}`} data-testid="param-finding" data-kind={f.kind} data-layer={f.layer} data-experts={f.experts.join(',')}>
                  <span class="finding-kind">{f.kind === 'near_duplicate' ? 'Near-duplicate experts' : 'Dead by weights'}</span>
                  <span class="finding-message">{f.message}</span>
                  <span class="finding-threshold muted">{f.kind === 'near_duplicate' ? `lowest cosine ${fmt(f.value, 4)} ≥ ${f.threshold}` : `row norm ${fmt(100 * f.value, 2)} % of the median ≤ ${100 * f.threshold} %`}</span>
                </li>
              ))}
            </ul>
          )}
        </>
      )}
      {result && !p && <p class="muted">{label(layer)}: not in this analysis{running ? ' yet' : ''}.</p>}
      {p && (
        <>
          <h3>{label(layer)} <span class="muted">{p.experts} experts{p.computeExperts < p.experts ? ` (${p.experts - p.computeExperts} zero-compute)` : ''}, weights held as {p.layout || 'unknown'}{p.groups.length ? ` (${p.groups.join(', ')})` : ''}</span></h3>
          {p.notes.map((n) => <p key={n} class="muted">{n[0]!.toUpperCase()}{n.slice(1)}.</p>)}
          {matrix ? (
            <>
              <div class="controls">
                <span role="radiogroup" aria-label="Similarity">
                  <button role="radio" aria-checked={shownKind === 'weights'} class={`chip ${shownKind === 'weights' ? 'on' : ''}`} data-testid="similarity-weights" disabled={!p.weightCosine} onClick={() => setKind('weights')}>Expert weights</button>
                  <button role="radio" aria-checked={shownKind === 'router'} class={`chip ${shownKind === 'router' ? 'on' : ''}`} data-testid="similarity-router" disabled={!p.routerCosine} onClick={() => setKind('router')}>Router rows</button>
                </span>
                <label title="Pairs at least this similar are joined; empty: keep about 1.5 edges per expert (the strongest pairs)">
                  Edges at cosine ≥ <input type="number" step="0.05" min="-1" max="1" data-testid="similarity-threshold" placeholder={fmt(auto, 3)} value={thresholdText}
                    onChange={(e) => setThreshold((e.target as HTMLInputElement).value)} />
                </label>
              </div>
              {pictures}
            </>
          ) : <p class="muted">Neither the router rows nor the experts’ weights of this layer could be read.</p>}
          {table}
          {p.experts > TABLE_ROWS && (
            <button class="link" data-testid="experts-all-rows" onClick={() => setAllRows(!allRows)}>
              {allRows ? `Show ${TABLE_ROWS} experts (those named in a finding first)` : `Show all ${p.experts} experts`}
            </button>
          )}
        </>
      )}
    </div>
  );
}
