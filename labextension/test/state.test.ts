// Unit tests of the pure state logic (node:test, no browser): `jlpm test`.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';

import {
  IKernelAttestation,
  IRefusal,
  IStatusInput,
  SIMULATED_BANNER,
  agentLine,
  auditEntries,
  auditSummary,
  CONNECTION_SCHEMA,
  START_SCHEMA,
  claimRows,
  connectionEvent,
  failureReasons,
  gpuLine,
  isReconnecting,
  pickRefusal,
  refusalDiagnostics,
  refusalList,
  refusalRules,
  relativeTime,
  ruleText,
  specIsConfidential,
  startStepEvent,
  statusView,
  teeName
} from '../src/state';

const NOW = Date.parse('2026-03-01T12:00:00Z');

function verified(over: Partial<IKernelAttestation> = {}): IKernelAttestation {
  return {
    kernel_id: 'k1',
    confidential: true,
    simulated: false,
    evidence_kind: 'snp',
    verdict: { passed: true, policy: 'prod', reasons: [] },
    claims: { tee: 'snp', measurement: 'ab'.repeat(48), debug: false },
    attested_at: '2026-03-01T11:58:00Z',
    gpu: null,
    error: null,
    ...over
  };
}

function input(over: Partial<IStatusInput> = {}): IStatusInput {
  return {
    phase: 'running',
    specConfidential: true,
    attestation: null,
    now: NOW,
    ...over
  };
}

describe('relativeTime', () => {
  it('reads seconds as just now and skew as just now', () => {
    assert.equal(relativeTime('2026-03-01T11:59:30Z', NOW), 'just now');
    assert.equal(relativeTime('2026-03-01T12:05:00Z', NOW), 'just now');
  });
  it('counts minutes, hours and days', () => {
    assert.equal(relativeTime('2026-03-01T11:58:00Z', NOW), '2 min ago');
    assert.equal(relativeTime('2026-03-01T11:59:00Z', NOW), '1 min ago');
    assert.equal(relativeTime('2026-03-01T09:00:00Z', NOW), '3 h ago');
    assert.equal(relativeTime('2026-02-25T12:00:00Z', NOW), '4 d ago');
  });
  it('accepts microseconds and offsets, refuses garbage', () => {
    assert.equal(relativeTime('2026-03-01T11:49:59.123456+00:00', NOW), '10 min ago');
    assert.equal(relativeTime('not a time', NOW), null);
    assert.equal(relativeTime(null, NOW), null);
  });
});

describe('teeName', () => {
  it('names the CPU TEE of each evidence kind', () => {
    assert.equal(teeName('snp'), 'SEV-SNP');
    assert.equal(teeName('az-snp-vtpm'), 'SEV-SNP');
    assert.equal(teeName('sim-snp'), 'SEV-SNP');
    assert.equal(teeName('tdx'), 'TDX');
    assert.equal(teeName('az-tdx-vtpm'), 'TDX');
    assert.equal(teeName(null), 'TEE');
  });
});

describe('statusView', () => {
  it('shows a verified SEV-SNP kernel with its age', () => {
    const v = statusView(input({ attestation: verified() }));
    assert.equal(v.level, 'verified');
    assert.equal(v.label, 'SEV-SNP · verified 2 min ago');
    assert.equal(v.className, 'jp-cc-level-verified');
    assert.equal(v.locked, true);
    assert.match(v.tooltip, /prod/);
  });
  it('shows TDX without a time when attested_at is missing', () => {
    const v = statusView(
      input({ attestation: verified({ evidence_kind: null, claims: { tee: 'az-tdx-vtpm' }, attested_at: null }) })
    );
    assert.equal(v.label, 'TDX · verified');
  });
  it('labels the simulated TEE SIMULATED, never verified hardware', () => {
    const v = statusView(
      input({ attestation: verified({ simulated: true, evidence_kind: 'sim-snp', claims: { tee: 'sim-snp' } }) })
    );
    assert.equal(v.level, 'simulated');
    assert.equal(v.label, 'SIMULATED');
    assert.match(v.tooltip, /not a hardware TEE/);
    assert.equal(v.locked, true);
  });
  it('shows a refused confidential kernel as attestation FAILED with the reason', () => {
    const att: IKernelAttestation = {
      confidential: false,
      error: 'policy default refused the evidence: allow_simulated'
    };
    const v = statusView(input({ attestation: att }));
    assert.equal(v.level, 'failed');
    assert.equal(v.label, 'attestation FAILED');
    assert.match(v.tooltip, /allow_simulated/);
    assert.equal(v.locked, false);
  });
  it('fails closed on confidential without a passed verdict', () => {
    const v = statusView(
      input({ attestation: verified({ verdict: { passed: false, policy: 'p', reasons: ['debug'] } }) })
    );
    assert.equal(v.label, 'attestation FAILED');
    assert.match(v.tooltip, /debug/);
  });
  it('shows a plain kernel as not confidential', () => {
    const v = statusView(
      input({ specConfidential: false, attestation: { confidential: false, error: null } })
    );
    assert.equal(v.level, 'none');
    assert.equal(v.label, 'not confidential');
  });
  it('shows a start refusal as attestation FAILED', () => {
    const v = statusView(input({ phase: 'none', startFailed: 'the kernel did not start' }));
    assert.equal(v.label, 'attestation FAILED');
  });
  it('shows attesting while a confidential kernel starts, then unknown on API errors', () => {
    assert.equal(statusView(input({ phase: 'starting' })).label, 'attesting…');
    assert.equal(
      statusView(input({ phase: 'starting', specConfidential: false })).label,
      'kernel starting'
    );
    const v = statusView(input({ fetchError: '404 Not Found' }));
    assert.equal(v.level, 'unknown');
    assert.match(v.tooltip, /404/);
  });
  it('shows no kernel', () => {
    assert.equal(statusView(input({ phase: 'none' })).label, 'no kernel');
  });
});

describe('panel helpers', () => {
  it('flattens claims into rows, nested with dots, gpu left out', () => {
    const rows = claimRows({
      tee: 'snp',
      reported_tcb: { bootloader: 3, snp: 20 },
      rtmr: ['a', 'b'],
      gpu: { x: 1 },
      host_data: null
    });
    assert.deepEqual(rows, [
      ['tee', 'snp'],
      ['reported_tcb.bootloader', '3'],
      ['reported_tcb.snp', '20'],
      ['rtmr', '["a","b"]'],
      ['host_data', '—']
    ]);
  });
  it('lists failure reasons once each', () => {
    assert.deepEqual(
      failureReasons({
        confidential: false,
        error: 'e',
        verdict: { passed: false, reasons: ['e', 'r'] }
      }),
      ['e', 'r']
    );
    assert.deepEqual(failureReasons(verified()), []);
  });
  it('reads audit answers newest first, in either shape', () => {
    const e = [
      { seq: 1, time: 't1', event: 'attest' },
      { seq: 2, time: 't2', event: 'release', target: 'k', prev: 'x' }
    ];
    assert.deepEqual(
      auditEntries({ entries: e, limit: 20 }).map(x => x.seq),
      [2, 1]
    );
    assert.deepEqual(
      auditEntries(e).map(x => x.seq),
      [2, 1]
    );
    assert.deepEqual(auditEntries({ message: 'no' }), []);
    assert.equal(auditSummary(e[1]), 'target=k');
  });
  it('recognises confidential kernelspecs by their provisioner', () => {
    assert.equal(
      specIsConfidential({ kernel_provisioner: { provisioner_name: 'confidential-provisioner' } }),
      true
    );
    assert.equal(specIsConfidential({ kernel_provisioner: { provisioner_name: 'local-provisioner' } }), false);
    assert.equal(specIsConfidential(undefined), false);
  });
});

function refusal(over: Partial<IRefusal> = {}): IRefusal {
  return {
    kernel_id: 'r1',
    kernel_name: 'cc-sim-refused',
    display_name: 'Confidential Python (refused)',
    path: 'cc-sim.ipynb',
    refused_at: '2026-03-01T11:59:00Z',
    check: 'policy',
    sentence: "Confidential kernel not started: policy 'default' refused the sim-snp TEE.",
    message:
      "Confidential kernel not started: policy 'default' refused the sim-snp TEE.\n" +
      '- allow_simulated: expected a hardware TEE, observed SIMULATED evidence',
    rules: [
      { rule: 'allow_simulated', expected: 'a hardware TEE', observed: 'SIMULATED evidence' }
    ],
    policy: 'default',
    evidence_kind: 'sim-snp',
    simulated: true,
    claims: { tee: 'sim-snp', measurement: 'ab'.repeat(48), tcb: { snp: 8 } },
    ...over
  };
}

describe('refusals', () => {
  it('reads the refusals answer and keeps only well-formed rules', () => {
    assert.deepEqual(refusalList({ refusals: [refusal(), { nope: 1 }, null] }), [refusal()]);
    assert.deepEqual(refusalList([refusal()]), [refusal()]);
    assert.deepEqual(refusalList({ refusals: 'x' }), []);
    assert.deepEqual(refusalList(null), []);
    const odd = refusal({
      rules: [
        { rule: 'a', expected: 'x', observed: 'y' },
        { rule: 'b' } as unknown as { rule: string; expected: string; observed: string }
      ]
    });
    assert.deepEqual(refusalRules(odd).map(r => r.rule), ['a']);
    assert.deepEqual(refusalRules(refusal({ rules: null })), []);
    assert.equal(
      ruleText(refusalRules(refusal())[0]),
      'allow_simulated: expected a hardware TEE, observed SIMULATED evidence'
    );
  });

  it('picks the newest refusal of this kernelspec and notebook', () => {
    const other = refusal({ kernel_id: 'r0', path: 'other.ipynb' });
    const mine = refusal({ kernel_id: 'r2' });
    const noPath = refusal({ kernel_id: 'r3', path: null });
    const elsewhere = refusal({ kernel_id: 'r4', kernel_name: 'cc-x', display_name: 'X' });
    const body = { refusals: [elsewhere, other, mine, noPath] };
    const query = {
      kernelNames: ['cc-sim-refused'],
      displayName: 'Confidential Python (refused)',
      path: 'cc-sim.ipynb'
    };
    assert.equal(pickRefusal(body, query)?.kernel_id, 'r2');
    assert.equal(pickRefusal(body, { ...query, path: '/cc-sim.ipynb' })?.kernel_id, 'r2');
    // Path unknown on either side: the newest of the kernelspec.
    assert.equal(pickRefusal(body, { ...query, path: null })?.kernel_id, 'r0');
    assert.equal(pickRefusal({ refusals: [noPath] }, query)?.kernel_id, 'r3');
    // By display name when the kernelspec name is not known.
    assert.equal(
      pickRefusal(body, { kernelNames: [], displayName: 'X', path: 'cc-sim.ipynb' })?.kernel_id,
      'r4'
    );
    assert.equal(pickRefusal(body, { kernelNames: ['nope'], displayName: 'nope' }), null);
    assert.equal(pickRefusal({ refusals: [other] }, query), null);
  });

  it('writes the full diagnostics: the dialog text, fields, rules and claims', () => {
    const text = refusalDiagnostics(refusal());
    const lines = text.split('\n');
    assert.equal(lines[0], "Confidential kernel not started: policy 'default' refused the sim-snp TEE.");
    assert.equal(lines[1], '- allow_simulated: expected a hardware TEE, observed SIMULATED evidence');
    for (const want of [
      'kernel: Confidential Python (refused)',
      'kernelspec: cc-sim-refused',
      'kernel id: r1',
      'notebook: cc-sim.ipynb',
      'refused at: 2026-03-01T11:59:00Z',
      'failed check: policy',
      'policy: default',
      'evidence kind: sim-snp',
      SIMULATED_BANNER,
      '- allow_simulated',
      '  expected: a hardware TEE',
      '  observed: SIMULATED evidence',
      `  measurement: ${'ab'.repeat(48)}`,
      '  tcb.snp: 8'
    ]) {
      assert.ok(lines.includes(want), `missing line ${JSON.stringify(want)} in\n${text}`);
    }
    const plain = refusalDiagnostics(
      refusal({ message: null, rules: [], claims: null, simulated: false, path: null })
    );
    assert.ok(plain.startsWith(refusal().sentence));
    assert.ok(!plain.includes('failed rules') && !plain.includes('claims'));
    assert.ok(!plain.includes('notebook:') && !plain.includes(SIMULATED_BANNER));
  });

  it('puts the refusal sentence and its rules in the status tooltip', () => {
    const v = statusView(
      input({ phase: 'none', startFailed: 'x did not start', refusal: refusal() })
    );
    assert.equal(v.level, 'failed');
    assert.equal(v.label, 'attestation FAILED');
    assert.equal(
      v.tooltip,
      "Confidential Python (refused): Confidential kernel not started: policy 'default' " +
        'refused the sim-snp TEE.\nallow_simulated: expected a hardware TEE, observed SIMULATED evidence'
    );
    const before = statusView(input({ phase: 'none', startFailed: 'x did not start' }));
    assert.match(before.tooltip, /refused at start: x did not start/);
  });
});

describe('gpuLine', () => {
  it('shows each GPU with what was checked and its own verdict', () => {
    const ok = {
      index: 0,
      arch: 'hopper',
      driver_version: '545.00',
      rim: 'verified',
      revocation: 'checked',
      passed: true,
      reasons: []
    };
    assert.equal(gpuLine(ok), 'hopper, driver 545.00, RIM verified, revocation checked: passed');
    const bad = {
      index: 1,
      rim: 'unchecked',
      passed: false,
      reasons: ['gpu[1].rim: expected x, observed unchecked']
    };
    assert.equal(gpuLine(bad), 'RIM unchecked, revocation unchecked: failed (rim)');
  });
});

describe('reconnecting (issue 14)', () => {
  const base: IStatusInput = {
    phase: 'running',
    specConfidential: true,
    kernelName: 'CVM',
    attestation: null,
    now: NOW
  };

  it('shows "reconnecting" while the connection is re-established, then the usual state', () => {
    const during = verified({
      agent: { resident: true, reconnecting: true, reconnects: 0 }
    });
    const v = statusView({ ...base, attestation: during });
    assert.equal(v.level, 'pending');
    assert.equal(v.label, 'reconnecting…');
    assert.match(v.tooltip, /reconnecting and attesting again/);
    assert.match(v.tooltip, /variables are kept/);
    assert.equal(isReconnecting(during), true);

    const after = verified({
      attested_at: '2026-03-01T11:59:30Z',
      agent: { resident: true, reconnecting: false, reconnects: 1 }
    });
    const back = statusView({ ...base, attestation: after });
    assert.notEqual(back.label, 'reconnecting…');
    assert.equal(back.level, statusView({ ...base, attestation: verified() }).level);
    assert.equal(isReconnecting(after), false);
  });

  it("reads the server's connection events for the followed kernel only", () => {
    const ev = (over: { [key: string]: unknown }) => ({
      schema_id: CONNECTION_SCHEMA,
      kernel_id: 'k1',
      state: 'reconnecting',
      ...over
    });
    assert.equal(connectionEvent(ev({}), 'k1'), 'reconnecting');
    assert.equal(connectionEvent(ev({ state: 'reconnected' }), 'k1'), 'reconnected');
    assert.equal(connectionEvent(ev({ state: 'lost' }), 'k1'), 'lost');
    assert.equal(connectionEvent(ev({}), 'k2'), null, "another kernel's event");
    assert.equal(connectionEvent(ev({}), null), null, 'no kernel followed');
    assert.equal(connectionEvent(ev({ schema_id: 'https://events.jupyter.org/x/v1' }), 'k1'), null);
    assert.equal(connectionEvent(ev({ state: 'exploded' }), 'k1'), null);
    assert.equal(connectionEvent(ev({ state: 1 }), 'k1'), null);
    assert.equal(connectionEvent(null, 'k1'), null);
  });

  it("reads a start step for the followed notebook's kernel only", () => {
    const ev = (over: { [key: string]: unknown }) => ({
      schema_id: START_SCHEMA,
      kernel_id: 'k1',
      kernel_name: 'cc-lab',
      path: 'work/lab.ipynb',
      step: 'starting the CVM lab (deallocated); this takes a minute or two',
      ...over
    });
    assert.equal(startStepEvent(ev({}), 'work/lab.ipynb'), ev({}).step);
    assert.equal(startStepEvent(ev({}), 'other.ipynb'), null, "another notebook's kernel");
    assert.equal(startStepEvent(ev({}), null), null);
    assert.equal(startStepEvent(ev({ path: '' }), ''), null, 'a kernel without a notebook');
    assert.equal(startStepEvent(ev({ schema_id: CONNECTION_SCHEMA }), 'work/lab.ipynb'), null);
    assert.equal(startStepEvent(ev({ step: 3 }), 'work/lab.ipynb'), null);
  });

  it('shows the start step while the CVM is reached, then the attestation as usual', () => {
    const starting = {
      phase: 'starting' as const,
      specConfidential: true,
      kernelName: 'Confidential (lab)',
      attestation: null,
      now: NOW
    };
    const step = 'starting the CVM lab (deallocated); this takes a minute or two';
    const v = statusView({ ...starting, startStep: step });
    assert.equal(v.label, 'starting CVM…');
    assert.equal(v.level, 'pending');
    assert.equal(v.locked, false);
    assert.match(v.tooltip, /Confidential \(lab\): the confidential VM is being reached/);
    assert.ok(v.tooltip.includes(step));
    assert.equal(statusView(starting).label, 'attesting…');
    // Once attested, the step no longer speaks for the kernel.
    const up = statusView({ ...starting, phase: 'running', attestation: verified(), startStep: step });
    assert.notEqual(up.label, 'starting CVM…');
    // A step (an event anyone with the server's token could post) never stands for a verdict.
    const posted = statusView({ ...starting, startStep: 'the CVM is verified' });
    assert.equal(posted.level, 'pending');
    assert.equal(posted.locked, false);
    const late = statusView({ ...starting, phase: 'running', startStep: step });
    assert.notEqual(late.label, 'starting CVM…');
    assert.equal(late.locked, false);
  });

  it('counts earlier reconnects in the tooltip', () => {
    const v = statusView({
      ...base,
      attestation: verified({ agent: { resident: true, reconnecting: true, reconnects: 2 } })
    });
    assert.match(v.tooltip, /reconnected 2× before/);
  });

  it('a failed reconnect shows FAILED, not reconnecting', () => {
    const v = statusView({
      ...base,
      attestation: {
        kernel_id: 'k1',
        confidential: false,
        error: 'the CVM could not be reached again before the kernel\'s orphan timeout',
        agent: null
      }
    });
    assert.equal(v.level, 'failed');
  });

  it('describes the agent in one line', () => {
    assert.equal(agentLine(null), null);
    assert.equal(agentLine({ resident: false }), 'per-connection agent');
    assert.equal(
      agentLine({ resident: true, warm: true, curve: true, reconnects: 2 }),
      'resident agent · warm pool · CurveZMQ (attested key) · reconnected 2×'
    );
    assert.equal(
      agentLine({ resident: true, reconnecting: true, restored: true }),
      'resident agent · restored after a server restart · reconnecting…'
    );
  });
});
