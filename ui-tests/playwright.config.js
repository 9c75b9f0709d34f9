/**
 * galata (Playwright) configuration: Debian's Chromium, nothing downloaded (ecosystem.md 4.3).
 * Never run `playwright install`: CHROMIUM_PATH (default /usr/bin/chromium) is the browser.
 */
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

module.exports = {
  ...baseConfig,
  timeout: 120 * 1000,
  retries: 0,
  workers: 1,
  reporter: [[process.env.CI ? 'list' : 'line'], ['html', { open: 'never' }]],
  use: {
    ...baseConfig.use,
    video: 'off', // galata's default 'retain-on-failure' needs Playwright's ffmpeg download
    trace: 'off',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run'
      ]
    }
  },
  webServer: {
    command: 'jlpm start',
    url: 'http://localhost:8888/lab',
    timeout: 120 * 1000,
    reuseExistingServer: !process.env.CI
  }
};
