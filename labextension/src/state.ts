/**
 * Pure state logic of the status bar item and the attestation panel: the REST API's JSON in,
 * a label, a colour class, a tooltip and "n min ago" out. No JupyterLab imports, no DOM, no
 * clock of its own (the caller passes `now`), so it is unit-tested under plain Node.
 */

/** `verdict` of the REST API: did the evidence pass the policy, and if not, why. */
export interface IVerdict {
  passed: boolean;
  policy?: string | null;
  reasons?: string[] | null;
}

/**
 * `GET /jupyter-cc/api/kernels/<id>` and `POST .../attest` (jupyter_cc.server.state).
 * A refused or no-longer-trusted confidential kernel is `confidential: false` with `error`.
 */
export interface IKernelAttestation {
  kernel_id?: string | null;
  confidential: boolean;
  simulated?: boolean | null;
  evidence_kind?: string | null;
  verdict?: IVerdict | null;
  claims?: { [key: string]: unknown } | null;
  attested_at?: string | null;
  evidence_sha256?: string | null;
  source?: string | null;
  gpu?: { [key: string]: unknown } | null;
  /** Every GPU with its own verdict (server/state.py, jupyter_cc.policy.gpu.gpu_verdicts). */
  gpus?: IGpuVerdict[] | null;
  error?: string | null;
  /** The kernel was refused at start (a refused kernel's id only). */
  refusal?: IRefusal | null;
  /** The guest agent behind the kernel (server/state.py `agent`). */
  agent?: IAgentState | null;
}

/** `agent` of the REST API: which guest agent holds the kernel, and its connection's state. */
export interface IAgentState {
  /** The resident service (kernels outlive a connection) rather than a per-connection agent. */
  resident?: boolean | null;
  pool?: { size?: number; ready?: number; idle_rss_bytes?: number } | null;
  /** The kernel started from the warm pool. */
  warm?: boolean | null;
  /** The connection dropped: the server is reconnecting and attesting again. */
  reconnecting?: boolean | null;
  /** How many times the connection was re-established (each with a fresh attestation). */
  reconnects?: number | null;
  /** The kernel was taken back after a Jupyter server restart. */
  restored?: boolean | null;
  /** CurveZMQ on the kernel's ports, its server key bound into the evidence. */
  curve?: boolean | null;
}

/** Is the kernel's connection to its CVM being re-established right now? */
export function isReconnecting(att: IKernelAttestation | null): boolean {
  return !!(att && att.agent && att.agent.reconnecting === true);
}

/** The server's event for a confidential kernel's connection (jupyter_cc/server/events.py). */
export const CONNECTION_SCHEMA = 'https://events.jupyter-cc.org/kernel_connection/v1';

/** The server's event for a step of a confidential kernel's start (jupyter_cc/server/events.py). */
export const START_SCHEMA = 'https://events.jupyter-cc.org/kernel_start/v1';

/**
 * The step line an event of the server's stream says for the start of the kernel of the
 * notebook at `path` (JupyterLab learns the kernel id only once the start is over), or null.
 */
export function startStepEvent(
  emission: { [key: string]: unknown } | null | undefined,
  path: string | null
): string | null {
  if (!emission || !path || emission.schema_id !== START_SCHEMA || emission.path !== path) {
    return null;
  }
  return typeof emission.step === 'string' && emission.step ? emission.step : null;
}

/** The connection states that event carries. */
export type ConnectionState = 'reconnecting' | 'reconnected' | 'lost';

/**
 * The state an event of the server's stream says for kernel `kernelId`'s connection, or null
 * when it is another schema's event, another kernel's, or not well formed.
 */
export function connectionEvent(
  emission: { [key: string]: unknown } | null | undefined,
  kernelId: string | null
): ConnectionState | null {
  if (!emission || !kernelId || emission.schema_id !== CONNECTION_SCHEMA) {
    return null;
  }
  if (emission.kernel_id !== kernelId) {
    return null;
  }
  const state = emission.state;
  return state === 'reconnecting' || state === 'reconnected' || state === 'lost' ? state : null;
}

/** The panel's line about the guest agent, e.g. "resident agent, warm pool · reconnected 2×". */
export function agentLine(agent: IAgentState | null | undefined): string | null {
  if (!agent) {
    return null;
  }
  const parts = [agent.resident ? 'resident agent' : 'per-connection agent'];
  if (agent.warm) {
    parts.push('warm pool');
  }
  if (agent.curve) {
    parts.push('CurveZMQ (attested key)');
  }
  if (agent.restored) {
    parts.push('restored after a server restart');
  }
  if (agent.reconnecting) {
    parts.push('reconnecting…');
  } else if (agent.reconnects) {
    parts.push(`reconnected ${agent.reconnects}×`);
  }
  return parts.join(' · ');
}

/** One GPU of an attestation and its own verdict. */
export interface IGpuVerdict {
  index: number;
  arch?: string | null;
  driver_version?: string | null;
  vbios_version?: string | null;
  rim?: string | null;
  revocation?: string | null;
  passed: boolean;
  reasons: string[];
}

/** One GPU as one line: what it is, what was checked, and its verdict. */
export function gpuLine(gpu: IGpuVerdict): string {
  const facts: string[] = [];
  if (gpu.arch) {
    facts.push(gpu.arch);
  }
  if (gpu.driver_version) {
    facts.push(`driver ${gpu.driver_version}`);
  }
  if (gpu.vbios_version) {
    facts.push(`VBIOS ${gpu.vbios_version}`);
  }
  facts.push(`RIM ${gpu.rim || 'unchecked'}`, `revocation ${gpu.revocation || 'unchecked'}`);
  const failed = gpu.reasons.map(r => r.split(':', 1)[0].replace(/^gpu\[\d+\]\./, ''));
  return `${facts.join(', ')}: ${gpu.passed ? 'passed' : `failed (${failed.join(', ')})`}`;
}

/** One failed policy rule of a refusal: its name, what the policy expects, what was observed. */
export interface IRefusalRule {
  rule: string;
  expected: string;
  observed: string;
}

/**
 * A confidential kernel refused at start, as the server extension keeps it
 * (`GET /jupyter-cc/api/refusals`, jupyter_cc.server.state): no kernel exists to ask.
 */
export interface IRefusal {
  kernel_id?: string | null;
  kernel_name?: string | null;
  display_name?: string | null;
  /** The notebook, relative to the server root (null: not known). */
  path?: string | null;
  refused_at?: string | null;
  check?: string | null;
  /** The dialog's first sentence. */
  sentence: string;
  /** The dialog's text: the sentence, then one failed rule a line. */
  message?: string | null;
  rules?: IRefusalRule[] | null;
  policy?: string | null;
  evidence_kind?: string | null;
  simulated?: boolean | null;
  claims?: { [key: string]: unknown } | null;
}

/** One entry of `GET /jupyter-cc/api/audit?limit=N`. */
export interface IAuditEntry {
  seq?: number;
  time?: string;
  event?: string;
  [key: string]: unknown;
}

/** What the status bar shows, in increasing order of alarm. */
export type Level =
  | 'verified'
  | 'simulated'
  | 'none'
  | 'pending'
  | 'unknown'
  | 'failed';

/** Where the kernel behind the active notebook or console stands. */
export type KernelPhase = 'none' | 'starting' | 'running' | 'dead';

export interface IStatusInput {
  /** Is a kernel there, and is it up? */
  phase: KernelPhase;
  /** Does the session's kernelspec name the confidential provisioner (null: not known)? */
  specConfidential: boolean | null;
  /** The kernel's display name, for tooltips. */
  kernelName?: string;
  /** The last answer of the REST API for this kernel, if any. */
  attestation: IKernelAttestation | null;
  /** Why the last REST call failed, if it did. */
  fetchError?: string | null;
  /** A confidential kernel's start was refused (the kernel never came up). */
  startFailed?: string | null;
  /** The refusal the server kept for that start, once it is known. */
  refusal?: IRefusal | null;
  /** The last step of reaching the kernel's CVM during its start (an Azure CVM starting). */
  startStep?: string | null;
  /** Milliseconds since the epoch. */
  now: number;
}

export interface IStatusView {
  level: Level;
  /** The status bar text (after the lock icon). */
  label: string;
  /** CSS class for the colour: `jp-cc-level-<level>`. */
  className: string;
  tooltip: string;
  /** Should the icon be a closed lock (verified or simulated)? */
  locked: boolean;
}

export const SIMULATED_BANNER = 'SIMULATED — not a hardware TEE';

/** "SEV-SNP", "TDX", ... for an evidence kind (design section 4). */
export function teeName(kind: string | null | undefined): string {
  switch (kind) {
    case 'snp':
    case 'az-snp-vtpm':
    case 'sim-snp':
      return 'SEV-SNP';
    case 'tdx':
    case 'az-tdx-vtpm':
      return 'TDX';
    case 'maa':
      return 'Azure Attestation';
    case 'nvidia':
      return 'NVIDIA CC';
    case null:
    case undefined:
    case '':
      return 'TEE';
    default:
      return kind.toUpperCase();
  }
}

/** The evidence kind of an attestation: `evidence_kind`, else `claims.tee`. */
export function evidenceKind(att: IKernelAttestation | null): string | null {
  if (!att) {
    return null;
  }
  if (att.evidence_kind) {
    return att.evidence_kind;
  }
  const tee = att.claims ? att.claims['tee'] : undefined;
  return typeof tee === 'string' ? tee : null;
}

/** Milliseconds since the epoch of an ISO-8601 time, or null when absent or unreadable. */
export function parseTime(iso: string | null | undefined): number | null {
  if (!iso) {
    return null;
  }
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** "just now", "1 min ago", "5 min ago", "2 h ago", "3 d ago" (a clock skew reads "just now"). */
export function relativeTime(iso: string | null | undefined, now: number): string | null {
  const t = parseTime(iso);
  if (t === null) {
    return null;
  }
  const seconds = Math.max(0, Math.floor((now - t) / 1000));
  if (seconds < 60) {
    return 'just now';
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min ago`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 48) {
    return `${hours} h ago`;
  }
  return `${Math.floor(hours / 24)} d ago`;
}

/** Did a trusted attestation come back (confidential and a verdict that passed, no error)? */
export function isTrusted(att: IKernelAttestation | null): boolean {
  return (
    !!att &&
    att.confidential === true &&
    !att.error &&
    !!att.verdict &&
    att.verdict.passed === true
  );
}

/** The failed policy rules and errors of an attestation, one sentence each. */
export function failureReasons(att: IKernelAttestation | null): string[] {
  if (!att) {
    return [];
  }
  const out: string[] = [];
  if (att.error) {
    out.push(att.error);
  }
  if (att.verdict && att.verdict.passed === false) {
    for (const r of att.verdict.reasons || []) {
      if (typeof r === 'string' && !out.includes(r)) {
        out.push(r);
      }
    }
  }
  return out;
}

function view(level: Level, label: string, tooltip: string): IStatusView {
  return {
    level,
    label,
    className: `jp-cc-level-${level}`,
    tooltip,
    locked: level === 'verified' || level === 'simulated'
  };
}

/** The status bar's view of the active kernel. */
export function statusView(input: IStatusInput): IStatusView {
  const who = input.kernelName ? `${input.kernelName}: ` : '';
  if (input.startFailed) {
    const refusal = input.refusal;
    if (refusal) {
      const rules = refusalRules(refusal).map(ruleText);
      return view(
        'failed',
        'attestation FAILED',
        [
          `${refusal.display_name ? `${refusal.display_name}: ` : ''}${refusal.sentence}`,
          ...rules
        ].join('\n')
      );
    }
    return view(
      'failed',
      'attestation FAILED',
      `The confidential kernel was refused at start: ${input.startFailed}.`
    );
  }
  const att = input.attestation;
  if (input.phase === 'none') {
    return view('none', 'no kernel', 'No kernel is running for this document.');
  }
  if (input.phase === 'starting' && !att) {
    if (input.startStep) {
      return view(
        'pending',
        'starting CVM…',
        `${who}the confidential VM is being reached before the kernel attests: ${input.startStep}.`
      );
    }
    return input.specConfidential
      ? view(
          'pending',
          'attesting…',
          `${who}the confidential kernel is starting; its attestation is checked before it runs code.`
        )
      : view('pending', 'kernel starting', `${who}the kernel is starting.`);
  }
  if (!att) {
    if (input.fetchError) {
      return view(
        'unknown',
        'attestation unknown',
        `${who}the attestation API did not answer: ${input.fetchError}`
      );
    }
    return view('pending', 'checking…', `${who}asking the server for the attestation.`);
  }
  if (isReconnecting(att)) {
    const n = att.agent && att.agent.reconnects ? att.agent.reconnects : 0;
    return view(
      'pending',
      'reconnecting…',
      `${who}the connection to the confidential VM was lost; reconnecting and attesting again ` +
        `with a fresh nonce${n ? ` (reconnected ${n}× before)` : ''}. The kernel and its ` +
        'variables are kept in the guest meanwhile.'
    );
  }
  if (isTrusted(att)) {
    const ago = relativeTime(att.attested_at, input.now);
    const policy = att.verdict && att.verdict.policy ? att.verdict.policy : 'the policy';
    const when = att.attested_at ? ` at ${att.attested_at}` : '';
    if (att.simulated) {
      return view(
        'simulated',
        'SIMULATED',
        `${who}${SIMULATED_BANNER}. Evidence ${evidenceKind(att) || 'sim'} passed ${policy}` +
          `${when}${ago ? ` (${ago})` : ''}. Click for the attestation.`
      );
    }
    const tee = teeName(evidenceKind(att));
    return view(
      'verified',
      ago ? `${tee} · verified ${ago}` : `${tee} · verified`,
      `${who}running in a verified ${tee} TEE; evidence passed ${policy}${when}. ` +
        'Click for the attestation.'
    );
  }
  const reasons = failureReasons(att);
  if (reasons.length > 0 || att.confidential || input.specConfidential) {
    const why = reasons.length > 0 ? reasons.join('; ') : 'no passed policy verdict';
    return view('failed', 'attestation FAILED', `${who}the kernel is NOT trusted: ${why}`);
  }
  if (input.phase === 'dead') {
    return view('none', 'not confidential', `${who}the kernel is not running.`);
  }
  return view(
    'none',
    'not confidential',
    `${who}this kernel does not run in an attested TEE.`
  );
}

/** The rows of the panel's claims table: [name, text], nested values flattened with dots. */
export function claimRows(
  claims: { [key: string]: unknown } | null | undefined
): Array<[string, string]> {
  const rows: Array<[string, string]> = [];
  const walk = (prefix: string, value: unknown): void => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      const entries = Object.entries(value as { [key: string]: unknown });
      if (entries.length === 0) {
        rows.push([prefix, '{}']);
      }
      for (const [k, v] of entries) {
        walk(prefix ? `${prefix}.${k}` : k, v);
      }
      return;
    }
    rows.push([prefix, formatValue(value)]);
  };
  if (claims) {
    for (const [k, v] of Object.entries(claims)) {
      if (k === 'gpu' || k === 'gpus') {
        continue; // shown in its own section
      }
      walk(k, v);
    }
  }
  return rows;
}

/** One claim value as text (never HTML). */
export function formatValue(value: unknown): string {
  if (value === null || value === undefined) {
    return '—';
  }
  if (typeof value === 'string') {
    return value;
  }
  if (typeof value === 'number' || typeof value === 'boolean') {
    return String(value);
  }
  return JSON.stringify(value);
}

/** The audit entries of `GET audit` (`{entries: [...]}` or a bare list), newest first. */
export function auditEntries(body: unknown): IAuditEntry[] {
  let list: unknown = body;
  if (body && typeof body === 'object' && !Array.isArray(body)) {
    list = (body as { entries?: unknown }).entries;
  }
  if (!Array.isArray(list)) {
    return [];
  }
  const entries = list.filter(
    (e): e is IAuditEntry => !!e && typeof e === 'object' && !Array.isArray(e)
  );
  return entries.slice().reverse();
}

/** One audit entry as a line: the fields other than seq/time/event, as `key=value`. */
export function auditSummary(entry: IAuditEntry): string {
  const skip = new Set(['seq', 'time', 'event', 'prev', 'hash', 'mac']);
  const parts: string[] = [];
  for (const [k, v] of Object.entries(entry)) {
    if (skip.has(k) || v === null || v === undefined || v === '') {
      continue;
    }
    parts.push(`${k}=${formatValue(v)}`);
  }
  return parts.join(' ');
}

/** Does a kernelspec (its `metadata`) name the confidential provisioner? */
export function specIsConfidential(
  metadata: { [key: string]: unknown } | null | undefined
): boolean {
  const prov = metadata ? metadata['kernel_provisioner'] : undefined;
  return (
    !!prov &&
    typeof prov === 'object' &&
    (prov as { provisioner_name?: unknown }).provisioner_name ===
      'confidential-provisioner'
  );
}

/** The well-formed rules of a refusal. */
export function refusalRules(refusal: IRefusal | null | undefined): IRefusalRule[] {
  if (!refusal || !Array.isArray(refusal.rules)) {
    return [];
  }
  return refusal.rules.filter(
    (r): r is IRefusalRule =>
      !!r &&
      typeof r === 'object' &&
      typeof r.rule === 'string' &&
      typeof r.expected === 'string' &&
      typeof r.observed === 'string'
  );
}

/** One failed rule as the dialog writes it: `name: expected X, observed Y`. */
export function ruleText(rule: IRefusalRule): string {
  return `${rule.rule}: expected ${rule.expected}, observed ${rule.observed}`;
}

/** The refusals of `GET refusals` (`{refusals: [...]}` or a bare list), as the server sent them. */
export function refusalList(body: unknown): IRefusal[] {
  let list: unknown = body;
  if (body && typeof body === 'object' && !Array.isArray(body)) {
    list = (body as { refusals?: unknown }).refusals;
  }
  if (!Array.isArray(list)) {
    return [];
  }
  return list.filter(
    (r): r is IRefusal =>
      !!r && typeof r === 'object' && typeof (r as IRefusal).sentence === 'string'
  );
}

/** Which start a refusal must belong to: the kernelspec(s) tried and the notebook. */
export interface IRefusalQuery {
  /** Kernelspec names the attempt may have used (those with its display name). */
  kernelNames: string[];
  /** The display name shown while the kernel was starting. */
  displayName?: string | null;
  /** The notebook or console path (null: not known). */
  path?: string | null;
}

/**
 * The newest refusal (the server lists newest first) of this start: same kernelspec (by name,
 * else by display name) and not another notebook's (a refusal with a known, different path).
 */
export function pickRefusal(body: unknown, query: IRefusalQuery): IRefusal | null {
  const path = query.path ? query.path.replace(/^\/+/, '') : null;
  for (const r of refusalList(body)) {
    const byName = !!r.kernel_name && query.kernelNames.includes(r.kernel_name);
    const byDisplay = !!query.displayName && r.display_name === query.displayName;
    if (!byName && !byDisplay) {
      continue;
    }
    if (path && r.path && r.path !== path) {
      continue;
    }
    return r;
  }
  return null;
}

/**
 * The full diagnostics of a refusal as plain text, for the clipboard (a bug report or a
 * message to the CVM's operator): the dialog's text, then every field and claim, one a line.
 */
export function refusalDiagnostics(refusal: IRefusal): string {
  const lines: string[] = [refusal.message || refusal.sentence, ''];
  const field = (name: string, value: unknown): void => {
    if (value !== null && value !== undefined && value !== '') {
      lines.push(`${name}: ${formatValue(value)}`);
    }
  };
  field('kernel', refusal.display_name);
  field('kernelspec', refusal.kernel_name);
  field('kernel id', refusal.kernel_id);
  field('notebook', refusal.path);
  field('refused at', refusal.refused_at);
  field('failed check', refusal.check);
  field('policy', refusal.policy);
  field('evidence kind', refusal.evidence_kind);
  if (refusal.simulated) {
    lines.push(SIMULATED_BANNER);
  }
  const rules = refusalRules(refusal);
  if (rules.length > 0) {
    lines.push('', 'failed rules:');
    for (const r of rules) {
      lines.push(`- ${r.rule}`, `  expected: ${r.expected}`, `  observed: ${r.observed}`);
    }
  }
  const claims = claimRows(refusal.claims);
  if (claims.length > 0) {
    lines.push('', 'claims of the refused evidence:');
    for (const [k, v] of claims) {
      lines.push(`  ${k}: ${v}`);
    }
  }
  return lines.join('\n') + '\n';
}
