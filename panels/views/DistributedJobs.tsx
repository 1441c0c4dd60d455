/**
 * The sidebar's distributed jobs: processes of one job (same torchrun run, rendezvous, raylet or
 * launcher) listed as one entry with its ranks, attached with one click; jobs reached through
 * relays on other nodes; and the form to connect to a relay.
 */
import type { ProcessInfo, RankInfo } from '../../src/protocol/panel';
import type { JobState, Store } from '../store';

interface LocalJob {
  key: string;
  label: string;
  worldSize: number | null;
  processes: ProcessInfo[];
}

/** Processes of the list grouped by the job they are ranks of, in order of their first pid. */
export function localJobs(processes: readonly ProcessInfo[]): LocalJob[] {
  const jobs = new Map<string, LocalJob>();
  for (const p of processes) {
    if (!p.dist) continue;
    const job = jobs.get(p.dist.job) ?? { key: p.dist.job, label: p.dist.label, worldSize: p.dist.worldSize, processes: [] };
    job.processes.push(p);
    jobs.set(p.dist.job, job);
  }
  for (const job of jobs.values()) job.processes.sort((a, b) => (a.dist!.rank ?? a.pid) - (b.dist!.rank ?? b.pid));
  return [...jobs.values()];
}

const STATUS: Record<RankInfo['status'], string> = { attached: 'streaming', exited: 'exited', lost: 'lost', excluded: 'left out', detached: 'detached' };

export function DistributedJobs({ store }: { store: Store }) {
  const { processes, jobs, selectedPid, connection } = store.state;
  const local = localJobs(processes);
  // the newest shown job of each key (a job attached, detached and attached again has two)
  const shown = new Map<string, JobState>();
  for (const j of jobs.values()) if (j.ranks && !j.replay) shown.set(j.ranks.key, j);
  const elsewhere = [...shown.values()].filter((j) => !local.some((l) => l.key === j.ranks!.key));
  const any = local.length > 0 || elsewhere.length > 0 || store.state.relays.length > 0;
  // One tree whether or not a job is listed, so the relay form below keeps what the user typed
  // when a distributed job appears or goes (a different parent would remount it, empty).
  return (
    <div class={any ? 'distributed' : undefined} aria-label={any ? 'Distributed jobs' : undefined}>
      {any && <div class="sidebar-head"><span>Distributed jobs</span></div>}
      {any && <ul class="process-list">
        {local.map((l, i) => {
          const job = shown.get(l.key);
          const live = job?.status === 'attached';
          const attaching = l.processes.some((p) => jobs.get(p.pid)?.status === 'attaching');
          return (
            <li key={l.key} class={`dist-job ${job && job.pid === selectedPid ? 'selected' : ''}`} data-testid="dist-job" data-job={l.key}
              onClick={() => job && store.selectJob(job.pid)}>
              <div class="process-row">
                <span class="tags"><b>{l.label}</b></span>
                {live ? (
                  <button data-testid={`detach-job-${i}`} onClick={(e) => { e.stopPropagation(); store.detach(job!.pid); }}>Detach all</button>
                ) : (
                  <button class="primary" data-testid={`attach-job-${i}`} disabled={attaching || connection !== 'connected'}
                    title="Attach to every rank of this job on this machine (in parallel) and show them as one job"
                    onClick={(e) => { e.stopPropagation(); store.attachJob(l.processes.map((p) => p.pid)); }}>
                    {attaching ? 'Attaching…' : `Attach all ${l.processes.length}`}
                  </button>
                )}
              </div>
              <div class="cmdline">{l.processes.length} of {l.worldSize ?? '?'} ranks on this machine</div>
              {job?.ranks && job.status === 'attached'
                ? <RankLines ranks={job.ranks.ranks.map((r) => ({ rank: r.rank, pid: r.pid, node: r.via ? r.node : undefined, status: STATUS[r.status] }))} />
                : <RankLines ranks={l.processes.map((p) => ({ rank: p.dist!.rank, pid: p.pid, status: jobs.get(p.pid)?.status === 'attaching' ? 'attaching…' : 'not attached' }))} />}
            </li>
          );
        })}
        {elsewhere.map((j) => (
          <li key={j.pid} class={`dist-job ${j.pid === selectedPid ? 'selected' : ''}`} data-testid="dist-job" data-job={j.ranks!.key} onClick={() => store.selectJob(j.pid)}>
            <div class="process-row">
              <span class="tags"><b>{j.ranks!.label}</b></span>
              {j.status === 'attached' && (
                <button data-testid="detach-remote-job" onClick={(e) => { e.stopPropagation(); store.detach(j.pid); }}>Detach all</button>
              )}
            </div>
            <div class="cmdline">{j.ranks!.ranks.length} of {j.ranks!.worldSize} ranks, on {[...new Set(j.ranks!.ranks.map((r) => r.node))].join(', ')}</div>
            <RankLines ranks={j.ranks!.ranks.map((r) => ({ rank: r.rank, pid: r.pid, node: r.node, status: STATUS[r.status] }))} />
          </li>
        ))}
      </ul>}
      <Relays store={store} />
    </div>
  );
}

function RankLines({ ranks }: { ranks: Array<{ rank: number | null; pid: number; node?: string; status: string }> }) {
  return (
    <ul class="ranks-of-job">
      {ranks.map((r) => (
        <li key={`${r.node ?? ''}:${r.pid}`} data-testid="dist-rank" data-pid={r.pid} data-rank={r.rank ?? ''}>
          rank {r.rank ?? '?'} · pid {r.pid}{r.node ? ` · ${r.node}` : ''} · <span class={`rank-status ${r.status}`}>{r.status}</span>
        </li>
      ))}
    </ul>
  );
}

/** Relays on other nodes: connect through an SSH tunnel to `moe-devtools relay`'s port with its token. */
function Relays({ store }: { store: Store }) {
  const { relays, connection } = store.state;
  return (
    <div class="remote relays">
      <div class="sidebar-head"><span title="`npx moe-devtools relay` on each node of a multi-node job">Relays (other nodes, via SSH tunnel)</span></div>
      <ul class="process-list">
        {relays.map((r) => (
          <li key={r.address} data-testid="relay" data-address={r.address} data-status={r.status} title={r.message}>
            <div class="process-row"><span class="pid">{r.node}</span><span class="tags"><span class="tag">{r.status}</span></span></div>
            <div class="cmdline">{r.address}{r.message ? ` · ${r.message}` : ''}</div>
          </li>
        ))}
      </ul>
      {/* Uncontrolled inputs, read when submitted (see RemoteJobs). */}
      <form class="connect-form" onSubmit={(e) => {
        e.preventDefault();
        const form = e.currentTarget as HTMLFormElement;
        const field = (name: string) => (form.elements.namedItem(name) as HTMLInputElement).value;
        store.connectRelay(field('address'), field('token'));
      }}>
        <input name="address" aria-label="Relay address" data-testid="relay-address" defaultValue="127.0.0.1:" placeholder="127.0.0.1:PORT" />
        <input name="token" aria-label="Relay token" data-testid="relay-token" defaultValue="" placeholder="token" />
        <button type="submit" data-testid="relay-connect" disabled={connection !== 'connected'}>Connect</button>
      </form>
    </div>
  );
}
