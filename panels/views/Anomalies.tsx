/** Anomalies: the changes the host's online detection found in this job's routing, timestamped. */
import type { AnomalyFinding, AnomalyMetric } from '../../src/protocol/panel';
import type { Store } from '../store';
import { fmt } from './format';

const METRIC_LABEL: Record<AnomalyMetric, string> = {
  routing: 'Routing shift',
  router_entropy: 'Router entropy',
  z_loss: 'Router z-loss',
  nan_inf: 'NaN/Inf logits',
  time: 'Time per pass',
};

/** Local wall-clock time of a probe timestamp (s since the epoch), to the second. */
export const clock = (ts: number) => new Date(ts * 1000).toLocaleTimeString(undefined, { hour12: false });

export function Anomalies({ store, anomalies }: { store: Store; anomalies: AnomalyFinding[] }) {
  return (
    <div class="anomalies" data-testid="anomalies-view">
      {anomalies.length === 0 ? (
        <p class="empty" data-testid="no-anomalies">
          No change found. Each layer's expert distribution, router entropy, z-loss, NaN/Inf logits and time per pass are watched
          against a reference learned over its first 20 blocks of at least 1 s and 256 tokens (again after each finding).
        </p>
      ) : (
        <table class="grid" data-testid="anomaly-table">
          <thead><tr><th>Began</th><th>Found</th><th>What</th><th>Layer</th><th>Change</th></tr></thead>
          <tbody>
            {[...anomalies].reverse().map((f, i) => (
              <tr key={`${f.ts}-${f.layer}-${f.metric}-${i}`} data-testid="anomaly" data-metric={f.metric} data-layer={f.layer} data-ts={f.ts}
                tabIndex={0} onClick={() => { store.selectLayer(f.layer); store.selectView('load'); }}
                onKeyDown={(e) => e.key === 'Enter' && (store.selectLayer(f.layer), store.selectView('load'))}>
                <td class="num">{clock(f.ts)}</td>
                <td class="num muted">{clock(f.detectedTs)}</td>
                <td>{METRIC_LABEL[f.metric]}</td>
                <td class="layer-name">{f.label}</td>
                <td class="anomaly-message">
                  {f.metric === 'routing' ? <b>JS {fmt(f.value, 3)} bits</b> : null} <span data-testid="anomaly-message">{f.message}</span>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
