import { expect, galata, test } from '@jupyterlab/galata';
import * as path from 'path';

const SIDEBAR = 'jupyter-faas-sidebar';
const SCREENSHOTS = path.join(__dirname, '..', 'screenshots');

test.describe('The Serverless sidebar', () => {
  test('shows a deployed cell, its invocations, and undeploys it', async ({ page, request }) => {
    await page.notebook.createNew('faas.ipynb');
    await page.notebook.setCell(0, 'code', '%load_ext jupyter_faas');
    await page.notebook.addCell('code', '%%faas square x --http\nx * x');
    await page.notebook.run();
    await expect(page.locator('.jp-OutputArea-output').filter({ hasText: 'square is deployed at' })).toBeVisible({
      timeout: 60 * 1000
    });

    await page.sidebar.openTab(SIDEBAR);
    const row = page.locator(`#${SIDEBAR} .jp-faas-Row[data-name="square"]`);
    await expect(row).toBeVisible({ timeout: 30 * 1000 });
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Workers`)).toContainText('workers');

    // Call the endpoint over real HTTP; the panel's next poll shows the invocations.
    for (const x of [3, 4, 5]) {
      const response = await request.post('/faas/functions/square', { data: { x } });
      expect(response.status()).toBe(200);
      expect(await response.json()).toBe(x * x);
    }
    await expect(row.locator('.jp-faas-Invocations')).toHaveText('3', { timeout: 30 * 1000 });

    await row.click();
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Details h3`)).toHaveText('square(x)');
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Details .jp-faas-Invocation`).first()).toContainText('ok');
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Chart polyline`)).toHaveCount(1);
    await page.locator(`#${SIDEBAR}`).screenshot({ path: path.join(SCREENSHOTS, 'sidebar.png') });

    // A deployed cell that calls square: its calls show as a waterfall under the newest invocation.
    await page.notebook.addCell('code', '%%faas twice x --http\nsquare(x) * 2');
    await page.notebook.runCell(2);
    await expect(page.locator('.jp-OutputArea-output').filter({ hasText: 'twice is deployed at' })).toBeVisible({
      timeout: 60 * 1000
    });
    const called = await request.post('/faas/functions/twice', { data: { x: 6 } });
    expect(called.status()).toBe(200);
    expect(await called.json()).toBe(72);
    await page.locator(`#${SIDEBAR} .jp-faas-Row[data-name="twice"]`).click();
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Call`)).toHaveCount(2, { timeout: 30 * 1000 });
    await expect(page.locator(`#${SIDEBAR} .jp-faas-CallName`)).toHaveText(['twice', 'square']);
    await expect(page.locator(`#${SIDEBAR} .jp-faas-TreeCost`)).toContainText('whole tree $');
    await page.locator(`#${SIDEBAR} .jp-faas-Row[data-name="square"]`).click();
    await page.screenshot({ path: path.join(SCREENSHOTS, 'lab.png') });

    // Undeploy asks first; cancelling keeps it, confirming removes it. The button is square's once its details show.
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Details h3`)).toHaveText('square(x)', { timeout: 30 * 1000 });
    await page.locator(`#${SIDEBAR} .jp-faas-Undeploy`).click();
    await expect(page.locator('.jp-Dialog-header')).toHaveText('Undeploy square?');
    await page.locator('.jp-Dialog .jp-mod-reject').click();
    await expect(row).toBeVisible();
    await page.locator(`#${SIDEBAR} .jp-faas-Undeploy`).click();
    await expect(page.locator('.jp-Dialog-header')).toHaveText('Undeploy square?');
    await page.locator('.jp-Dialog .jp-mod-accept').click();
    await expect(row).toHaveCount(0, { timeout: 30 * 1000 });
    const gone = await request.post('/faas/functions/square', { data: { x: 3 } });
    expect(gone.status()).toBe(404);
  });

  test('"Make cell a serverless function" inserts the magic', async ({ page }) => {
    await page.notebook.createNew('make.ipynb');
    await page.notebook.setCell(0, 'code', 'x * 2');
    await page.notebook.selectCells(0);
    await page.evaluate(async () => {
      void window.jupyterapp.commands.execute('jupyter-faas:make-function');
    });
    const input = page.locator('.jp-Dialog input');
    await input.fill('double');
    await page.locator('.jp-Dialog .jp-mod-accept').click();
    await expect.poll(async () => page.notebook.getCellTextInput(0)).toBe('%%faas double\nx * 2');
  });

  test('"Deploy cell as HTTP endpoint" deploys and runs the cell', async ({ page, request }) => {
    await page.notebook.createNew('deploy.ipynb');
    await page.notebook.setCell(0, 'code', '%load_ext jupyter_faas');
    await page.notebook.addCell('code', '21 * 2');
    await page.notebook.runCell(0);
    await page.notebook.selectCells(1);
    await page.evaluate(async () => {
      void window.jupyterapp.commands.execute('jupyter-faas:deploy-cell');
    });
    await page.locator('.jp-Dialog input').fill('answer');
    await page.locator('.jp-Dialog .jp-mod-accept').click();
    await expect.poll(async () => page.notebook.getCellTextInput(1)).toBe('%%faas answer --http\n21 * 2');
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Row[data-name="answer"]`)).toBeVisible({ timeout: 60 * 1000 });
    const response = await request.post('/faas/functions/answer', { data: {} });
    expect(await response.json()).toBe(42);
    await request.delete('/faas/api/functions/answer');
  });

  test('the context menu of a code cell has both commands', async ({ page }) => {
    await page.notebook.createNew('menu.ipynb');
    await page.notebook.setCell(0, 'code', 'x');
    await page.locator('.jp-Cell .jp-InputArea-editor').first().click({ button: 'right' });
    const menu = page.locator('.lm-Menu');
    await expect(menu.getByText('Make cell a serverless function')).toBeVisible();
    await expect(menu.getByText('Deploy cell as HTTP endpoint')).toBeVisible();
    await page.keyboard.press('Escape');
  });

  test('the panel says so plainly when the server extension is missing', async ({ page }) => {
    await page.route('**/faas/api/**', route => route.fulfill({ status: 404, body: 'Not Found' }));
    await page.sidebar.openTab(SIDEBAR);
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Status`)).toContainText(
      'The jupyter-faas server extension is not enabled',
      { timeout: 30 * 1000 }
    );
    await expect(page.locator(`#${SIDEBAR} .jp-faas-Row`)).toHaveCount(0);
  });
});

// galata is imported for its type augmentation of window.jupyterapp.
void galata;
