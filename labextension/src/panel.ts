import { Clipboard } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { AttestationModel } from './model';
import {
  SIMULATED_BANNER,
  agentLine,
  auditSummary,
  claimRows,
  evidenceKind,
  failureReasons,
  formatValue,
  gpuLine,
  IRefusal,
  refusalDiagnostics,
  refusalRules,
  relativeTime,
  teeName
} from './state';

/** Put `text` on the system clipboard (the async API where allowed, else a copy event). */
async function copyText(text: string): Promise<void> {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      // fall back below (no permission, page not focused)
    }
  }
  Clipboard.copyToSystem(text);
}

/** Create an element with a class and text (text only: claim values are never HTML). */
function el<K extends keyof HTMLElementTagNameMap>(
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

function table(rows: Array<[string, string]>, className: string, rowKey: string): HTMLTableElement {
  const t = el('table', `jp-cc-table ${className}`);
  const body = el('tbody');
  for (const [name, value] of rows) {
    const tr = el('tr');
    tr.dataset[rowKey] = name;
    tr.append(el('th', undefined, name), el('td', 'jp-cc-value', value));
    body.append(tr);
  }
  t.append(body);
  return t;
}

/**
 * The attestation panel: what the status bar summarises, in full. Claims table, policy verdict
 * with the failed rules, GPU, a "Re-attest" button and the tail of the audit log.
 */
export class AttestationPanel extends Widget {
  constructor(model: AttestationModel) {
    super();
    this._model = model;
    this.id = 'jp-cc-attestation-panel';
    this.addClass('jp-cc-Panel');
    this.node.tabIndex = 0;

    const toolbar = el('div', 'jp-cc-Panel-toolbar');
    this._reattest = el('button', 'jp-mod-styled jp-mod-accept jp-cc-reattest', 'Re-attest');
    this._reattest.type = 'button';
    this._reattest.title = 'Ask the kernel for fresh evidence (new nonce) and check it again';
    this._reattest.addEventListener('click', () => {
      void this._model.reattest();
    });
    const refresh = el('button', 'jp-mod-styled jp-cc-refresh', 'Refresh');
    refresh.type = 'button';
    refresh.addEventListener('click', () => {
      void this._model.refresh().then(() => this._model.refreshAudit());
    });
    toolbar.append(this._reattest, refresh);

    this._content = el('div', 'jp-cc-Panel-content');
    this.node.append(toolbar, this._content);
    model.changed.connect(this._render, this);
    this._render();
  }

  protected onAfterAttach(): void {
    this._model.wantAudit = true;
    void this._model.refresh();
    void this._model.refreshAudit();
  }

  protected onBeforeDetach(): void {
    this._model.wantAudit = false;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._model.wantAudit = false;
    this._model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const model = this._model;
    const att = model.attestation;
    const view = model.view();
    const refusal = att && att.refusal ? att.refusal : model.refusal;
    const now = Date.now();
    const c = this._content;
    c.textContent = '';

    // Summary line, coloured like the status bar item.
    const summary = el('div', `jp-cc-Panel-summary ${view.className}`);
    summary.append(el('span', 'jp-cc-Panel-status', view.label));
    c.append(summary);
    c.append(el('p', 'jp-cc-Panel-tooltip', view.tooltip));

    const kernel = table(
      [
        ['kernel', model.kernelDisplayName || '—'],
        ['kernel id', model.kernelId || '—']
      ],
      'jp-cc-kernel',
      'field'
    );
    c.append(kernel);
    this._reattest.disabled = !model.kernelId || model.busy || model.phase !== 'running';
    this._reattest.textContent = model.busy ? 'Re-attesting…' : 'Re-attest';

    if (att && att.simulated) {
      c.append(el('div', 'jp-cc-banner jp-cc-level-simulated', SIMULATED_BANNER));
    }

    // Verdict.
    c.append(el('h3', undefined, 'Policy verdict'));
    const verdict = el('div', 'jp-cc-verdict');
    if (att && att.verdict) {
      const passed = att.verdict.passed === true && !att.error;
      verdict.append(
        el(
          'span',
          passed ? 'jp-cc-verdict-passed' : 'jp-cc-verdict-failed',
          `${passed ? 'PASSED' : 'FAILED'}: policy ${att.verdict.policy || '—'}`
        )
      );
    } else if (refusal) {
      verdict.append(
        el(
          'span',
          'jp-cc-verdict-failed',
          refusal.policy
            ? `FAILED: policy ${refusal.policy} (refused at start)`
            : 'FAILED (refused at start)'
        )
      );
    } else if (att && att.error) {
      verdict.append(el('span', 'jp-cc-verdict-failed', 'FAILED'));
    } else {
      verdict.append(el('span', undefined, att ? 'no attestation (not a confidential kernel)' : '—'));
    }
    c.append(verdict);
    const reasons = failureReasons(att);
    if (reasons.length > 0) {
      const list = el('ul', 'jp-cc-reasons');
      for (const r of reasons) {
        list.append(el('li', undefined, r));
      }
      c.append(list);
    }
    if (refusal) {
      c.append(this._refusalSection(refusal));
    }

    // When.
    const attestedAt = att && att.attested_at ? att.attested_at : null;
    const ago = relativeTime(attestedAt, now);
    c.append(
      table(
        [
          ['TEE', att && att.confidential ? teeName(evidenceKind(att)) : '—'],
          ['evidence kind', evidenceKind(att) || '—'],
          ['attested at', attestedAt ? `${attestedAt}${ago ? ` (${ago})` : ''}` : '—'],
          ['evidence sha256', att && att.evidence_sha256 ? att.evidence_sha256 : '—'],
          ['source', att && att.source ? att.source : '—'],
          ['guest agent', (att && agentLine(att.agent)) || '—']
        ],
        'jp-cc-when',
        'field'
      )
    );

    // Claims.
    c.append(el('h3', undefined, 'Claims'));
    const rows = claimRows(att && att.claims ? att.claims : refusal ? refusal.claims : null);
    if (rows.length > 0 && !(att && att.claims) && refusal) {
      c.append(el('p', 'jp-cc-Panel-tooltip', 'Claims of the evidence the policy refused:'));
    }
    c.append(
      rows.length > 0
        ? table(rows, 'jp-cc-claims', 'claim')
        : el('p', 'jp-cc-empty', refusal ? 'No claims (no evidence was verified).' : 'No claims.')
    );

    // GPU.
    c.append(el('h3', undefined, 'GPU'));
    const gpu = att ? att.gpu || (att.claims ? (att.claims['gpu'] as { [key: string]: unknown }) : null) : null;
    const judged = att && Array.isArray(att.gpus) ? att.gpus : [];
    const gpuRows: Array<[string, string]> =
      judged.length > 0
        ? judged.map(g => [`GPU ${g.index}`, gpuLine(g)] as [string, string])
        : claimRows(gpu && typeof gpu === 'object' ? gpu : null);
    c.append(
      gpuRows.length > 0
        ? table(gpuRows, 'jp-cc-gpu', 'claim')
        : el('p', 'jp-cc-empty', 'No attested GPU.')
    );

    // Audit tail.
    c.append(el('h3', undefined, 'Recent audit entries'));
    if (model.auditError) {
      c.append(el('p', 'jp-cc-error', `The audit log cannot be read: ${model.auditError}`));
    }
    const entries = model.audit;
    if (entries.length === 0) {
      c.append(el('p', 'jp-cc-empty', 'No audit entries.'));
    } else {
      const t = el('table', 'jp-cc-table jp-cc-audit');
      const head = el('thead');
      const hr = el('tr');
      for (const h of ['#', 'time', 'event', 'details']) {
        hr.append(el('th', undefined, h));
      }
      head.append(hr);
      const body = el('tbody');
      for (const e of entries) {
        const tr = el('tr');
        tr.append(
          el('td', undefined, formatValue(e.seq)),
          el('td', undefined, formatValue(e.time)),
          el('td', undefined, formatValue(e.event)),
          el('td', 'jp-cc-value', auditSummary(e))
        );
        body.append(tr);
      }
      t.append(head, body);
      c.append(t);
    }
  }

  /** The refused start: its sentence, a table of the failed rules and "Copy diagnostics". */
  private _refusalSection(refusal: IRefusal): HTMLElement {
    const section = el('div', 'jp-cc-refusal');
    section.append(el('h3', undefined, 'Refused at start'));
    section.append(el('p', 'jp-cc-refusal-sentence jp-cc-error', refusal.sentence));
    const rules = refusalRules(refusal);
    if (rules.length > 0) {
      const t = el('table', 'jp-cc-table jp-cc-rules');
      const head = el('thead');
      const hr = el('tr');
      for (const h of ['failed rule', 'expected', 'observed']) {
        hr.append(el('th', undefined, h));
      }
      head.append(hr);
      const body = el('tbody');
      for (const r of rules) {
        const tr = el('tr');
        tr.dataset.rule = r.rule;
        tr.append(
          el('th', 'jp-cc-rule-name', r.rule),
          el('td', 'jp-cc-rule-expected', r.expected),
          el('td', 'jp-cc-rule-observed', r.observed)
        );
        body.append(tr);
      }
      t.append(head, body);
      section.append(t);
    }
    const when = refusal.refused_at ? `refused at ${refusal.refused_at}` : '';
    const who = [refusal.display_name, refusal.kernel_name ? `(${refusal.kernel_name})` : '', when]
      .filter(Boolean)
      .join(' ');
    if (who) {
      section.append(el('p', 'jp-cc-Panel-tooltip', who));
    }
    const copy = el('button', 'jp-mod-styled jp-cc-copy-diagnostics', 'Copy diagnostics');
    copy.type = 'button';
    copy.title = 'Copy the full diagnostics of this refusal (sentence, failed rules, claims)';
    copy.addEventListener('click', () => {
      void copyText(refusalDiagnostics(refusal)).then(
        () => {
          copy.textContent = 'Copied';
        },
        () => {
          copy.textContent = 'Copy failed';
        }
      );
    });
    section.append(copy);
    return section;
  }

  private _model: AttestationModel;
  private _content: HTMLDivElement;
  private _reattest: HTMLButtonElement;
}
