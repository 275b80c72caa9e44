#!/usr/bin/env node
// A voice-sidecar host in Node: runs a ToolHost gRPC server with two tools (calendar_lookup and
// crm_update), opens one Converse stream, streams a mono 16-bit WAV in real time in 20 ms frames
// (then silence, like an open phone line), prints transcripts and events, ends the session once the
// assistant has answered after its tool calls, and writes the assistant's audio to a WAV file.
//
// Copy this file and proto/ into your service; the stubs are built at run time from the .proto by
// @grpc/proto-loader, so there is no code generation step.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.VOICE_PROTO_ROOT || path.resolve(__dirname, '../../proto');

function loadProto(root = PROTO_ROOT) {
  const def = protoLoader.loadSync('voice/v1/sidecar.proto', {
    includeDirs: [root],
    keepCase: true, // field names as in the .proto (tool_call_started, sample_rate_hz, …)
    enums: String, // enums as their names ('ROLE_USER')
    longs: Number,
    defaults: true,
    oneofs: true, // msg.message names the member of the oneof that is set
  });
  return grpc.loadPackageDefinition(def).voice.v1;
}

// ---------------------------------------------------------------------------------------------------
// Tools. Latencies are artificial, to show that the sidecar runs parallel calls in parallel.
// ---------------------------------------------------------------------------------------------------

const TOOLS = [
  {
    name: 'calendar_lookup',
    description: "Look up the caller's calendar events for a date.",
    parameters_json_schema: JSON.stringify({
      type: 'object',
      properties: { date: { type: 'string' } },
      required: ['date'],
    }),
    timeout_ms: 5000,
  },
  {
    name: 'crm_update',
    description: "Add a note to the caller's CRM record.",
    parameters_json_schema: JSON.stringify({
      type: 'object',
      properties: { contact: { type: 'string' }, note: { type: 'string' } },
      required: ['contact', 'note'],
    }),
    timeout_ms: 5000,
  },
];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function runTool(name, args) {
  switch (name) {
    case 'calendar_lookup':
      await sleep(600);
      return {
        date: args.date,
        events: [
          { time: '09:30', title: 'Dentist' },
          { time: '14:00', title: 'Project review with Dana' },
        ],
      };
    case 'crm_update':
      await sleep(400);
      return { status: 'saved', contact: args.contact, note_id: 'N-1042' };
    default:
      throw new Error(`no such tool ${name}`);
  }
}

// Starts the ToolHost server on `listen` ("127.0.0.1:0" picks a free port). `onInvoke` sees every
// invocation (the test uses it). Resolves to { server, address }.
function startToolHost(pb, listen = '127.0.0.1:0', onInvoke = () => {}) {
  const server = new grpc.Server();
  server.addService(pb.ToolHost.service, {
    Invoke(call, callback) {
      const inv = call.request;
      onInvoke(inv);
      let args = {};
      try {
        args = JSON.parse(inv.arguments_json || '{}');
      } catch {
        // the sidecar validates arguments against the schema; keep {} for safety
      }
      runTool(inv.name, args).then(
        (out) => callback(null, { output_json: JSON.stringify(out) }),
        // A tool failure goes back to the model as an error it can talk about, not as an RPC error.
        (err) => callback(null, { error: String(err.message || err) }),
      );
    },
  });
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) return reject(err);
      const host = listen.slice(0, listen.lastIndexOf(':'));
      resolve({ server, address: `${host}:${port}` });
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// WAV in and out (mono PCM16 only).
// ---------------------------------------------------------------------------------------------------

function readWav(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('ascii', 0, 4) !== 'RIFF' || buf.toString('ascii', 8, 12) !== 'WAVE') {
    throw new Error(`${file} is not a WAV file`);
  }
  let fmt = null;
  for (let off = 12; off + 8 <= buf.length; ) {
    const id = buf.toString('ascii', off, off + 4);
    const size = buf.readUInt32LE(off + 4);
    const body = off + 8;
    if (id === 'fmt ') {
      fmt = {
        format: buf.readUInt16LE(body),
        channels: buf.readUInt16LE(body + 2),
        rate: buf.readUInt32LE(body + 4),
        bits: buf.readUInt16LE(body + 14),
      };
    } else if (id === 'data') {
      if (!fmt || fmt.format !== 1 || fmt.channels !== 1 || fmt.bits !== 16) {
        throw new Error(`${file} must be mono 16-bit PCM`);
      }
      return { pcm: buf.subarray(body, Math.min(body + size, buf.length)), rate: fmt.rate };
    }
    off = body + size + (size % 2);
  }
  throw new Error(`${file} has no data chunk`);
}

function writeWav(file, pcm, rate) {
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'ascii');
  h.writeUInt32LE(36 + pcm.length, 4);
  h.write('WAVEfmt ', 8, 'ascii');
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(1, 22); // mono
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 2, 28);
  h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34);
  h.write('data', 36, 'ascii');
  h.writeUInt32LE(pcm.length, 40);
  fs.writeFileSync(file, Buffer.concat([h, pcm]));
}

// ---------------------------------------------------------------------------------------------------
// One session.
// ---------------------------------------------------------------------------------------------------

// Runs one Converse session and resolves to what happened:
//   { sessionId, userTranscripts, assistantTranscripts, toolCalls, toolInvocations, interruptions,
//     replyPcm, replySeconds, endReason, summary }
async function runSession({
  sidecar = '127.0.0.1:50051',
  wav = path.resolve(__dirname, '../../services/demo/assets/sample-16k.wav'),
  out = null,
  toolsListen = '127.0.0.1:0',
  timeoutSecs = 60,
  // Test hook: speak the WAV again as soon as the answer after the tool calls starts playing, to
  // barge in on it (the sidecar then sends Interrupted).
  bargeIn = false,
  log = console.log,
} = {}) {
  const pb = loadProto();
  const { pcm, rate } = readWav(wav);
  const toolInvocations = [];
  const tools = await startToolHost(pb, toolsListen, (inv) => toolInvocations.push(inv));

  const client = new pb.VoiceSidecar(sidecar, grpc.credentials.createInsecure());
  // The sidecar may still be starting: wait for the channel for a few seconds.
  await new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + 10_000, (err) =>
      err ? reject(new Error(`could not reach the sidecar at ${sidecar}: ${err.message}`)) : resolve(),
    ),
  );

  const t0 = Date.now();
  const stamp = () => `[${String(Date.now() - t0).padStart(6)} ms]`;
  const call = client.Converse();
  const fmt = { codec: 'CODEC_PCM16', sample_rate_hz: rate, channels: 1, frame_ms: 20 };
  call.write({
    start: {
      input_format: fmt,
      output_format: fmt,
      instructions: 'You are a helpful phone assistant for a small business.',
      tools: TOOLS,
      model: 'gpt-realtime-2',
      reasoning: { effort: 'REASONING_EFFORT_LOW' },
      parallel_tool_calls: true,
      tool_routing: { callback_address: `http://${tools.address}` },
    },
  });
  log(`${stamp()} streaming ${(pcm.length / 2 / rate).toFixed(2)} s of speech at ${rate} Hz in 20 ms frames`);

  // The "microphone": the WAV in real time, then silence. Each frame is scheduled against the start
  // time, so timer jitter does not accumulate.
  let micOn = true;
  let speakFrom = 1; // the frame at which the WAV (re)starts
  const frameBytes = (rate / 50) * 2;
  const silence = Buffer.alloc(frameBytes);
  let seq = 1;
  (async () => {
    for (; micOn; seq++) {
      const start = (seq - speakFrom) * frameBytes;
      const data = start < pcm.length ? pcm.subarray(start, start + frameBytes) : silence;
      call.write({ audio: { data, seq } });
      const wait = t0 + seq * 20 - Date.now();
      if (wait > 0) await sleep(wait);
    }
  })();

  // Reply audio kept per assistant item, so that an Interrupted can cut an item at what was heard.
  const items = new Map(); // item_id -> Buffer[]
  const result = {
    sessionId: '',
    userTranscripts: [],
    assistantTranscripts: [],
    toolCalls: [],
    toolInvocations,
    interruptions: [],
    endReason: '',
    summary: null,
  };
  let pending = 0;
  let toolRoundsDone = 0;
  let ending = false;

  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      call.cancel();
      reject(new Error(`no end of conversation within ${timeoutSecs} s`));
    }, timeoutSecs * 1000);
    call.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    call.on('end', () => {
      clearTimeout(timer);
      resolve();
    });
    call.on('data', (m) => {
      const ev = m[m.message];
      switch (m.message) {
        case 'started':
          result.sessionId = ev.session_id;
          log(`${stamp()} session ${ev.session_id} started: model ${ev.model}, upstream audio ${ev.upstream_audio_format}`);
          break;
        case 'speech_started':
          log(`${stamp()} user started speaking`);
          break;
        case 'speech_stopped':
          log(`${stamp()} user stopped speaking (at ${ev.audio_end_ms} ms of input audio)`);
          break;
        case 'transcript':
          if (!ev.final) break;
          if (ev.role === 'ROLE_USER') {
            result.userTranscripts.push(ev.text);
            log(`${stamp()} USER:      ${ev.text}`);
          } else if (ev.role === 'ROLE_ASSISTANT') {
            result.assistantTranscripts.push({ text: ev.text, phase: ev.phase });
            log(`${stamp()} ASSISTANT (${ev.phase.replace('PHASE_', '').toLowerCase()}): ${ev.text}`);
          }
          break;
        case 'audio': {
          if (bargeIn && toolRoundsDone > 0 && speakFrom === 1) {
            speakFrom = seq;
            log(`${stamp()} barging in: speaking again over the answer`);
          }
          if (!items.has(ev.item_id)) items.set(ev.item_id, []);
          items.get(ev.item_id).push(ev.data);
          break;
        }
        case 'interrupted': {
          // Barge-in: a player would flush its buffer now. Here the saved reply keeps only what the
          // caller heard of the item, and drops the items that were never heard.
          result.interruptions.push(ev);
          const keep = Math.floor((ev.played_ms * rate) / 1000) * 2;
          const heard = Buffer.concat(items.get(ev.item_id) || []).subarray(0, keep);
          items.set(ev.item_id, [heard]);
          for (const id of ev.deleted_item_ids) items.delete(id);
          log(`${stamp()} interrupted: ${ev.item_id} at ${ev.played_ms} ms`);
          break;
        }
        case 'tool_call_started':
          pending++;
          result.toolCalls.push({ callId: ev.call_id, name: ev.name, arguments: JSON.parse(ev.arguments_json || '{}') });
          log(`${stamp()} tool call  ${ev.call_id} ${ev.name}(${ev.arguments_json})`);
          break;
        case 'tool_call_finished':
          pending = Math.max(0, pending - 1);
          for (const c of result.toolCalls) if (c.callId === ev.call_id) c.status = ev.status;
          log(`${stamp()} tool done  ${ev.call_id} ${ev.name} ${ev.status} in ${ev.duration_ms} ms`);
          if (pending === 0) toolRoundsDone++;
          break;
        case 'response_done':
          log(`${stamp()} response ${ev.response_id} ${ev.status}, voice-to-voice ${ev.voice_to_voice_ms} ms`);
          // A completed answer after the tool round is the end of this demo conversation.
          if (ev.status === 'completed' && toolRoundsDone > 0 && pending === 0 && !ending) {
            ending = true;
            call.write({ control: { end: {} } });
          }
          break;
        case 'error':
          log(`${stamp()} error ${ev.code}: ${ev.message}`);
          break;
        case 'ended':
          result.endReason = ev.reason;
          result.summary = ev.summary;
          log(`${stamp()} session ended (${ev.reason}): ${ev.summary.turns} turn(s), ${ev.summary.tool_calls} tool call(s)`);
          micOn = false;
          call.end();
          break;
        default:
          log(`${stamp()} ${m.message}`);
      }
    });
  });

  try {
    await done;
  } finally {
    micOn = false;
    client.close();
    tools.server.forceShutdown();
  }
  result.replyPcm = Buffer.concat([...items.values()].flat());
  result.replySeconds = result.replyPcm.length / 2 / rate;
  if (out) {
    writeWav(out, result.replyPcm, rate);
    log(`assistant audio: ${result.replySeconds.toFixed(2)} s written to ${out}`);
  }
  return result;
}

module.exports = { loadProto, startToolHost, runSession, readWav, writeWav, TOOLS };

if (require.main === module) {
  const opts = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = { '--sidecar': 'sidecar', '--wav': 'wav', '--out': 'out', '--tools-listen': 'toolsListen' }[argv[i]];
    if (!key || argv[i + 1] === undefined) {
      console.error('usage: node host.js [--sidecar HOST:PORT] [--wav FILE] [--out FILE] [--tools-listen HOST:PORT]');
      process.exit(2);
    }
    opts[key] = argv[i + 1];
  }
  opts.out = opts.out || 'reply.wav';
  runSession(opts).catch((err) => {
    console.error(err.message || err);
    process.exit(1);
  });
}
