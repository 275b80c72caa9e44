// Runs one session through the real sidecar (started by ../run_tests.sh on its simulator, address in
// SIDECAR_ADDR) and checks what the host received.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { runSession, readWav } = require('../host.js');

const sidecar = process.env.SIDECAR_ADDR;

test('one call: transcripts, both tools through ToolHost, reply audio', { timeout: 90_000 }, async () => {
  assert.ok(sidecar, 'SIDECAR_ADDR must name a running sidecar (run ./run_tests.sh)');
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'voice-node-')), 'reply.wav');
  const r = await runSession({ sidecar, out, log: (line) => console.log(line) });

  assert.ok(r.sessionId.startsWith('vs_'), `session id ${r.sessionId}`);
  assert.equal(r.userTranscripts.length, 1);
  assert.match(r.userTranscripts[0], /check my calendar for tomorrow/);

  const texts = r.assistantTranscripts.map((t) => t.text);
  assert.ok(r.assistantTranscripts.some((t) => t.phase === 'PHASE_PREAMBLE'), `phases ${JSON.stringify(r.assistantTranscripts)}`);
  assert.ok(texts.some((t) => /dentist at nine thirty/.test(t)), `assistant said ${JSON.stringify(texts)}`);

  // Both tools ran in this process's ToolHost, with the model's arguments, and finished OK.
  const invoked = r.toolInvocations.map((i) => i.name).sort();
  assert.deepEqual(invoked, ['calendar_lookup', 'crm_update']);
  const cal = r.toolInvocations.find((i) => i.name === 'calendar_lookup');
  assert.equal(JSON.parse(cal.arguments_json).date, 'tomorrow');
  assert.equal(cal.session_id, r.sessionId);
  assert.deepEqual(r.toolCalls.map((c) => c.status), ['TOOL_STATUS_OK', 'TOOL_STATUS_OK']);

  assert.equal(r.endReason, 'client_end');
  assert.equal(r.summary.tool_calls, 2);
  assert.equal(r.interruptions.length, 0);

  // The reply audio: several seconds of it, saved as a readable WAV.
  assert.ok(r.replySeconds > 5, `reply audio ${r.replySeconds} s`);
  const saved = readWav(out);
  assert.equal(saved.rate, 16000);
  assert.equal(saved.pcm.length, r.replyPcm.length);
  assert.ok(saved.pcm.some((b) => b !== 0), 'reply audio is not silence');
});

test('barge-in: Interrupted cuts the answer, the next turn is answered', { timeout: 90_000 }, async () => {
  assert.ok(sidecar, 'SIDECAR_ADDR must name a running sidecar (run ./run_tests.sh)');
  const r = await runSession({ sidecar, bargeIn: true, log: (line) => console.log(line) });

  // The answer after the tools was cut off as soon as the caller spoke again.
  assert.equal(r.interruptions.length, 1, `interruptions ${JSON.stringify(r.interruptions)}`);
  const cut = r.interruptions[0];
  assert.ok(cut.item_id, 'Interrupted names the item');
  assert.ok(!r.assistantTranscripts.some((t) => /dentist/.test(t.text)), 'the interrupted answer has no final transcript');
  // The caller's second turn got its own answer, and the session ended after it.
  assert.equal(r.userTranscripts.length, 2, `user transcripts ${JSON.stringify(r.userTranscripts)}`);
  assert.ok(r.assistantTranscripts.some((t) => /offline realtime simulator/.test(t.text)));
  assert.deepEqual(r.toolInvocations.map((i) => i.name).sort(), ['calendar_lookup', 'crm_update']);
  assert.equal(r.endReason, 'client_end');
  assert.equal(r.summary.interruptions, 1);
  // Reply audio: the preamble and the second answer, with the cut answer kept only up to played_ms.
  assert.ok(r.replySeconds > 3, `reply audio ${r.replySeconds} s`);
  assert.ok(r.replySeconds < 12, `reply audio ${r.replySeconds} s: the cut answer was not flushed`);
});
