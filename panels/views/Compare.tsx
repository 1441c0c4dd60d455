/**
 * Compare: this job's routing against another job's (live, a recording or a stored session), or
 * against another time range of itself, layer by layer. Computed in the analysis worker
 * (panels/engine/long-run.ts, src/analysis/compare.ts), again every second while shown.
 */
import { useEffect, useState } from 'preact/hooks';
import type { ComparisonResult, RangeSpec } from '../engine/long-run';
import type { JobState, Store } from '../store';
import { fmt, int, pct } from './format';

type RangeKind = RangeSpec['kind'];

function jobName(j: JobState): string {
  if (j.session) return `history session ${j.session.info.id} (pid ${j.session.info.pid})`;
  if (j.replay) return `recording ${j.replay.file}`;
  return `pid ${j.pid}${j.status === 'detached' ? ' (detached)' : ''}`;
}

function RangePicker({ value, onChange, testid }: { value: RangeSpec; onChange: (r: RangeSpec) => void; testid: string }) {
  const span = value.kind === 'span' ? value : { from: 0, to: 60 };
  return (
    <span class="range-picker" data-testid={testid}>
      <select aria-label="Range" value={value.kind} data-testid={`${testid}-kind`}
        onChange={(e) => {
          const kind = (e.target as HTMLSelectElement).value as RangeKind;
          onChange(kind === 'span' ? { kind, from: span.from, to: span.to } : { kind });
        }}>
        <option value="window">analysis window</option>
        <option value="all">since attach</option>
        <option value="span">seconds…</option>
      </select>
      {value.kind === 'span' && (
        <>
          <input type="number" min="0" step="any" aria-label="From (s since the first snapshot)" data-testid={`${testid}-from`} value={value.from}
            onChange={(e) => onChange({ ...value, from: Number((e.target as HTMLInputElement).value) || 0 })} />
          –
          <input type="number" min="0" step="any" aria-label="To (s since the first snapshot)" data-testid={`${testid}-to`} value={value.to}
            onChange={(e) => onChange({ ...value, to: Number((e.target as HTMLInputElement).value) || 0 })} />
          s
        </>
      )}
    </span>
  );
}

/** A cell pair "A | B" with B marked when it moved far from A. */
function Pair({ a, b, digits = 2, as = fmt }: { a: number; b: number; digits?: number; as?: (x: number, d?: number) => string }) {
  const moved = Number.isFinite(a) && Number.isFinite(b) && Math.abs(b - a) > 0.1 * Math.max(Math.abs(a), 1e-9);
  return <td class="num">{as(a, digits)} <span class="muted">|</span> <span class={moved ? 'warn' : ''}>{as(b, digits)}</span></td>;
}

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function Compare({ store, job }: { store: Store; job: JobState }) {
  const others = [...store.state.jobs.values()].filter((j) => j.status !== 'attaching');
  const [otherPid, setOther] = useState<number>(() => others.find((j) => j.pid !== job.pid)?.pid ?? job.pid);
  const [rangeA, setRangeA] = useState<RangeSpec>({ kind: 'all' });
  const [rangeB, setRangeB] = useState<RangeSpec>({ kind: 'all' });
  const [result, setResult] = useState<ComparisonResult | null>(null);
  const [busy, setBusy] = useState(false);
  const other = store.state.jobs.get(otherPid) ?? job;
  const settings = store.state.settings;

  useEffect(() => {
    let live = true;
    const run = async () => {
      const port = store.analysisPort;
      if (!port?.compare) return;
      setBusy(true);
      const r = await port.compare({ pid: job.pid, range: rangeA }, { pid: other.pid, range: rangeB }, { windowMode: settings.windowMode, windowValue: settings.windowValue });
      if (live) {
        setResult(r);
        setBusy(false);
      }
    };
    void run();
    // live jobs move on: compare again every second while shown
    const timer = setInterval(() => void run(), 1000);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [store, job.pid, other.pid, JSON.stringify(rangeA), JSON.stringify(rangeB), settings.windowMode, settings.windowValue]);

  const most = result && result.mostDiverged >= 0 ? result.layers[result.mostDiverged] : null;
  return (
    <div class="compare" data-testid="compare-view">
      <div class="controls compare-sides">
        <span><b>A</b> this job ({jobName(job)}) <RangePicker value={rangeA} onChange={setRangeA} testid="range-a" /></span>
        <span>
          <b>B</b>{' '}
          <select aria-label="Job to compare with" data-testid="compare-with" value={String(other.pid)} onChange={(e) => setOther(Number((e.target as HTMLSelectElement).value))}>
            {others.map((j) => <option key={j.pid} value={String(j.pid)}>{j.pid === job.pid ? `this job (${jobName(j)})` : jobName(j)}</option>)}
          </select>{' '}
          <RangePicker value={rangeB} onChange={setRangeB} testid="range-b" />
        </span>
        <button disabled={!result} data-testid="compare-export" onClick={() => result && download(`moe-compare-${job.pid}-${other.pid}.json`, JSON.stringify(result, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2))}>JSON</button>
      </div>
      {!result ? (
        <p class="empty">{busy ? 'Comparing…' : 'Both sides need at least one snapshot.'}</p>
      ) : (
        <>
          <p data-testid="compare-summary" data-most-diverged={result.mostDiverged} data-matched-passes={result.matchedPasses} data-matched-tokens={result.matchedTokens}
            data-matched={JSON.stringify(result.matched)}>
            A: {fmt(result.a.to - result.a.from, 1)} s, {int(result.a.passes)} passes · B: {fmt(result.b.to - result.b.from, 1)} s, {int(result.b.passes)} passes.{' '}
            {most ? <>Most diverged: <b>{most.label}</b>, Jensen-Shannon {fmt(most.js, 3)} bits. </> : null}
            {result.matchedPasses
              ? <>Per-token routing compared on {int(result.matchedTokens)} tokens of {int(result.matchedPasses)} identical inputs (prefill passes with the same token ids on both sides).</>
              : <span class="muted">No sampled pass of identical input on both sides: first-choice changes need the same prompts in both runs.</span>}
          </p>
          <div class="table-scroll">
            <table class="grid compare-table" data-testid="compare-table">
              <thead>
                <tr>
                  <th>Layer</th><th title="Jensen-Shannon divergence of the two expert distributions, bits (0: same, 1: disjoint)">JS divergence</th><th />
                  <th title="Experts whose share of the layer's assignments changed most (A → B)">Moved most</th>
                  <th>Balancedness A | B</th><th>Load entropy A | B</th><th>Router entropy A | B</th><th>ms/pass A | B</th>
                  <th title="Share of tokens of identical inputs whose first-choice expert differs">First choice changed</th>
                </tr>
              </thead>
              <tbody>
                {result.layers.map((l) => {
                  const maxJs = Math.max(1e-9, ...result.layers.map((x) => (Number.isFinite(x.js) ? x.js : 0)));
                  return (
                    <tr key={l.layer} data-testid="compare-layer" data-layer={l.layer} data-js={l.js}
                      data-top1-share={l.top1?.share ?? ''} data-top1-tokens={l.top1?.tokens ?? 0} data-top1-changed={l.top1?.changed ?? 0}
                      class={l.layer === result.mostDiverged ? 'selected' : ''}>
                      <td class="layer-name">{l.label}</td>
                      {!l.comparable ? (
                        <td colSpan={8} class="muted">not comparable: {l.experts} experts on one side, a different number on the other</td>
                      ) : (
                        <>
                          <td class="num">{fmt(l.js, 3)}</td>
                          <td class="bar-cell"><div class="bar" style={{ width: `${Number.isFinite(l.js) ? (100 * l.js) / maxJs : 0}%` }} /></td>
                          <td class="movers">{l.movers.slice(0, 3).map((m) => (
                            <span class="chip" key={m.expert} title={`expert ${m.expert}: ${pct(m.shareA)} of assignments in A, ${pct(m.shareB)} in B`}>
                              {m.expert}: {pct(m.shareA)} → {pct(m.shareB)}
                            </span>
                          ))}</td>
                          <Pair a={l.a.balancedness} b={l.b.balancedness} />
                          <Pair a={l.a.normalizedLoadEntropy} b={l.b.normalizedLoadEntropy} />
                          <Pair a={l.a.routerEntropy} b={l.b.routerEntropy} digits={3} />
                          <Pair a={l.a.msPerPass} b={l.b.msPerPass} digits={3} />
                          <td class="num">{l.top1 ? <>{pct(l.top1.share)} <span class="muted">of {int(l.top1.tokens)}</span></> : '–'}</td>
                        </>
                      )}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </>
      )}
    </div>
  );
}
