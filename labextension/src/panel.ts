// The "Serverless" sidebar: the platform strip, the deployed functions, and the selected one's details.
import { Clipboard, Dialog, showDialog } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  FaasApiError,
  FaasClient,
  FaasUnavailableError,
  ICallTree,
  IDeadLetter,
  IFunction,
  IInvocation,
  IPlatform,
  IScaleEvent,
  ITrigger
} from './client';

/** How far back the worker chart reaches, in seconds. */
export const CHART_SECONDS = 600;

export interface IPanelOptions {
  /** Poll the API while the panel is shown (off in unit tests, which call refresh themselves). */
  poll?: boolean;
  /** Asks before undeploying; resolves to true to go ahead. */
  confirm?: (name: string) => Promise<boolean>;
  /** Wall-clock seconds, for "ago" and the chart; replaceable in tests. */
  now?: () => number;
  /** Told of every change of the selected function, to keep it across reloads. */
  onSelect?: (name: string | null) => void;
  /** The function selected when the panel was last open, once known. */
  initialSelection?: Promise<string | null>;
}

async function confirmWithDialog(name: string): Promise<boolean> {
  const result = await showDialog({
    title: `Undeploy ${name}?`,
    body: `POST requests to ${name} will get 404 until it is deployed again. Its versions stay on disk.`,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Undeploy' })]
  });
  return result.button.accept;
}

export function formatMs(value: number | null | undefined): string {
  if (value === null || value === undefined) {
    return '–';
  }
  return value < 10 ? `${value.toFixed(2)} ms` : `${Math.round(value)} ms`;
}

/** Milliseconds without the unit, for columns whose header names it. */
export function formatNumber(value: number | null | undefined): string {
  return formatMs(value).replace(' ms', '');
}

export function formatCost(usd: number): string {
  if (usd === 0) {
    return '$0';
  }
  if (usd >= 0.01) {
    return `$${usd.toFixed(2)}`;
  }
  // Pay-per-use costs are often millionths of a dollar: fixed digits, never an exponent.
  const digits = usd >= 0.0001 ? 4 : 7;
  const text = usd.toFixed(digits).replace(/0+$/, '');
  return text === '0.' ? '<$0.0000001' : `$${text}`;
}

export function formatAgo(then: number | null, now: number): string {
  if (then === null) {
    return 'never';
  }
  const seconds = Math.max(0, Math.round(now - then));
  if (seconds < 60) {
    return `${seconds} s ago`;
  }
  if (seconds < 3600) {
    return `${Math.round(seconds / 60)} min ago`;
  }
  return `${Math.round(seconds / 3600)} h ago`;
}

/** The points of a step chart of the worker count over the last `span` seconds, in a width x height box. */
export function chartPoints(
  events: IScaleEvent[],
  maximum: number,
  now: number,
  width: number,
  height: number,
  span = CHART_SECONDS
): string {
  const start = now - span;
  const x = (time: number) => ((Math.max(time, start) - start) / span) * width;
  const y = (workers: number) => height - (Math.min(workers, maximum) / Math.max(maximum, 1)) * (height - 2) - 1;
  let current = 0;
  for (const event of events) {
    if (event.time <= start) {
      current = event.workers;
    }
  }
  const points: string[] = [`0,${y(current).toFixed(1)}`];
  for (const event of events) {
    if (event.time > start) {
      points.push(`${x(event.time).toFixed(1)},${y(current).toFixed(1)}`);
      current = event.workers;
      points.push(`${x(event.time).toFixed(1)},${y(current).toFixed(1)}`);
    }
  }
  points.push(`${width},${y(current).toFixed(1)}`);
  return points.join(' ');
}

/** The last lines of an invocation's output, with a count of those above. */
export function outputTail(output: string, lines = OUTPUT_LINES): string {
  const all = output.replace(/\n$/, '').split('\n');
  const hidden = all.length - lines;
  const tail = all.slice(-lines).join('\n');
  return hidden > 0 ? `… ${hidden} more line${hidden === 1 ? '' : 's'} above\n${tail}` : tail;
}

const OUTPUT_LINES = 6;

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** The newest invocation's call tree as a waterfall: a bar per call, from its start, as long as it ran. */
export function callTreeNodes(tree: ICallTree): Node[] {
  const span = Math.max(1, ...tree.calls.map(row => row.offset_ms + (row.duration_ms ?? 0)));
  const list = element('ul', 'jp-faas-CallTree');
  for (const row of tree.calls) {
    const item = element('li', `jp-faas-Call jp-faas-mod-${row.status}`);
    item.style.paddingLeft = `${row.depth * 12}px`;
    item.appendChild(element('span', 'jp-faas-CallName', row.function));
    const track = element('span', 'jp-faas-CallTrack');
    const bar = element('span', 'jp-faas-CallBar');
    bar.style.left = `${(100 * row.offset_ms) / span}%`;
    bar.style.width = `${Math.max(0.5, (100 * (row.duration_ms ?? 0)) / span)}%`;
    track.appendChild(bar);
    item.appendChild(track);
    item.appendChild(
      element('span', 'jp-faas-CallTimes', `+${formatMs(row.offset_ms)} · ${formatMs(row.duration_ms)} · ${row.status}`)
    );
    list.appendChild(item);
  }
  return [
    element('h4', undefined, `Calls of the newest invocation (${tree.calls.length - 1})`),
    list,
    element('p', 'jp-faas-TreeCost', `whole tree ${formatCost(tree.tree_cost_usd)}`)
  ];
}

export class ServerlessPanel extends Widget {
  constructor(
    readonly client: FaasClient,
    options: IPanelOptions = {}
  ) {
    super();
    this.addClass('jp-faas-Panel');
    this.title.caption = 'Serverless';
    this._confirm = options.confirm ?? confirmWithDialog;
    this._now = options.now ?? (() => Date.now() / 1000);
    this._onSelect = options.onSelect ?? (() => undefined);
    void options.initialSelection?.then(name => {
      if (name && this._selected === null) {
        this.selected = name;
      }
    });
    const header = element('header', 'jp-faas-Header', 'Serverless');
    this._status = element('div', 'jp-faas-Status');
    this._strip = element('div', 'jp-faas-Strip');
    this._table = element('table', 'jp-faas-Functions');
    this._details = element('div', 'jp-faas-Details');
    this.node.append(header, this._status, this._strip, this._table, this._details);
    this._status.textContent = 'Loading…';
    if (options.poll) {
      this._poll = new Poll({
        factory: () => this.refresh(),
        frequency: { interval: 2000, backoff: true, max: 30 * 1000 },
        // Nothing is fetched while the panel is closed or the browser tab hidden.
        standby: () => this.isHidden || 'when-hidden',
        name: 'jupyter-faas:sidebar'
      });
    }
  }

  /** The function whose details are shown. */
  get selected(): string | null {
    return this._selected;
  }

  set selected(name: string | null) {
    if (name !== this._selected) {
      // Until its own details arrive, nothing of the previous function (its Undeploy button above all) stays.
      this._details.replaceChildren(...(name ? [element('p', 'jp-faas-Loading', `Loading ${name}…`)] : []));
    }
    this._selected = name;
    this._onSelect(name);
    // A failure is drawn in the panel by refresh itself.
    this.refresh().catch(() => undefined);
  }

  /** Fetch everything the panel shows and draw it; rejects (so polling backs off) when the API fails. */
  async refresh(): Promise<void> {
    // Only the newest refresh draws: an older one (a poll begun before a click or an undeploy) may end later.
    const generation = ++this._generation;
    try {
      const [functions, platform, letters, triggers] = await Promise.all([
        this.client.functions(),
        this.client.platform(),
        this.client.deadLetters(),
        this.client.triggers()
      ]);
      if (this._selected && !functions.some(f => f.name === this._selected)) {
        this._selected = null;
      }
      const invocations = this._selected ? await this.client.invocations(this._selected) : [];
      const tree = invocations.length > 0 ? await this._callTree(invocations[0].id) : null;
      if (generation === this._generation) {
        this._render(functions, platform, letters, invocations, triggers, tree);
      }
    } catch (error) {
      if (generation === this._generation) {
        this._renderError(error);
      }
      throw error;
    }
  }

  /** The call tree of an invocation that made calls; null when it made none, or is no longer kept. */
  private async _callTree(id: string): Promise<ICallTree | null> {
    try {
      const detail = await this.client.invocation(id);
      return detail.children && detail.children.length > 0 && detail.call_tree ? detail.call_tree : null;
    } catch {
      return null;
    }
  }

  dispose(): void {
    this._poll?.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll?.refresh();
  }

  private _renderError(error: unknown): void {
    this.addClass('jp-faas-mod-unavailable');
    this._strip.replaceChildren();
    this._table.replaceChildren();
    this._details.replaceChildren();
    const message =
      error instanceof FaasUnavailableError || error instanceof FaasApiError
        ? error.message
        : `Could not read the serverless functions: ${error}`;
    this._status.textContent = message;
  }

  private _render(
    functions: IFunction[],
    platform: IPlatform,
    letters: IDeadLetter[],
    invocations: IInvocation[],
    triggers: ITrigger[],
    tree: ICallTree | null = null
  ) {
    this.removeClass('jp-faas-mod-unavailable');
    this._status.textContent =
      functions.length === 0
        ? 'No function is deployed. Run a cell with %%faas NAME --http, or use the command “Deploy cell as HTTP endpoint”.'
        : '';
    this._renderStrip(platform);
    this._renderTable(functions);
    this._renderDetails(functions.find(f => f.name === this._selected), letters, invocations, triggers, tree);
  }

  private _renderStrip(platform: IPlatform): void {
    const workers = element('span', 'jp-faas-Workers', `${platform.workers} / ${platform.maximum} workers`);
    const countdown = element('span', 'jp-faas-Countdown');
    if (platform.seconds_to_scale_to_zero !== null) {
      countdown.textContent = `scales to zero in ${Math.ceil(platform.seconds_to_scale_to_zero)} s`;
    } else {
      countdown.textContent = platform.workers === 0 ? 'scaled to zero' : 'busy';
    }
    const width = 200;
    const height = 32;
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('class', 'jp-faas-Chart');
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    const now = this._now();
    // Since the platform started, up to CHART_SECONDS: a young platform's history fills the chart.
    const first = platform.scale_events.length ? platform.scale_events[0].time : now;
    const span = Math.min(CHART_SECONDS, Math.max(60, now - first));
    line.setAttribute('points', chartPoints(platform.scale_events, platform.maximum, now, width, height, span));
    svg.appendChild(line);
    const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
    title.textContent = 'Workers connected, from 0 to the maximum';
    svg.appendChild(title);
    const chart = element('div', 'jp-faas-ChartBox');
    const label = span >= 120 ? `${Math.round(span / 60)} min` : `${Math.round(span)} s`;
    chart.append(svg, element('span', 'jp-faas-ChartLabel', `workers over the last ${label}`));
    const parts: Node[] = [workers, countdown, chart];
    if (platform.dashboard_link) {
      const link = element('a', 'jp-faas-Dashboard', 'Dask dashboard');
      link.href = platform.dashboard_link;
      link.target = '_blank';
      link.rel = 'noopener';
      parts.push(link);
    }
    this._strip.replaceChildren(...parts);
  }

  private _renderTable(functions: IFunction[]): void {
    // Narrow enough for the sidebar: each function is a name line, a line of figures in columns, and
    // its endpoint with a copy button.
    const columns = ['Calls', 'Errors', 'p50 ms', 'p95 ms'];
    const head = element('thead');
    const headRow = element('tr');
    for (const label of columns) {
      headRow.appendChild(element('th', undefined, label));
    }
    head.appendChild(headRow);
    const now = this._now();
    const bodies: HTMLTableSectionElement[] = [];
    for (const fn of functions) {
      const body = element('tbody', 'jp-faas-Row');
      body.dataset.name = fn.name;
      if (fn.name === this._selected) {
        body.classList.add('jp-mod-selected');
      }
      const nameRow = element('tr', 'jp-faas-NameRow');
      const name = element('td', 'jp-faas-Name');
      name.colSpan = columns.length;
      name.append(
        element('span', 'jp-faas-FunctionName', fn.name),
        element('span', 'jp-faas-Version', fn.version.slice(0, 8)),
        element('span', 'jp-faas-Cost', formatCost(fn.stats.cost_usd)),
        element('span', 'jp-faas-Last', formatAgo(fn.last_invoked, now))
      );
      nameRow.appendChild(name);
      const figures = element('tr', 'jp-faas-Figures');
      figures.append(
        element('td', 'jp-faas-Invocations', String(fn.stats.invocations)),
        element('td', 'jp-faas-Errors', String(fn.stats.errors)),
        element('td', undefined, formatNumber(fn.stats.p50_ms)),
        element('td', undefined, formatNumber(fn.stats.p95_ms))
      );
      const endpointRow = element('tr', 'jp-faas-EndpointRow');
      const endpoint = element('td', 'jp-faas-Endpoint');
      endpoint.colSpan = columns.length;
      const url = element('code', undefined, fn.url);
      url.title = fn.url;
      const copy = element('button', 'jp-faas-Copy jp-Button jp-mod-minimal', 'Copy');
      copy.title = 'Copy the endpoint URL';
      copy.addEventListener('click', event => {
        event.stopPropagation();
        Clipboard.copyToSystem(fn.url);
      });
      const line = element('div', 'jp-faas-EndpointLine');
      line.append(url, copy);
      endpoint.appendChild(line);
      endpointRow.appendChild(endpoint);
      body.append(nameRow, figures, endpointRow);
      body.addEventListener('click', () => {
        this.selected = this._selected === fn.name ? null : fn.name;
      });
      bodies.push(body);
    }
    this._table.replaceChildren(head, ...bodies);
  }

  private _renderDetails(
    fn: IFunction | undefined,
    letters: IDeadLetter[],
    invocations: IInvocation[],
    triggers: ITrigger[],
    tree: ICallTree | null = null
  ): void {
    if (!fn) {
      this._details.replaceChildren();
      return;
    }
    const parts: Node[] = [element('h3', undefined, fn.signature)];
    const limits = fn.limits;
    parts.push(
      element(
        'p',
        'jp-faas-Limits',
        `timeout ${limits.timeout_s} s · memory ${Math.round(limits.memory_bytes / 1e6)} MB · retries ` +
          `${limits.retries} · concurrency ${limits.concurrency ?? 'unlimited'} · version ${fn.version.slice(0, 12)}`
      )
    );
    const example: Record<string, unknown> = {};
    for (const parameter of fn.parameters) {
      if (parameter.required && parameter.kind !== 'var_positional' && parameter.kind !== 'var_keyword') {
        example[parameter.name] = null;
      }
    }
    parts.push(
      element(
        'pre',
        'jp-faas-Curl',
        `curl -X POST ${fn.url} \\\n  -H 'Authorization: token YOUR_TOKEN' \\\n` +
          `  -H 'Content-Type: application/json' -d '${JSON.stringify(example)}'`
      )
    );
    const own = triggers.filter(trigger => trigger.function === fn.name);
    if (own.length > 0) {
      parts.push(element('h4', undefined, 'Triggers'));
      const list = element('ul', 'jp-faas-Triggers');
      for (const trigger of own) {
        const files =
          trigger.kind === 'file' ? ` · ${trigger.files_done ?? 0} files done, ${trigger.files_failed ?? 0} failed` : '';
        list.appendChild(element('li', undefined, `${trigger.kind}: ${trigger.description}${files}`));
      }
      parts.push(list);
    }
    parts.push(element('h4', undefined, 'Recent invocations'));
    if (invocations.length === 0) {
      parts.push(element('p', 'jp-faas-Empty', 'None yet.'));
    } else {
      const list = element('ul', 'jp-faas-Invocations');
      for (const invocation of invocations) {
        const cold = invocation.cold_start ? ' · cold' : '';
        const error = invocation.error ? ` · ${invocation.error}: ${invocation.message ?? ''}` : '';
        list.appendChild(
          element(
            'li',
            `jp-faas-Invocation jp-faas-mod-${invocation.status}`,
            `${invocation.status} · ${invocation.trigger ?? 'call'} · ${formatMs(invocation.latency_ms)}${cold}${error}`
          )
        );
        if (invocation.output) {
          const item = element('li', 'jp-faas-InvocationOutput');
          item.appendChild(element('pre', 'jp-faas-Output', outputTail(invocation.output)));
          list.appendChild(item);
        }
      }
      parts.push(list);
    }
    if (tree) {
      parts.push(...callTreeNodes(tree));
    }
    const ownLetters = letters.filter(letter => letter.function === fn.name);
    parts.push(element('h4', undefined, `Dead letters (${ownLetters.length})`));
    if (ownLetters.length > 0) {
      const list = element('ul', 'jp-faas-DeadLetters');
      for (const letter of ownLetters) {
        list.appendChild(
          element('li', undefined, `${letter.id}: ${letter.error.type}: ${letter.error.message} · input ${JSON.stringify(letter.input)}`)
        );
      }
      parts.push(list);
    }
    const undeploy = element('button', 'jp-faas-Undeploy jp-Button jp-mod-styled jp-mod-warn', 'Undeploy');
    undeploy.addEventListener('click', () => void this.undeploy(fn.name));
    parts.push(undeploy);
    this._details.replaceChildren(...parts);
  }

  /** Undeploy after confirmation; true if it was undeployed. */
  async undeploy(name: string): Promise<boolean> {
    if (!(await this._confirm(name))) {
      return false;
    }
    await this.client.undeploy(name);
    if (this._selected === name) {
      this._selected = null;
    }
    await this.refresh();
    return true;
  }

  private _confirm: (name: string) => Promise<boolean>;
  private _onSelect: (name: string | null) => void;
  private _now: () => number;
  private _poll: Poll | null = null;
  private _generation = 0;
  private _selected: string | null = null;
  private _status: HTMLDivElement;
  private _strip: HTMLDivElement;
  private _table: HTMLTableElement;
  private _details: HTMLDivElement;
}
