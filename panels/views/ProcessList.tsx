/** The jobs sidebar: the user's torch processes, with Attach / Detach. */
import type { Store } from '../store';
import { DistributedJobs } from './DistributedJobs';

export function ProcessList({ store }: { store: Store }) {
  const { processes: all, jobs, selectedPid, connection } = store.state;
  const processes = all.filter((p) => !p.dist); // ranks of distributed jobs are listed by their job
  return (
    <aside class="process-pane" aria-label="Python processes">
      <DistributedJobs store={store} />
      <div class="sidebar-head">
        <span>Python processes with torch</span>
        <button class="icon-button" title="Refresh the list" data-testid="refresh" disabled={connection !== 'connected'} onClick={() => store.refresh()}>
          ⟳
        </button>
      </div>
      {all.length === 0 && <p class="empty">No Python process with torch loaded was found for your user.</p>}
      <ul class="process-list">
        {processes.map((p) => {
          const job = jobs.get(p.pid);
          const busy = job?.status === 'attaching';
          const attached = job?.status === 'attached';
          return (
            <li key={p.pid} class={p.pid === selectedPid ? 'selected' : ''} data-pid={p.pid} onClick={() => job && store.selectJob(p.pid)}>
              <div class="process-row">
                <span class="pid">{p.pid}</span>
                <span class="tags">
                  {p.python && <span class="tag">py{p.python}</span>}
                  {p.probe && !attached && <span class="tag" title="A probe is already listening in this process">probe</span>}
                </span>
                {attached ? (
                  <button data-testid={`detach-${p.pid}`} onClick={(e) => { e.stopPropagation(); store.detach(p.pid); }}>Detach</button>
                ) : (
                  <button class="primary" disabled={busy || connection !== 'connected'} data-testid={`attach-${p.pid}`}
                    onClick={(e) => { e.stopPropagation(); store.attach(p.pid); }}>
                    {busy ? 'Attaching…' : 'Attach'}
                  </button>
                )}
              </div>
              <div class="cmdline" title={p.cmdline}>{p.cmdline}</div>
            </li>
          );
        })}
      </ul>
      <RemoteJobs store={store} />
    </aside>
  );
}

/** Jobs on another machine, reached through an SSH tunnel to a probe started with attach(model, tcp_port=...). */
function RemoteJobs({ store }: { store: Store }) {
  const { jobs, selectedPid, connection } = store.state;
  const remote = [...jobs.values()].filter((j) => j.method === 'tcp');
  return (
    <div class="remote">
      <div class="sidebar-head"><span>Remote jobs (TCP, via SSH tunnel)</span></div>
      <ul class="process-list">
        {remote.map((j) => (
          <li key={j.pid} class={j.pid === selectedPid ? 'selected' : ''} data-pid={j.pid} onClick={() => store.selectJob(j.pid)}>
            <div class="process-row">
              <span class="pid">{j.pid}</span>
              <span class="tags"><span class="tag">remote</span></span>
              {j.status === 'attached' && (
                <button data-testid={`detach-${j.pid}`} onClick={(e) => { e.stopPropagation(); store.detach(j.pid); }}>Detach</button>
              )}
            </div>
          </li>
        ))}
      </ul>
      {/* Uncontrolled inputs, read when submitted: what the user typed is what is sent, whatever
          the state of a pending re-render. */}
      <form class="connect-form" onSubmit={(e) => {
        e.preventDefault();
        const form = e.currentTarget as HTMLFormElement;
        const field = (name: string) => (form.elements.namedItem(name) as HTMLInputElement).value;
        store.connectRemote(field('address'), field('token'));
      }}>
        <input name="address" aria-label="Address" data-testid="connect-address" defaultValue="127.0.0.1:" placeholder="127.0.0.1:PORT" />
        <input name="token" aria-label="Token" data-testid="connect-token" defaultValue="" placeholder="token" />
        <button type="submit" data-testid="connect" disabled={connection !== 'connected'}>Connect</button>
      </form>
    </div>
  );
}
