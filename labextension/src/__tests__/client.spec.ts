import { FaasApiError, FaasClient, FaasUnavailableError } from '../client';
import { fakeServer, ISeen, invocations, letters, platform, square, standardRoutes, triggers } from './fakes';

describe('FaasClient', () => {
  it('reads functions, the platform, invocations and dead letters', async () => {
    const seen: ISeen[] = [];
    const client = new FaasClient(fakeServer(standardRoutes(), seen));
    expect(await client.functions()).toEqual([square]);
    expect(await client.platform()).toEqual(platform);
    expect(await client.invocations('square')).toEqual(invocations);
    expect(await client.deadLetters()).toEqual(letters);
    expect(await client.triggers()).toEqual(triggers);
    expect(seen.map(s => s.url)).toEqual([
      'http://localhost:8888/faas/api/functions',
      'http://localhost:8888/faas/api/platform',
      'http://localhost:8888/faas/api/functions/square/invocations?limit=20',
      'http://localhost:8888/faas/api/dead-letters',
      'http://localhost:8888/faas/api/triggers'
    ]);
  });

  it('reads every page of the dead letters', async () => {
    const [first] = letters;
    const second = { ...first, id: 'second-letter' };
    const routes = {
      'GET /faas/api/dead-letters': { dead_letters: [first], next: '1700000000.0/a-3' },
      'GET /faas/api/dead-letters?limit=1000&after=1700000000.0%2Fa-3': { dead_letters: [second], next: null }
    };
    const seen: ISeen[] = [];
    const client = new FaasClient(fakeServer(routes, seen));
    expect(await client.deadLetters()).toEqual([first, second]);
    expect(seen.length).toEqual(2);
  });

  it('undeploys with DELETE', async () => {
    const seen: ISeen[] = [];
    const client = new FaasClient(fakeServer(standardRoutes(), seen));
    await client.undeploy('square');
    expect(seen).toEqual([{ method: 'DELETE', url: 'http://localhost:8888/faas/api/functions/square' }]);
  });

  it('turns the extension own errors into FaasApiError', async () => {
    const routes = { 'DELETE /faas/api/functions/gone': { error: { type: 'NotFound', message: "no function named 'gone'" } } };
    const client = new FaasClient(fakeServer(routes, [], { 'DELETE /faas/api/functions/gone': 404 }));
    const error = await client.undeploy('gone').catch(e => e);
    expect(error).toBeInstanceOf(FaasApiError);
    expect(error.status).toBe(404);
    expect(error.type).toBe('NotFound');
  });

  it('says the server extension is missing when its routes do not exist', async () => {
    const client = new FaasClient(fakeServer({}));
    const error = await client.functions().catch(e => e);
    expect(error).toBeInstanceOf(FaasUnavailableError);
    expect(error.message).toContain('jupyter-faas server extension is not enabled');
  });

  it('says the server extension failed on a 500 that is not its own answer', async () => {
    const routes = { 'GET /faas/api/platform': 'Internal Server Error' };
    const client = new FaasClient(fakeServer(routes, [], { 'GET /faas/api/platform': 500 }));
    const error = await client.platform().catch(e => e);
    expect(error).toBeInstanceOf(FaasUnavailableError);
    expect(error.message).toContain('failed (HTTP 500)');
  });
});
