import { FaasClient } from '../client';
import { chartPoints, formatAgo, formatCost, formatMs, ServerlessPanel } from '../panel';
import { fakeServer, ISeen, NOW, square, standardRoutes } from './fakes';

function text(panel: ServerlessPanel, selector: string): string[] {
  return Array.from(panel.node.querySelectorAll(selector)).map(node => (node.textContent ?? '').trim());
}

function makePanel(routes = standardRoutes(), seen: ISeen[] = [], confirm = async () => true) {
  return new ServerlessPanel(new FaasClient(fakeServer(routes, seen)), { now: () => NOW, confirm });
}

describe('ServerlessPanel', () => {
  it('draws the platform strip and a row per function', async () => {
    const panel = makePanel();
    await panel.refresh();
    expect(text(panel, '.jp-faas-Workers')).toEqual(['1 / 2 workers']);
    expect(text(panel, '.jp-faas-Countdown')).toEqual(['scales to zero in 42 s']);
    expect(panel.node.querySelector('.jp-faas-Dashboard')?.getAttribute('href')).toBe('http://127.0.0.1:8787/status');
    expect(panel.node.querySelector('.jp-faas-Chart polyline')?.getAttribute('points')).toBeTruthy();
    const row = panel.node.querySelector('.jp-faas-Row[data-name="square"]')!;
    expect(row).not.toBeNull();
    expect(text(panel, '.jp-faas-FunctionName')).toEqual(['square']);
    expect(text(panel, '.jp-faas-Version')).toEqual(['688996ef']);
    expect(text(panel, '.jp-faas-Invocations')).toEqual(['3']);
    expect(text(panel, '.jp-faas-Errors')).toEqual(['1']);
    expect(text(panel, '.jp-faas-Cost')).toEqual(['$0.0000006']);
    expect(text(panel, '.jp-faas-Last')).toEqual(['2 s ago']);
    expect(text(panel, '.jp-faas-Endpoint code')).toEqual(['http://localhost:8888/faas/functions/square']);
    expect(text(panel, '.jp-faas-Details')).toEqual(['']);
    expect(text(panel, '.jp-faas-Status')).toEqual(['']);
  });

  it('shows the selected function: signature, limits, curl, invocations and its own dead letters', async () => {
    const seen: ISeen[] = [];
    const panel = makePanel(standardRoutes(), seen);
    await panel.refresh();
    panel.selected = 'square';
    await panel.refresh();
    expect(text(panel, '.jp-faas-Details h3')).toEqual(['square(x: int)']);
    expect(text(panel, '.jp-faas-Limits')[0]).toContain('timeout 60 s · memory 256 MB · retries 0');
    expect(text(panel, '.jp-faas-Curl')[0]).toContain("curl -X POST http://localhost:8888/faas/functions/square");
    expect(text(panel, '.jp-faas-Curl')[0]).toContain('{"x":null}');
    expect(text(panel, '.jp-faas-Invocation')).toEqual([
      'error · http · 1.50 ms · ValueError: bad x',
      'ok · file · 2274 ms · cold'
    ]);
    expect(text(panel, '.jp-faas-Output')).toEqual(['… 1 more line above\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7']);
    expect(text(panel, '.jp-faas-Triggers li')).toEqual([
      "file: files matching '*.txt' in /data/in · 4 files done, 1 failed"
    ]);
    expect(text(panel, '.jp-faas-DeadLetters li')).toEqual(['a-3: ValueError: bad x · input {"x":-1}']);
    expect(panel.node.querySelector('.jp-faas-Row.jp-mod-selected')).not.toBeNull();
    expect(seen.some(s => s.url.endsWith('/faas/api/functions/square/invocations?limit=20'))).toBe(true);
  });

  it('draws the newest invocation\'s call tree as a waterfall with the cost of the whole tree', async () => {
    const routes = standardRoutes();
    routes['GET /faas/api/invocations/a-3'] = {
      id: 'a-3',
      children: [{ id: 'c-1', function: 'inner' }],
      call_tree: {
        calls: [
          { id: 'a-3', function: 'square', parent: null, depth: 0, status: 'ok', offset_ms: 0, duration_ms: 40, cost_usd: 2e-7 },
          { id: 'c-1', function: 'inner', parent: 'a-3', depth: 1, status: 'ok', offset_ms: 10, duration_ms: 20, cost_usd: 2e-7 },
          { id: 'c-2', function: 'inner', parent: 'a-3', depth: 1, status: 'error', offset_ms: 30, duration_ms: 10, cost_usd: 2e-7 }
        ],
        tree_cost_usd: 6e-7
      }
    };
    const panel = makePanel(routes);
    panel.selected = 'square';
    await panel.refresh();
    expect(text(panel, '.jp-faas-Details h4')).toContain('Calls of the newest invocation (2)');
    expect(text(panel, '.jp-faas-CallName')).toEqual(['square', 'inner', 'inner']);
    expect(text(panel, '.jp-faas-CallTimes')).toEqual([
      '+0.00 ms · 40 ms · ok',
      '+10 ms · 20 ms · ok',
      '+30 ms · 10 ms · error'
    ]);
    const bars = Array.from(panel.node.querySelectorAll<HTMLElement>('.jp-faas-CallBar'));
    expect(bars.map(bar => [bar.style.left, bar.style.width])).toEqual([
      ['0%', '100%'],
      ['25%', '50%'],
      ['75%', '25%']
    ]);
    expect(panel.node.querySelectorAll('.jp-faas-Call.jp-faas-mod-error')).toHaveLength(1);
    expect(text(panel, '.jp-faas-TreeCost')).toEqual(['whole tree $0.0000006']);
  });

  it('shows no call tree for an invocation that made no calls', async () => {
    const routes = standardRoutes();
    routes['GET /faas/api/invocations/a-3'] = { id: 'a-3', children: [], call_tree: { calls: [], tree_cost_usd: 0 } };
    const panel = makePanel(routes);
    panel.selected = 'square';
    await panel.refresh();
    expect(panel.node.querySelectorAll('.jp-faas-Call')).toHaveLength(0);
  });

  it('tells of each selection, and starts from the one kept before a reload', async () => {
    const selections: (string | null)[] = [];
    const panel = new ServerlessPanel(new FaasClient(fakeServer(standardRoutes())), {
      now: () => NOW,
      onSelect: name => selections.push(name),
      initialSelection: Promise.resolve('square')
    });
    await Promise.resolve();
    expect(panel.selected).toBe('square');
    await panel.refresh();
    expect(text(panel, '.jp-faas-Details h3')).toEqual(['square(x: int)']);
    panel.selected = null;
    expect(selections).toEqual(['square', null]);
  });

  it('draws only the newest refresh, even when an older one ends after it', async () => {
    const routes = standardRoutes();
    let release: () => void = () => undefined;
    const held = new Promise<void>(resolve => (release = resolve));
    let calls = 0;
    // The first listing (a poll begun before an undeploy) still has square and answers last.
    routes['GET /faas/api/functions'] = () => (++calls === 1 ? held.then(() => ({ functions: [square] })) : { functions: [] });
    const panel = makePanel(routes);
    const older = panel.refresh();
    while (calls < 1) {
      await new Promise(resolve => setTimeout(resolve, 1));
    }
    await panel.refresh();
    expect(panel.node.querySelectorAll('.jp-faas-Row')).toHaveLength(0);
    release();
    await older;
    expect(panel.node.querySelectorAll('.jp-faas-Row')).toHaveLength(0);
  });

  it('drops the previous function’s details, and its Undeploy button, as soon as another is selected', async () => {
    const panel = makePanel();
    panel.selected = 'square';
    await panel.refresh();
    expect(panel.node.querySelectorAll('.jp-faas-Undeploy')).toHaveLength(1);
    panel.selected = 'other';
    expect(text(panel, '.jp-faas-Details')).toEqual(['Loading other…']);
    expect(panel.node.querySelectorAll('.jp-faas-Undeploy')).toHaveLength(0);
    panel.selected = null;
    expect(text(panel, '.jp-faas-Details')).toEqual(['']);
  });

  it('undeploys only after confirmation', async () => {
    const seen: ISeen[] = [];
    let answer = false;
    const panel = makePanel(standardRoutes(), seen, async () => answer);
    await panel.refresh();
    expect(await panel.undeploy('square')).toBe(false);
    expect(seen.filter(s => s.method === 'DELETE')).toHaveLength(0);
    answer = true;
    expect(await panel.undeploy('square')).toBe(true);
    expect(seen.filter(s => s.method === 'DELETE').map(s => s.url)).toEqual([
      'http://localhost:8888/faas/api/functions/square'
    ]);
  });

  it('says so plainly, with no table, when the server extension is missing', async () => {
    const panel = makePanel({});
    await expect(panel.refresh()).rejects.toThrow('not enabled');
    expect(text(panel, '.jp-faas-Status')[0]).toContain('The jupyter-faas server extension is not enabled');
    expect(panel.node.querySelectorAll('.jp-faas-Row')).toHaveLength(0);
    expect(panel.hasClass('jp-faas-mod-unavailable')).toBe(true);
  });

  it('invites a first deployment when nothing is deployed', async () => {
    const routes = { ...standardRoutes(), 'GET /faas/api/functions': { functions: [] } };
    const panel = makePanel(routes);
    await panel.refresh();
    expect(text(panel, '.jp-faas-Status')[0]).toContain('%%faas NAME --http');
  });
});

describe('formatting', () => {
  it('formats latency, cost and time ago', () => {
    expect(formatMs(null)).toBe('–');
    expect(formatMs(0.613)).toBe('0.61 ms');
    expect(formatMs(2274.4)).toBe('2274 ms');
    expect(formatCost(0)).toBe('$0');
    expect(formatCost(6.1e-7)).toBe('$0.0000006');
    expect(formatCost(0.00123)).toBe('$0.0012');
    expect(formatCost(1.5)).toBe('$1.50');
    expect(formatAgo(null, NOW)).toBe('never');
    expect(formatAgo(NOW - 90, NOW)).toBe('2 min ago');
  });

  it('draws the worker count as steps, clipped to the span', () => {
    const events = [
      { time: NOW - 1000, workers: 2 },
      { time: NOW - 50, workers: 0 }
    ];
    expect(chartPoints(events, 2, NOW, 100, 10, 100)).toBe('0,1.0 50.0,1.0 50.0,9.0 100,9.0');
  });
});
