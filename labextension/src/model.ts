import { ISessionContext } from '@jupyterlab/apputils';
import { Event, KernelSpec } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './request';
import {
  IAuditEntry,
  IKernelAttestation,
  IRefusal,
  IStatusView,
  KernelPhase,
  auditEntries,
  connectionEvent,
  isReconnecting,
  pickRefusal,
  specIsConfidential,
  startStepEvent,
  statusView
} from './state';

/** How often the state of the followed kernel is asked for again (and "n min ago" redrawn). */
export const POLL_INTERVAL_MS = 30 * 1000;

/** How often it is asked for while the server reconnects to the kernel's CVM. */
export const RECONNECT_POLL_MS = 2 * 1000;

/** Kernel statuses during which the kernel (and so its attestation) is not there yet. */
const STARTING = new Set([
  'starting',
  'initializing',
  'restarting',
  'autorestarting'
]);

/**
 * Follows the kernel of one session context (the active notebook or console) and keeps its
 * attestation as the REST API reports it: asked for on kernel change, after a (re)start, after
 * a re-attestation, when the server's event stream says the kernel's connection dropped or came
 * back, and every POLL_INTERVAL_MS (every RECONNECT_POLL_MS while it reconnects, in case an
 * event was missed).
 */
export class AttestationModel {
  constructor(specs: KernelSpec.IManager, events: Event.IManager | null = null) {
    this._specs = specs;
    this._events = events;
    specs.specsChanged.connect(this._emit, this);
    events?.stream.connect(this._onEvent, this);
    this._timer = window.setInterval(() => {
      void this.refresh();
    }, POLL_INTERVAL_MS);
  }

  /** Emitted whenever anything shown may have changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get sessionContext(): ISessionContext | null {
    return this._context;
  }

  get attestation(): IKernelAttestation | null {
    return this._attestation;
  }

  /** The refusal the server kept for the followed document's last refused start, if any. */
  get refusal(): IRefusal | null {
    return this._refusal;
  }

  get audit(): IAuditEntry[] {
    return this._audit;
  }

  get auditError(): string | null {
    return this._auditError;
  }

  get busy(): boolean {
    return this._busy;
  }

  get kernelId(): string | null {
    return this._context?.session?.kernel?.id ?? null;
  }

  get kernelDisplayName(): string {
    return this._context ? this._context.kernelDisplayName : '';
  }

  /** Where the followed kernel stands. */
  get phase(): KernelPhase {
    const ctx = this._context;
    if (!ctx) {
      return 'none';
    }
    const status = ctx.kernelDisplayStatus;
    if (STARTING.has(status)) {
      return 'starting';
    }
    const kernel = ctx.session?.kernel;
    if (!kernel) {
      return 'none';
    }
    if (status === 'dead' || kernel.status === 'dead') {
      return 'dead';
    }
    return 'running';
  }

  /** Is the followed kernel's spec a confidential one (null: not known)? */
  get specConfidential(): boolean | null {
    const ctx = this._context;
    if (!ctx) {
      return null;
    }
    const name = ctx.session?.kernel?.name;
    if (name) {
      return this.isConfidentialSpec(name);
    }
    return this._confidentialByDisplayName(ctx.kernelDisplayName);
  }

  /** The status bar view now. */
  view(now: number = Date.now()): IStatusView {
    return statusView({
      phase: this.phase,
      specConfidential: this.specConfidential,
      kernelName: this.kernelDisplayName,
      attestation: this._attestation,
      fetchError: this._fetchError,
      startFailed: this._startFailed,
      refusal: this._refusal,
      startStep: this._startStep,
      now
    });
  }

  /** Is kernelspec `name` one that names the confidential provisioner? */
  isConfidentialSpec(name: string): boolean | null {
    const specs = this._specs.specs;
    if (!specs) {
      return null;
    }
    const spec = specs.kernelspecs[name];
    return spec ? specIsConfidential(spec.metadata as { [key: string]: unknown }) : false;
  }

  /** Follow `context` (null: none). */
  follow(context: ISessionContext | null): void {
    if (context === this._context) {
      return;
    }
    const old = this._context;
    if (old) {
      old.kernelChanged.disconnect(this._onKernelChanged, this);
      old.statusChanged.disconnect(this._onStatusChanged, this);
      old.connectionStatusChanged.disconnect(this._emit, this);
      old.disposed.disconnect(this._onContextDisposed, this);
    }
    this._context = context;
    this._attestation = null;
    this._fetchError = null;
    this._startFailed = null;
    this._refusal = null;
    this._attemptConfidential = null;
    this._startStep = null;
    if (context) {
      context.kernelChanged.connect(this._onKernelChanged, this);
      context.statusChanged.connect(this._onStatusChanged, this);
      context.connectionStatusChanged.connect(this._emit, this);
      context.disposed.connect(this._onContextDisposed, this);
    }
    this._emit();
    void this.refresh();
  }

  /** Ask the server for the followed kernel's state (and the audit tail when the panel shows). */
  async refresh(): Promise<void> {
    const kernelId = this.kernelId;
    if (!kernelId || this.isDisposed) {
      if (this._startFailed && !this._refusal && !this.isDisposed) {
        await this.refreshRefusal();
      }
      this._emit(); // redraw "n min ago" and phase changes
      return;
    }
    try {
      const state = await requestAPI<IKernelAttestation>(
        `kernels/${encodeURIComponent(kernelId)}`
      );
      if (this.kernelId !== kernelId) {
        return; // the kernel changed while we asked
      }
      this._attestation = state;
      this._fetchError = null;
    } catch (error) {
      if (this.kernelId !== kernelId) {
        return;
      }
      this._fetchError = (error as Error).message;
    }
    this._emit();
    this._pollWhileReconnecting();
    if (this.wantAudit) {
      await this.refreshAudit();
    }
  }

  /** Re-attest the followed kernel now (fresh nonce on the server) and show the new state. */
  async reattest(): Promise<void> {
    const kernelId = this.kernelId;
    if (!kernelId || this._busy) {
      return;
    }
    this._busy = true;
    this._emit();
    try {
      const state = await requestAPI<IKernelAttestation>(
        `kernels/${encodeURIComponent(kernelId)}/attest`,
        { method: 'POST', body: '{}' }
      );
      if (this.kernelId === kernelId) {
        this._attestation = state;
        this._fetchError = null;
      }
    } catch (error) {
      if (this.kernelId === kernelId) {
        this._fetchError = (error as Error).message;
      }
    } finally {
      this._busy = false;
    }
    this._emit();
    await this.refreshAudit();
  }

  /**
   * Ask the server for the refusal of the followed document's refused start: no kernel exists,
   * so it is found by kernelspec (the specs with the display name shown while starting) and path.
   */
  async refreshRefusal(): Promise<void> {
    const ctx = this._context;
    if (!ctx || !this._startFailed) {
      return;
    }
    const attempt = this._attemptName;
    const names: string[] = [];
    const specs = this._specs.specs;
    for (const [name, spec] of Object.entries(specs ? specs.kernelspecs : {})) {
      if (spec && (spec.display_name === attempt || name === attempt)) {
        names.push(name);
      }
    }
    try {
      const body = await requestAPI<unknown>('refusals?limit=50');
      if (this._context !== ctx || !this._startFailed) {
        return; // the document or its kernel changed while we asked
      }
      this._refusal = pickRefusal(body, {
        kernelNames: names,
        displayName: attempt,
        path: ctx.path || null
      });
    } catch (error) {
      this._fetchError = (error as Error).message;
    }
    this._emit();
  }

  /** The last 20 audit entries, newest first. */
  async refreshAudit(): Promise<void> {
    try {
      const body = await requestAPI<unknown>('audit?limit=20');
      this._audit = auditEntries(body);
      this._auditError = null;
    } catch (error) {
      this._auditError = (error as Error).message;
    }
    this._emit();
  }

  /** Set by the panel while it is open: the poll then refreshes the audit tail too. */
  wantAudit = false;

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    window.clearInterval(this._timer);
    window.clearTimeout(this._soon);
    this._events?.stream.disconnect(this._onEvent, this);
    Signal.clearData(this);
  }

  private _onKernelChanged(): void {
    this._attestation = null;
    this._fetchError = null;
    if (this.kernelId) {
      this._startFailed = null;
      this._refusal = null;
    }
    this._emit();
    void this.refresh();
  }

  private _onStatusChanged(_: ISessionContext, status: string): void {
    const ctx = this._context;
    if (!ctx) {
      return;
    }
    if (status === 'starting' || status === 'restarting' || status === 'autorestarting') {
      // A (re)start: the old attestation no longer speaks for the kernel.
      this._attestation = null;
      this._startFailed = null;
      this._refusal = null;
      this._attemptName = ctx.kernelDisplayName;
      this._attemptConfidential = this._confidentialByDisplayName(ctx.kernelDisplayName);
      if (this._attemptConfidential === null && ctx.session?.kernel?.name) {
        this._attemptConfidential = this.isConfidentialSpec(ctx.session.kernel.name);
      }
      this._wasStarting = true;
    } else if (this._wasStarting && !STARTING.has(status)) {
      this._wasStarting = false;
      this._startStep = null;
      if (!ctx.session?.kernel && this._attemptConfidential) {
        // SessionContext reports a refused start as a session-less 'unknown' plus a dialog.
        this._startFailed =
          `${this._attemptName || 'the kernel'} did not start; the error dialog names the ` +
          'reason (e.g. a policy that refused the evidence)';
      }
      void this.refresh();
    } else if (status === 'dead') {
      void this.refresh();
    }
    this._emit();
  }

  /**
   * An event of the server's stream: one about the followed kernel's connection asks again; a
   * step of the start of the followed notebook's kernel is shown while it starts.
   */
  private _onEvent(_: Event.IManager, emission: Event.Emission): void {
    if (connectionEvent(emission, this.kernelId)) {
      void this.refresh();
      return;
    }
    const step = startStepEvent(emission, this._context?.path ?? null);
    if (step && this.phase === 'starting') {
      this._startStep = step;
      this._emit();
    }
  }

  /** While the server reconnects, ask again soon (once per answer, never more than one timer). */
  private _pollWhileReconnecting(): void {
    if (this._soon || this._isDisposed || !isReconnecting(this._attestation)) {
      return;
    }
    this._soon = window.setTimeout(() => {
      this._soon = 0;
      void this.refresh();
    }, RECONNECT_POLL_MS);
  }

  private _onContextDisposed(): void {
    this.follow(null);
  }

  private _confidentialByDisplayName(displayName: string): boolean | null {
    const specs = this._specs.specs;
    if (!specs || !displayName) {
      return null;
    }
    let found: boolean | null = null;
    for (const spec of Object.values(specs.kernelspecs)) {
      if (spec && spec.display_name === displayName) {
        if (specIsConfidential(spec.metadata as { [key: string]: unknown })) {
          return true;
        }
        found = false;
      }
    }
    return found;
  }

  private _emit(): void {
    if (!this._isDisposed) {
      this._changed.emit(undefined);
    }
  }

  private _specs: KernelSpec.IManager;
  private _events: Event.IManager | null;
  private _soon = 0;
  private _startStep: string | null = null;
  private _context: ISessionContext | null = null;
  private _attestation: IKernelAttestation | null = null;
  private _fetchError: string | null = null;
  private _startFailed: string | null = null;
  private _refusal: IRefusal | null = null;
  private _attemptConfidential: boolean | null = null;
  private _attemptName = '';
  private _wasStarting = false;
  private _audit: IAuditEntry[] = [];
  private _auditError: string | null = null;
  private _busy = false;
  private _timer: number;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
}
