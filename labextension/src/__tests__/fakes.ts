// Canned answers of the server extension, served by a fake fetch given to ServerConnection.makeSettings.
import { ServerConnection } from '@jupyterlab/services';

import { IDeadLetter, IFunction, IInvocation, IPlatform, ITrigger } from '../client';

export const NOW = 1_800_000_000;

export const square: IFunction = {
  name: 'square',
  version: '688996ef0a87c0ffee',
  deployed_at: NOW - 100,
  signature: 'square(x: int)',
  parameters: [{ name: 'x', kind: 'positional_or_keyword', annotation: 'int', required: true }],
  limits: { timeout_s: 60, memory_bytes: 256_000_000, retries: 0, concurrency: null },
  url: 'http://localhost:8888/faas/functions/square',
  stats: {
    invocations: 3,
    errors: 1,
    cold_starts: 1,
    gb_seconds: 0.001,
    cost_usd: 6.1e-7,
    p50_ms: 0.61,
    p95_ms: 2274,
    p99_ms: 2274
  },
  last_invoked: NOW - 2
};

export const platform: IPlatform = {
  workers: 1,
  maximum: 2,
  idle_timeout_s: 60,
  seconds_to_scale_to_zero: 41.2,
  scale_events: [
    { time: NOW - 300, workers: 0 },
    { time: NOW - 30, workers: 1 }
  ],
  dashboard_link: 'http://127.0.0.1:8787/status'
};

export const invocations: IInvocation[] = [
  {
    id: 'a-3',
    status: 'error',
    submitted: NOW - 2,
    latency_ms: 1.5,
    cold_start: false,
    worker: 'tcp://127.0.0.1:1',
    attempts: 1,
    error: 'ValueError',
    message: 'bad x',
    trigger: 'http'
  },
  {
    id: 'a-1',
    status: 'ok',
    submitted: NOW - 30,
    latency_ms: 2274,
    cold_start: true,
    worker: 'tcp://127.0.0.1:1',
    attempts: 1,
    error: null,
    message: null,
    trigger: 'file',
    output: 'line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\n'
  }
];

export const triggers: ITrigger[] = [
  {
    id: 'square.file',
    kind: 'file',
    function: 'square',
    description: "files matching '*.txt' in /data/in",
    every: null,
    cron: null,
    directory: '/data/in',
    pattern: '*.txt',
    files_done: 4,
    files_failed: 1
  },
  {
    id: 'other.schedule',
    kind: 'schedule',
    function: 'other',
    description: 'every 30 s',
    every: 30,
    cron: null,
    directory: null,
    pattern: '*'
  }
];

export const letters: IDeadLetter[] = [
  {
    id: 'a-3',
    function: 'square',
    version: '688996ef',
    failed_at: NOW - 2,
    input: { x: -1 },
    error: { type: 'ValueError', message: 'bad x' }
  },
  {
    id: 'b-1',
    function: 'other',
    version: 'ffff',
    failed_at: NOW - 5,
    input: {},
    error: { type: 'KeyError', message: 'k' }
  }
];

export interface ISeen {
  method: string;
  url: string;
}

/** A fake fetch answering each faas/api path from `routes` (status 200 with JSON), else 404.
 *
 * A route may be a function, called at request time; what it returns (or the promise's value) is the body.
 */
export function fakeServer(
  routes: Record<string, unknown>,
  seen: ISeen[] = [],
  status: Record<string, number> = {}
): ServerConnection.ISettings {
  const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    const url = new URL(request.url);
    // ServerConnection adds a timestamp to GET requests against caching; it is not part of the route.
    for (const name of Array.from(url.searchParams.keys())) {
      if (/^\d+$/.test(name)) {
        url.searchParams.delete(name);
      }
    }
    const key = `${request.method} ${url.pathname}${url.search}`;
    seen.push({ method: request.method, url: url.href });
    if (key in routes) {
      const route = routes[key];
      const body = typeof route === 'function' ? await route() : route;
      return new Response(typeof body === 'string' ? body : JSON.stringify(body), {
        status: status[key] ?? 200,
        headers: { 'Content-Type': 'application/json' }
      });
    }
    return new Response('<html>Not Found</html>', { status: 404 });
  };
  return ServerConnection.makeSettings({ baseUrl: 'http://localhost:8888/', fetch });
}

export function standardRoutes(): Record<string, unknown> {
  return {
    'GET /faas/api/functions': { functions: [square] },
    'GET /faas/api/platform': platform,
    'GET /faas/api/dead-letters': { dead_letters: letters },
    'GET /faas/api/triggers': { triggers },
    'GET /faas/api/functions/square/invocations?limit=20': { invocations },
    'DELETE /faas/api/functions/square': ''
  };
}
