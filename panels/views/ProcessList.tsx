/** The jobs sidebar: the user's torch processes, with Attach / Detach. */
import type { Store } from '../store';

export function ProcessList({ store }: { store: Store }) {
  const { processes, jobs, selectedPid, connection } = store.state;
  return (
    <aside class="process-pane" aria-label="Python processes">
      <div class="sidebar-head">
        <span>Python processes with torch</span>
        <button class="icon-button" title="Refresh the list" data-testid="refresh" disabled={connection !== 'connected'} onClick={() => store.refresh()}>
          ⟳
        </button>
      </div>
      {processes.length === 0 && <p class="empty">No Python process with torch loaded was found for your user.</p>}
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
    </aside>
  );
}
