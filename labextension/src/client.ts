// The REST client of the jupyter-faas server extension: one method per endpoint of faas/api.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IStats {
  invocations: number;
  errors: number;
  cold_starts: number;
  gb_seconds: number;
  cost_usd: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
}

export interface IParameter {
  name: string;
  kind: string;
  annotation: string | null;
  required: boolean;
}

export interface ILimits {
  timeout_s: number;
  memory_bytes: number;
  retries: number;
  concurrency: number | null;
}

export interface IFunction {
  name: string;
  version: string;
  deployed_at: number;
  signature: string;
  parameters: IParameter[];
  limits: ILimits;
  url: string;
  stats: IStats;
  last_invoked: number | null;
}

export interface IScaleEvent {
  time: number;
  workers: number;
}

export interface IPlatform {
  workers: number;
  maximum: number;
  idle_timeout_s: number;
  seconds_to_scale_to_zero: number | null;
  scale_events: IScaleEvent[];
  dashboard_link: string;
}

export interface IInvocation {
  id: string;
  status: string;
  submitted: number;
  latency_ms: number;
  cold_start: boolean;
  worker: string | null;
  attempts: number;
  error: string | null;
  message: string | null;
  trigger: string | null;
  /** What it printed or logged; '' for nothing, null once the server no longer keeps it in memory. */
  output?: string | null;
  /** The invocation that made this call; null for a call made from outside. */
  parent?: string | null;
}

/** One call of a call tree, placed in time against the top of the tree. */
export interface ICallRow {
  id: string;
  function: string;
  parent: string | null;
  depth: number;
  status: string;
  offset_ms: number;
  duration_ms: number | null;
  cost_usd: number;
}

export interface ICallTree {
  calls: ICallRow[];
  tree_cost_usd: number;
}

export interface IInvocationDetail {
  id: string;
  children?: IInvocation[];
  call_tree?: ICallTree;
}

export interface ITrigger {
  id: string;
  kind: 'schedule' | 'file';
  function: string;
  description: string;
  every: number | null;
  cron: string | null;
  directory: string | null;
  pattern: string;
  next_due?: number | null;
  fired?: number;
  failed?: number;
  files_done?: number;
  files_failed?: number;
}

export interface IDeadLetter {
  id: string;
  function: string;
  version: string;
  failed_at: number;
  input: unknown;
  error: { type: string; message: string };
}

/**
 * The server extension cannot answer: it is not installed or not enabled on this server, it failed to
 * start, or the server itself cannot be reached.
 */
export class FaasUnavailableError extends Error {}

/** An answer of the extension's own: a status, and the {"error": {type, message}} it sent. */
export class FaasApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string
  ) {
    super(message);
  }
}

export class FaasClient {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  async health(): Promise<{ status: string }> {
    return this.request('api/health');
  }

  async functions(): Promise<IFunction[]> {
    return (await this.request<{ functions: IFunction[] }>('api/functions')).functions;
  }

  async platform(): Promise<IPlatform> {
    return this.request('api/platform');
  }

  async invocations(name: string, limit = 20): Promise<IInvocation[]> {
    const path = `api/functions/${encodeURIComponent(name)}/invocations?limit=${limit}`;
    return (await this.request<{ invocations: IInvocation[] }>(path)).invocations;
  }

  async invocation(id: string): Promise<IInvocationDetail> {
    return this.request(`api/invocations/${encodeURIComponent(id)}`);
  }

  /** Every dead letter, oldest first: the list comes in pages, each naming the cursor of the next. */
  async deadLetters(): Promise<IDeadLetter[]> {
    const letters: IDeadLetter[] = [];
    let path = 'api/dead-letters';
    for (;;) {
      const page = await this.request<{ dead_letters: IDeadLetter[]; next?: string | null }>(path);
      letters.push(...page.dead_letters);
      if (!page.next) {
        return letters;
      }
      path = `api/dead-letters?limit=1000&after=${encodeURIComponent(page.next)}`;
    }
  }

  async triggers(): Promise<ITrigger[]> {
    return (await this.request<{ triggers: ITrigger[] }>('api/triggers')).triggers;
  }

  async undeploy(name: string): Promise<void> {
    await this.request(`api/functions/${encodeURIComponent(name)}`, { method: 'DELETE' });
  }

  private async request<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'faas', path);
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new FaasUnavailableError(`The Jupyter server cannot be reached: ${error}`);
    }
    const text = await response.text();
    let body: any = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (response.ok) {
      return body as T;
    }
    const error = body && typeof body === 'object' ? body.error : undefined;
    if (!error || typeof error.type !== 'string') {
      // Not an answer of ours: the route does not exist, or the extension broke before it could answer.
      if (response.status === 404) {
        throw new FaasUnavailableError(
          'The jupyter-faas server extension is not enabled on this Jupyter server. ' +
            'Install jupyter-faas in the environment that runs the server, then restart it ' +
            '(jupyter server extension list should show jupyter_faas enabled).'
        );
      }
      throw new FaasUnavailableError(
        `The jupyter-faas server extension failed (HTTP ${response.status}); see the server's log.`
      );
    }
    throw new FaasApiError(response.status, error.type, error.message ?? '');
  }
}
