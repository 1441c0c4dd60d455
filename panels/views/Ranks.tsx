/**
 * Ranks: a distributed job rank by rank over the window. How many tokens each rank processes and
 * how much work its experts do (the load that makes the slowest GPU of an expert-parallel job), its
 * time in the MoE layers and the skew between ranks (stragglers), what each rank's experts
 * processed per expert of the chosen layer (rank x expert), and what stands out. A rank that ended
 * is named with why; the others go on.
 */
import { rankTime } from '../../src/analysis/ranks';
import type { Analysis } from '../engine/analyzer';
import { fmt, int, pct } from './format';
import { MatrixCanvas } from './MatrixCanvas';

const STATUS_TEXT: Record<string, string> = { attached: 'streaming', exited: 'exited', lost: 'lost', excluded: 'left out', detached: 'detached' };

export function Ranks({ a }: { a: Analysis }) {
  const r = a.ranks;
  if (!r) return <p class="empty">This job is a single process: no ranks to compare.</p>;
  const { rows, experts, layer } = r;
  const info = a.rows[layer];
  const streaming = rows.filter((x) => x.status === 'attached').length;
  const byExperts = r.timeBasis === 'experts';
  const slowest = rows.filter((x) => x.status === 'attached' && Number.isFinite(rankTime(x, r.timeBasis))).sort((x, y) => rankTime(y, r.timeBasis) - rankTime(x, r.timeBasis))[0];
  const busiest = [...rows].sort((x, y) => y.loadShare - x.loadShare)[0];
  // rank x expert: what each rank's experts processed, coloured against the busiest cell
  const max = Math.max(1, ...rows.flatMap((x) => x.counts ?? []));
  const layerTotal = rows.reduce((sum, x) => sum + (x.counts ?? []).reduce((s, v) => s + v, 0), 0);
  return (
    <div class="ranks" data-testid="ranks-view" data-layer={layer}>
      <div class="summary-line">
        <span data-testid="ranks-count">{rows.length} of {r.worldSize} ranks</span>
        <span class="muted">{r.label}</span>
        <span>{streaming} streaming</span>
        <span data-testid="time-basis" data-basis={r.timeBasis} title={byExperts
          ? "Slowest rank's time inside its own experts per pass over the median rank's (1.00: even): its compute, without the all-to-all waits"
          : "Slowest rank's time in its MoE layers per pass over the median rank's (1.00: even)"}>
          {byExperts ? 'expert time skew' : 'MoE time skew'} <b data-testid="time-skew">{fmt(r.timeSkew, 2)}×</b>{slowest ? ` (slowest: rank ${slowest.rank})` : ''}
        </span>
        <span title="Busiest rank's expert load over the median rank's (1.00: even)">
          load skew <b data-testid="load-skew">{fmt(r.loadSkew, 2)}×</b>{busiest ? ` (busiest: rank ${busiest.rank})` : ''}
        </span>
      </div>
      {r.findings.length > 0 && (
        <ul class="rank-findings">
          {r.findings.map((f) => (
            <li key={`${f.kind}-${f.rank}`} class={`rank-finding ${f.kind}`} data-testid="rank-finding" data-kind={f.kind} data-rank={f.rank}>{f.message}</li>
          ))}
        </ul>
      )}
      <div class="table-scroll">
        <table class="grid" data-testid="ranks-table">
          <thead>
            <tr>
              <th>rank</th><th>node</th><th>pid</th><th>status</th><th class="num">passes</th>
              <th class="num" title="Tokens of this rank's own batches per second">tokens/s</th>
              <th class="num" title="Token-expert assignments its experts processed per second, all MoE layers">expert load/s</th>
              <th class="num" title="Its share of the job's expert work in the window">share</th>
              <th class="num" title="ms per pass in its MoE blocks, all layers (expert parallel: waiting in the all-to-all included)">MoE ms/pass</th>
              {byExperts && <th class="num" title="ms per pass inside its own experts, all layers: its compute alone">expert ms/pass</th>}
              <th title={`Experts this rank holds in ${info?.label ?? `layer ${layer}`}`}>holds</th>
              <th class="num" title={`Assignments its experts processed in ${info?.label ?? `layer ${layer}`}`}>load (layer)</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((x) => (
              <tr key={x.handle} data-testid="rank-row" data-rank={x.rank} data-pid={x.pid} data-status={x.status} data-passes={x.passes}
                data-load={x.layerLoad} data-counts={(x.counts ?? []).join(',')} data-held={(x.held ?? []).join(',')} class={x.status === 'attached' ? '' : 'ended'}>
                <td class="num">{x.rank}</td>
                <td title={x.via ? `through the relay at ${x.via}` : 'this machine'}>{x.node || '?'}</td>
                <td class="num">{x.pid}</td>
                <td title={x.message}>{STATUS_TEXT[x.status] ?? x.status}</td>
                <td class="num">{int(x.passes)}</td>
                <td class="num">{int(x.tokensPerS)}</td>
                <td class="num">{int(x.loadPerS)}</td>
                <td class="num">{pct(x.loadShare)}</td>
                <td class="num">{fmt(x.moeMsPerPass, 2)}</td>
                {byExperts && <td class="num" data-testid="expert-ms">{fmt(x.expertMsPerPass, 2)}</td>}
                <td>{x.held ? x.held.join(', ') : 'all'}</td>
                <td class="num">{int(x.layerLoad)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {experts === 0 && rows.length > 0 && (
        <p class="muted" data-testid="rank-counts-left-out">Per-expert counts of each rank are left out: {rows.length} ranks' would not fit in one message to the panel.</p>
      )}
      {experts > 0 && (
        <>
          <div class="controls">
            <span class="muted">
              Rank × expert, {info?.label ?? `layer ${layer}`}: what each rank's experts processed over the last {fmt(r.countsSeconds, 1)} s
              (colour: against the busiest cell)
            </span>
          </div>
          <MatrixCanvas
            rows={rows.length} cols={experts} data={rows} testid="rank-heatmap" rowLabel="rank" colLabel="expert" height={Math.max(60, rows.length * 18)}
            intensity={(row, e) => (rows[row]!.counts?.[e] ?? 0) / max}
            describe={(row, e) => {
              const x = rows[row]!;
              const n = x.counts?.[e] ?? 0;
              const holds = !x.held || x.held.includes(e) ? 'held by this rank' : 'held elsewhere';
              return `rank ${x.rank}, expert ${e} (${holds}): ${int(n)} assignments, ${pct(layerTotal ? n / layerTotal : 0)} of the layer's`;
            }}
          />
          <div class="axis-note muted">rows: ranks {rows[0]?.rank} (top) to {rows[rows.length - 1]?.rank} · columns: global experts 0 to {experts - 1}</div>
        </>
      )}
    </div>
  );
}
