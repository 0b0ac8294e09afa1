// Galata's Playwright settings, with Debian's chromium: Playwright's own browser download does not work here.
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

// The port JupyterLab serves on: FAAS_UI_PORT (the pytest runner picks a free one), else Galata's 8888.
const port = process.env.FAAS_UI_PORT || '8888';

module.exports = {
  ...baseConfig,
  timeout: 120 * 1000,
  retries: 0,
  workers: 1,
  outputDir: 'test-results',
  use: {
    ...baseConfig.use,
    baseURL: `http://localhost:${port}`,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync'
      ]
    },
    trace: 'off',
    video: 'off'
  },
  webServer: {
    command: `jlpm start --ServerApp.port=${port}`,
    url: `http://localhost:${port}/lab`,
    timeout: 120 * 1000,
    reuseExistingServer: false
  }
};
