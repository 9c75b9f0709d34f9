/**
 * jupyter-cc in a real JupyterLab (galata + Debian Chromium): the status bar item, the
 * attestation panel, re-attestation, and a kernel whose policy refuses the simulated TEE.
 *
 * The server (jupyter_server_test_config.py) has two confidential kernelspecs: `cc-sim`
 * (simulated TEE, a policy that allows it) and `cc-sim-refused` (no policy: the default one
 * refuses the simulated TEE at start). Screenshots go to ui-tests/screenshots/.
 * `cc-sim-ssh` runs in a resident guest agent behind a real sshd on loopback, so a test can cut
 * its connection and watch the reconnect.
 */
import { IJupyterLabPageFixture, expect, test } from '@jupyterlab/galata';
import type { Locator } from '@playwright/test';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const SHOTS = path.join(__dirname, '..', 'screenshots');
fs.mkdirSync(SHOTS, { recursive: true });

// A confidential kernel attests before it runs code: allow it more than galata's default.
test.setTimeout(180 * 1000);

test.use({ autoGoto: true });

const RULE = 'allow_simulated: expected a hardware TEE';
const FIRST = "Confidential kernel not started: policy 'default' refused the sim-snp TEE.";

interface IBox {
  left: number;
  top: number;
  right: number;
  bottom: number;
}

/**
 * Where the failed rule's text is drawn in the "Error Starting Kernel" dialog: the boxes of its
 * line (a Range over the text node, one box per wrapped line), the dialog body's box, the
 * viewport, and whether the message overflows sideways.
 */
async function ruleLayout(dialog: Locator, rule: string) {
  return dialog.evaluate((node, text) => {
    const box = (r: DOMRect) => ({ left: r.left, top: r.top, right: r.right, bottom: r.bottom });
    const body = node.querySelector('.jp-Dialog-body') as HTMLElement;
    const pre = body.querySelector('pre') as HTMLElement;
    const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
    let found: Text | null = null;
    let start = -1;
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      start = (n as Text).data.indexOf(text);
      if (start >= 0) {
        found = n as Text;
        break;
      }
    }
    if (!found) {
      return null;
    }
    const newline = found.data.indexOf('\n', start);
    const end = newline < 0 ? found.data.length : newline;
    const range = document.createRange();
    range.setStart(found, start);
    range.setEnd(found, end);
    return {
      line: found.data.slice(start, end),
      rects: Array.from(range.getClientRects())
        .filter(r => r.width > 0)
        .map(box),
      body: box(body.getBoundingClientRect()),
      viewport: { left: 0, top: 0, right: window.innerWidth, bottom: window.innerHeight },
      overflowX: pre.scrollWidth - pre.clientWidth,
      whiteSpace: getComputedStyle(pre).whiteSpace,
      text: pre.textContent || ''
    };
  }, rule);
}

function within(inner: IBox, outer: IBox, slack = 1): boolean {
  return (
    inner.left >= outer.left - slack &&
    inner.top >= outer.top - slack &&
    inner.right <= outer.right + slack &&
    inner.bottom <= outer.bottom + slack
  );
}

/** The dialog shows the first sentence, then the failed rule on its own line, fully visible. */
async function expectRuleVisible(dialog: Locator): Promise<void> {
  const layout = await ruleLayout(dialog, RULE);
  expect(layout, 'the failed rule is in the dialog').not.toBeNull();
  const l = layout!;
  console.log(`dialog rule line: ${l.line} (${l.rects.length} box(es), white-space ${l.whiteSpace})`);
  expect(l.text).toContain(`${FIRST}\n- ${RULE}`);
  expect(l.line).toMatch(/observed SIMULATED evidence/);
  expect(l.rects.length).toBeGreaterThan(0);
  for (const r of l.rects) {
    expect(within(r, l.body), `rule box ${JSON.stringify(r)} in body ${JSON.stringify(l.body)}`).toBe(true);
    expect(within(r, l.viewport), `rule box ${JSON.stringify(r)} in the viewport`).toBe(true);
  }
  expect(l.overflowX).toBeLessThanOrEqual(1);
}

/** The attestation panel lists the refused start's rules and copies the full diagnostics. */
async function expectPanelRefusal(page: IJupyterLabPageFixture, shot: string): Promise<void> {
  const panel = page.locator('.jp-cc-Panel');
  await expect(panel).toBeVisible();
  const section = panel.locator('.jp-cc-refusal');
  await expect(section).toBeVisible({ timeout: 30 * 1000 });
  await expect(section.locator('.jp-cc-refusal-sentence')).toHaveText(FIRST);
  const row = section.locator('tr[data-rule="allow_simulated"]');
  await expect(row).toBeVisible();
  await expect(row.locator('.jp-cc-rule-expected')).toContainText('a hardware TEE');
  await expect(row.locator('.jp-cc-rule-observed')).toContainText('SIMULATED evidence');
  await expect(panel.locator('.jp-cc-verdict-failed')).toContainText('policy default (refused at start)');
  await expect(panel.locator('tr[data-claim="tee"] td')).toHaveText('sim-snp');
  await expect(panel).not.toContainText('No claims.');
  await row.scrollIntoViewIfNeeded();
  await panel.screenshot({ path: path.join(SHOTS, shot) });
  const copy = section.locator('button.jp-cc-copy-diagnostics');
  await copy.click();
  await expect(copy).toHaveText('Copied');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied.startsWith(`${FIRST}\n- ${RULE}`)).toBe(true);
  expect(copied).toContain('kernelspec: cc-sim-refused');
  expect(copied).toContain('  expected: a hardware TEE');
  expect(copied).toContain('  observed: SIMULATED evidence');
}

/** The pid of the test CVM's sshd listener (started by jupyter_server_test_config.py). */
function guestSshd(): number {
  const out = execFileSync('pgrep', ['-f', '/guest-sshd/sshd_config'], { encoding: 'utf8' });
  const pids = out.split(/\s+/).filter(Boolean).map(Number);
  expect(pids, 'one sshd listener for the test CVM').toHaveLength(1);
  return pids[0];
}

/** Send `signal` to `pid` (and, with `children`, to the processes it started instead). */
function signalPid(signal: string, pid: number, children = false): void {
  if (children) {
    execFileSync('pkill', [`-${signal}`, '-P', String(pid)]);
  } else {
    execFileSync('kill', [`-${signal}`, String(pid)]);
  }
}

test.describe('jupyter-cc labextension', () => {
  test('activates and offers its commands', async ({ page }) => {
    const logs: string[] = [];
    page.on('console', message => logs.push(message.text()));
    await page.reload();
    await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
    await expect
      .poll(() => logs.filter(s => s === 'jupyter-cc-labextension is activated').length)
      .toBe(1);
    const ids = await page.evaluate(() => window.jupyterapp.commands.listCommands());
    expect(ids).toContain('jupyter-cc:show-attestation');
    expect(ids).toContain('jupyter-cc:reattest');
  });

  test('the launcher marks confidential kernels with a lock', async ({ page }) => {
    await page.evaluate(() => window.jupyterapp.commands.execute('launcher:create'));
    const launcher = page.locator('.jp-Launcher').filter({ visible: true }).last();
    const card = launcher.locator('.jp-LauncherCard[title="Confidential Python (simulated)"]').first();
    await expect(card).toBeVisible();
    await expect(card).toHaveAttribute('data-jp-cc-confidential', 'true');
    const plain = launcher.locator('.jp-LauncherCard[data-category="Notebook"][title="Python 3 (ipykernel)"]');
    await expect(plain).toBeVisible();
    await expect(plain).not.toHaveAttribute('data-jp-cc-confidential', 'true');
    await launcher.screenshot({ path: path.join(SHOTS, 'launcher.png') });
  });

  test('simulated kernel: status bar, panel, re-attest, then a refused kernel', async ({ page, context }) => {
    await context.grantPermissions(['clipboard-read', 'clipboard-write']);
    await page.notebook.createNew('cc-sim.ipynb', { kernel: 'cc-sim' });

    // Status bar: the lock item says SIMULATED once the kernel has attested.
    const item = page.locator('.jp-cc-StatusItem');
    await expect(item).toBeVisible();
    await expect(item).toContainText('SIMULATED', { timeout: 120 * 1000 });
    await expect(item).toHaveAttribute('data-cc-level', 'simulated');
    await expect(item).toHaveAttribute('title', /not a hardware TEE/);
    await item.screenshot({ path: path.join(SHOTS, 'status-bar-simulated.png') });
    await page.locator('#jp-main-statusbar').screenshot({ path: path.join(SHOTS, 'status-bar.png') });

    // The kernel runs code (it is a real ipykernel behind the attestation).
    await page.notebook.setCell(0, 'code', '6 * 7');
    await page.notebook.runCell(0);
    await expect(page.locator('.jp-OutputArea-output').first()).toContainText('42');

    // Panel, from the status item.
    await item.click();
    const panel = page.locator('.jp-cc-Panel');
    await expect(panel).toBeVisible();
    await expect(panel.locator('.jp-cc-Panel-status')).toHaveText('SIMULATED');
    await expect(panel.locator('.jp-cc-banner')).toContainText('not a hardware TEE');
    await expect(panel.locator('.jp-cc-verdict-passed')).toContainText('PASSED');
    const measurement = panel.locator('tr[data-claim="measurement"] td');
    await expect(measurement).toHaveText(/^[0-9a-f]{32,}$/);
    const hex = (await measurement.textContent()) || '';
    console.log(`simulated measurement: ${hex}`);
    await expect(panel.locator('tr[data-claim="tee"] td')).toHaveText('sim-snp');
    await expect(panel).toContainText('Recent audit entries');
    await panel.screenshot({ path: path.join(SHOTS, 'panel.png') });

    // Re-attest: a fresh attestation, so the time changes (attested_at has second resolution).
    const when = panel.locator('tr[data-field="attested at"] td');
    const before = (await when.textContent()) || '';
    expect(before).toMatch(/^20\d\d-/);
    await page.waitForTimeout(1500);
    await panel.locator('button.jp-cc-reattest').click();
    await expect(when).not.toHaveText(before, { timeout: 60 * 1000 });
    await expect(panel.locator('.jp-cc-Panel-status')).toHaveText('SIMULATED');
    await expect(panel.locator('.jp-cc-audit')).toContainText('attest');
    await panel.screenshot({ path: path.join(SHOTS, 'panel-reattested.png') });

    // Restart: the kernel attests again, so the item comes back SIMULATED with a new time.
    const beforeRestart = (await when.textContent()) || '';
    await page.waitForTimeout(1100);
    await page.notebook.activate('cc-sim.ipynb');
    await page.evaluate(() => {
      void window.jupyterapp.commands.execute('kernelmenu:restart');
    });
    await page.click('.jp-Dialog .jp-mod-accept');
    await expect(when).not.toHaveText(beforeRestart, { timeout: 120 * 1000 });
    await expect(item).toContainText('SIMULATED', { timeout: 120 * 1000 });

    // The command palette command opens the same panel.
    await page.evaluate(() => window.jupyterapp.commands.execute('jupyter-cc:show-attestation'));
    await expect(page.locator('.jp-cc-Panel')).toHaveCount(1);

    // Switch the notebook to the kernel whose policy refuses the simulated TEE.
    // (Kernel > Change Kernel…: the split view hides the toolbar's kernel name in its overflow.)
    await page.notebook.activate('cc-sim.ipynb');
    await page.evaluate(() => {
      void window.jupyterapp.commands.execute('kernelmenu:change');
    });
    const select = page.locator('.jp-Dialog').getByRole('combobox');
    await select.selectOption('{"name":"cc-sim-refused"}');
    await page.click('.jp-Dialog .jp-mod-accept');

    const error = page.locator('.jp-Dialog', { hasText: 'Error Starting Kernel' });
    await expect(error).toBeVisible({ timeout: 120 * 1000 });
    await expect(error).toContainText('allow_simulated');
    await expectRuleVisible(error);
    await error.screenshot({ path: path.join(SHOTS, 'refused-dialog.png') });
    await page.screenshot({ path: path.join(SHOTS, 'refused-dialog-page.png') });
    await error.locator('.jp-mod-accept').click();

    await expect(item).toContainText('attestation FAILED');
    await expect(item).toHaveAttribute('data-cc-level', 'failed');
    await expect(item).toHaveAttribute('title', /refused the sim-snp TEE\.\nallow_simulated: expected/);
    await expectPanelRefusal(page, 'refused-panel.png');
    await item.screenshot({ path: path.join(SHOTS, 'status-bar-failed.png') });
    await page.locator('#jp-main-statusbar').screenshot({ path: path.join(SHOTS, 'status-bar-failed-full.png') });
  });

  test('a new notebook on the refused kernel: the dialog and the panel show the rule', async ({
    page,
    context
  }) => {
    await context.grantPermissions(['clipboard-read', 'clipboard-write']);
    await page.evaluate(() => {
      void window.jupyterapp.commands.execute('notebook:create-new', { kernelName: 'cc-sim-refused' });
    });
    const error = page.locator('.jp-Dialog', { hasText: 'Error Starting Kernel' });
    await expect(error).toBeVisible({ timeout: 120 * 1000 });
    await expectRuleVisible(error);
    await error.screenshot({ path: path.join(SHOTS, 'refused-dialog-new-notebook.png') });
    await error.locator('.jp-mod-accept').click();
    // JupyterLab then offers another kernel for the new notebook: keep none.
    const choose = page.locator('.jp-Dialog', { hasText: 'Select Kernel' });
    try {
      await choose.waitFor({ state: 'visible', timeout: 15 * 1000 });
      await choose.locator('.jp-mod-reject').click();
    } catch {
      // no kernel selector this time
    }
    await expect(page.locator('.jp-Dialog')).toHaveCount(0);
    const item = page.locator('.jp-cc-StatusItem');
    await expect(item).toContainText('attestation FAILED', { timeout: 30 * 1000 });
    await page.evaluate(() => window.jupyterapp.commands.execute('jupyter-cc:show-attestation'));
    await expectPanelRefusal(page, 'refused-panel-new-notebook.png');
  });

  test('a dropped connection: the status bar says reconnecting, then the kernel carries on', async ({
    page
  }) => {
    await page.notebook.createNew('cc-ssh.ipynb', { kernel: 'cc-sim-ssh' });
    const item = page.locator('.jp-cc-StatusItem');
    await expect(item).toContainText('SIMULATED', { timeout: 120 * 1000 });
    await page.notebook.setCell(0, 'code', 'x = 41');
    await page.notebook.runCell(0);

    // The CVM unreachable for a while: its sshd takes no new connection and the open one is
    // cut (the sshd child serving it killed). The server notices within its 3 s kernel poll
    // and says so on its event stream; the status bar follows without waiting for its 30 s poll.
    const listener = guestSshd();
    signalPid('STOP', listener);
    try {
      signalPid('KILL', listener, true);
      await expect(item).toContainText('reconnecting…', { timeout: 15 * 1000 });
      await expect(item).toHaveAttribute('title', /reconnecting and attesting again/);
      await item.screenshot({ path: path.join(SHOTS, 'status-bar-reconnecting.png') });
    } finally {
      signalPid('CONT', listener);
    }
    // Reachable again: re-attested with a fresh nonce, the same kernel taken back.
    await expect(item).toContainText('SIMULATED', { timeout: 60 * 1000 });
    await expect(item).not.toContainText('reconnecting');
    await page.evaluate(() => window.jupyterapp.commands.execute('jupyter-cc:show-attestation'));
    const panel = page.locator('.jp-cc-Panel');
    await expect(panel).toContainText('reconnected 1×');
    await panel.screenshot({ path: path.join(SHOTS, 'panel-reconnected.png') });

    // The variable set before the drop is still there.
    await page.notebook.activate('cc-ssh.ipynb');
    await page.notebook.addCell('code', 'print(x + 1)');
    const last = (await page.notebook.getCellCount()) - 1;
    await page.notebook.runCell(last);
    const output = await page.notebook.getCellTextOutput(last);
    expect(output?.join('').trim()).toBe('42');
  });

  test("an Azure CVM's start: the status bar shows each step, then the attestation", async ({ page }) => {
    // `cc-lab`'s CVM is deallocated: the kernel's start starts it first (jupyter_server_test_config.py).
    const steps: string[] = [];
    const item = page.locator('.jp-cc-StatusItem');
    // Not renamed (galata renames a new notebook once its kernel starts): the start's steps
    // name the notebook the kernel starts for.
    await page.notebook.createNew('', { kernel: 'cc-lab' });
    await expect(item).toContainText('starting CVM…', { timeout: 60 * 1000 });
    steps.push((await item.getAttribute('title')) || '');
    await item.screenshot({ path: path.join(SHOTS, 'status-bar-starting-cvm.png') });
    await expect(item).toHaveAttribute('title', /the CVM lab is running at 127\.0\.0\.1/, { timeout: 60 * 1000 });
    steps.push((await item.getAttribute('title')) || '');
    console.log(`start steps seen: ${steps.join(' | ')}`);
    expect(steps[0]).toMatch(/the confidential VM is being reached before the kernel attests: /);
    await expect(item).toContainText('SIMULATED', { timeout: 120 * 1000 });
    await expect(item).not.toContainText('starting CVM');
  });

  test('a plain kernel is not confidential', async ({ page }) => {
    const specs = await page.evaluate(async () => {
      const m = window.jupyterapp.serviceManager.kernelspecs;
      await m.ready;
      return Object.keys(m.specs?.kernelspecs ?? {});
    });
    expect(specs).toContain('python3'); // ipykernel's own kernelspec, installed with it
    await page.notebook.createNew('plain.ipynb', { kernel: 'python3' });
    const item = page.locator('.jp-cc-StatusItem');
    await expect(item).toContainText('not confidential', { timeout: 60 * 1000 });
    await expect(item).toHaveAttribute('data-cc-level', 'none');
  });
});

