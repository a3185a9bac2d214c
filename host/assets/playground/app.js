// The playground page: sets up a call, then acts as Twilio on /ws (connected, start, media,
// mark echoes, stop) while the call's events stream in over SSE for the transcript, the VAD
// state and the per-turn latencies. `#state` holds the call state as JSON for tests.

import { Player, startCapture } from './audio.js';

const $ = (id) => document.getElementById(id);
const ui = {
  persona: $('persona'),
  call: $('call'),
  hangup: $('hangup'),
  status: $('status'),
  vad: $('vad'),
  botState: $('bot-state'),
  micLevel: $('mic-level'),
  botLevel: $('bot-level'),
  transcript: $('transcript'),
  interim: $('interim'),
  latency: document.querySelector('#latency tbody'),
  notice: $('notice'),
  state: $('state'),
  providers: $('providers'),
};

/** How long to wait for the server to close the socket after our `stop`. */
const STOP_GRACE_MS = 2000;

function freshState() {
  return {
    phase: 'idle', // idle → connecting → in-call → ended
    persona: null,
    personaServing: null,
    callSid: null,
    streamSid: null,
    connected: false,
    framesSent: 0,
    framesReceived: 0,
    rmsCaptured: 0,
    rmsPlayed: 0,
    botSpurts: 0,
    marksReceived: 0,
    marksEchoed: 0,
    clears: 0,
    vad: 'silent',
    vadChanges: [],
    interim: '',
    lines: [],
    ended: false,
    outcome: null,
    detail: null,
    closeCode: null,
    error: null,
  };
}

let S = freshState();
let call = null; // the live call's resources

// --- state publishing -------------------------------------------------------------------------

let publishPending = false;
function publish() {
  if (publishPending) return;
  publishPending = true;
  setTimeout(() => {
    publishPending = false;
    ui.state.textContent = JSON.stringify(S, null, 1);
    ui.state.dataset.phase = S.phase;
    ui.state.dataset.ended = S.ended ? '1' : '0';
    ui.state.dataset.lines = String(S.lines.length);
  }, 30);
}

function setStatus(text) {
  ui.status.textContent = text;
}

function showNotice(text, isError = false) {
  ui.notice.textContent = text;
  ui.notice.classList.toggle('error', isError);
  ui.notice.hidden = !text;
}

function setPhase(phase) {
  S.phase = phase;
  ui.call.disabled = phase === 'connecting' || phase === 'in-call';
  ui.hangup.disabled = phase !== 'connecting' && phase !== 'in-call';
  ui.persona.disabled = ui.call.disabled;
  publish();
}

// --- personas ---------------------------------------------------------------------------------

async function loadPersonas() {
  try {
    const resp = await fetch('/playground/personas');
    if (!resp.ok) throw new Error(`${resp.status} ${await resp.text()}`);
    const { personas, providers } = await resp.json();
    if (Array.isArray(providers)) ui.providers.textContent = `Runs on: ${providers.join(' · ')}`;
    ui.persona.replaceChildren(
      ...personas.map((name) => {
        const o = document.createElement('option');
        o.value = name;
        o.textContent = name;
        return o;
      }),
    );
    const wanted = new URLSearchParams(location.search).get('persona');
    if (wanted && personas.includes(wanted)) ui.persona.value = wanted;
    ui.persona.disabled = false;
    ui.call.disabled = false;
    setStatus('Ready. Pick a persona and press Call.');
  } catch (e) {
    setStatus('Could not load personas.');
    showNotice(`Loading personas failed: ${e.message}`, true);
  }
}

// --- rendering --------------------------------------------------------------------------------

const fmt = (ms) => (typeof ms === 'number' ? `${Math.round(ms)} ms` : '–');

function renderLine(line) {
  const li = document.createElement('li');
  li.className = line.role + (line.interrupted ? ' interrupted' : '');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = line.role === 'user' ? 'You' : 'Bot';
  li.append(who, document.createTextNode(line.text + (line.interrupted ? ' …' : '')));
  const l = line.latency;
  if (l) {
    const lat = document.createElement('span');
    lat.className = 'lat';
    lat.textContent = `STT ${fmt(l.stt_final_ms)} · LLM ${fmt(l.llm_first_token_ms)} · TTS ${fmt(l.tts_first_byte_ms)} · voice to voice ${fmt(l.voice_to_voice_ms)}`;
    li.append(lat);
    renderLatencyRow(l);
  }
  ui.transcript.append(li);
  li.scrollIntoView({ block: 'nearest' });
}

function renderLatencyRow(l) {
  const tr = document.createElement('tr');
  const cells = [String(ui.latency.children.length + 1), fmt(l.stt_final_ms), fmt(l.llm_first_token_ms), fmt(l.tts_first_byte_ms)];
  for (const text of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    tr.append(td);
  }
  const v2v = document.createElement('td');
  v2v.className = 'v2v';
  if (typeof l.voice_to_voice_ms === 'number') {
    const bar = document.createElement('span');
    bar.className = 'bar-inline';
    bar.style.width = `${Math.min(120, l.voice_to_voice_ms / 25)}px`; // 3 s → full width
    v2v.append(bar);
  }
  v2v.append(document.createTextNode(fmt(l.voice_to_voice_ms)));
  tr.append(v2v);
  ui.latency.append(tr);
}

function setSpeaking(el, speaking, on, off) {
  el.dataset.speaking = speaking ? '1' : '0';
  el.textContent = speaking ? on : off;
}

function level(el, rms) {
  // ~ -50 dBFS → empty, 0 dBFS → full.
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  el.style.width = `${Math.max(0, Math.min(100, ((db + 50) / 50) * 100))}%`;
}

// --- call events (SSE) ------------------------------------------------------------------------

function onCallEvent(e) {
  switch (e.type) {
    case 'started':
      break;
    case 'persona':
      S.personaServing = e.name;
      setStatus(`In call with ${e.name} — talk to the bot.`);
      break;
    case 'vad':
      S.vad = e.speaking ? 'speaking' : 'silent';
      S.vadChanges.push(e.speaking);
      setSpeaking(ui.vad, e.speaking, 'speaking', 'silent');
      break;
    case 'interim':
      S.interim = e.text;
      ui.interim.textContent = e.text;
      break;
    case 'line': {
      const line = {
        role: e.role,
        text: e.text,
        interrupted: e.interrupted,
        start_ms: e.start_ms,
        end_ms: e.end_ms,
        latency: e.latency ?? null,
        // What had been heard when the line arrived, so "heard after this line" can be told.
        framesReceivedAt: S.framesReceived,
        botSpurtsAt: S.botSpurts,
      };
      S.lines.push(line);
      if (line.role === 'user') {
        S.interim = '';
        ui.interim.textContent = '';
      }
      renderLine(line);
      break;
    }
    case 'ended':
      S.outcome = e.outcome;
      S.detail = e.detail ?? null;
      if (e.outcome === 'transferred') {
        showNotice(`The bot transferred the call to ${e.detail}. A browser call can't be transferred to a phone, so the call ended here.`);
      }
      call?.events.close();
      break;
    default:
      break;
  }
  publish();
}

// --- the call ---------------------------------------------------------------------------------

async function startCall() {
  S = freshState();
  S.persona = ui.persona.value;
  ui.transcript.replaceChildren();
  ui.latency.replaceChildren();
  ui.interim.textContent = '';
  showNotice('');
  setPhase('connecting');
  setStatus('Starting the microphone…');
  const c = { seq: 0, chunk: 0, started: false, closing: null };
  call = c;
  try {
    // Created inside the click handler, so autoplay rules let it run.
    c.ctx = new AudioContext({ latencyHint: 'interactive' });
    await c.ctx.resume();
    const mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    c.player = new Player(c.ctx, {
      onMarkPlayed: (name) => {
        if (send(c, { event: 'mark', streamSid: c.setup.stream_sid, mark: { name } })) S.marksEchoed++;
        publish();
      },
      onLevel: (rms) => {
        level(ui.botLevel, rms);
        setSpeaking(ui.botState, c.player.inSpurt, 'talking', 'quiet');
        if (rms > S.rmsPlayed || c.player.spurts !== S.botSpurts) {
          S.rmsPlayed = Math.max(S.rmsPlayed, rms);
          S.botSpurts = c.player.spurts;
          publish();
        }
      },
    });
    c.capture = await startCapture(c.ctx, mic, (frame, rms) => onMicFrame(c, frame, rms));

    setStatus('Setting up the call…');
    const resp = await fetch('/playground/call', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ persona: S.persona }),
    });
    const setup = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(setup.error || `setting up the call failed (${resp.status})`);
    c.setup = setup;
    S.callSid = setup.call_sid;
    S.streamSid = setup.stream_sid;

    c.events = new EventSource(setup.events_url);
    c.events.onmessage = (m) => onCallEvent(JSON.parse(m.data));
    await new Promise((resolve) => {
      c.events.onopen = resolve;
      c.events.onerror = resolve; // the call still works without the live view
      setTimeout(resolve, 3000);
    });
    c.events.onerror = () => {
      if (c.events.readyState === EventSource.CLOSED) c.events.close();
    };

    setStatus('Connecting…');
    const wsUrl = new URL(setup.ws_path, location.href.replace(/^http/, 'ws'));
    c.ws = new WebSocket(wsUrl);
    c.ws.onopen = () => onOpen(c);
    c.ws.onmessage = (m) => onServerMessage(c, m.data);
    c.ws.onclose = (e) => finish(c, e.code, e.reason);
    c.ws.onerror = () => {
      S.error = S.error || 'WebSocket error';
    };
  } catch (e) {
    S.error = e.message || String(e);
    showNotice(`The call could not start: ${S.error}`, true);
    finish(c, null, '');
  }
}

function send(c, msg) {
  if (!c.ws || c.ws.readyState !== WebSocket.OPEN) return false;
  if (msg.event !== 'connected') msg.sequenceNumber = String(++c.seq);
  c.ws.send(JSON.stringify(msg));
  return true;
}

function onOpen(c) {
  const s = c.setup;
  send(c, { event: 'connected', protocol: 'Call', version: '1.0.0' });
  send(c, {
    event: 'start',
    streamSid: s.stream_sid,
    start: {
      accountSid: s.account_sid,
      streamSid: s.stream_sid,
      callSid: s.call_sid,
      tracks: ['inbound', 'outbound'],
      customParameters: s.parameters,
      mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
    },
  });
  c.started = true;
  S.connected = true;
  setPhase('in-call');
  setStatus('In call — talk to the bot.');
}

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function onMicFrame(c, frame, rms) {
  level(ui.micLevel, rms);
  if (!c.started || c.closing) return;
  c.chunk++;
  const sent = send(c, {
    event: 'media',
    streamSid: c.setup.stream_sid,
    media: { track: 'inbound', chunk: String(c.chunk), timestamp: String((c.chunk - 1) * 20), payload: toBase64(frame) },
  });
  if (sent) {
    S.framesSent++;
    S.rmsCaptured = Math.max(S.rmsCaptured, rms);
    if (S.framesSent % 10 === 0) publish();
  }
}

function onServerMessage(c, text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return;
  }
  switch (msg.event) {
    case 'media':
      c.player.enqueue(fromBase64(msg.media.payload));
      S.framesReceived++;
      if (S.framesReceived % 10 === 1) publish();
      break;
    case 'mark':
      S.marksReceived++;
      c.player.mark(msg.mark.name);
      break;
    case 'clear':
      S.clears++;
      c.player.clear();
      break;
    default:
      break;
  }
}

/** The caller hangs up: `stop`, as Twilio sends it, then wait for the server to close. */
function hangUp() {
  const c = call;
  if (!c) return;
  if (!c.ws || c.ws.readyState !== WebSocket.OPEN) {
    finish(c, null, '');
    return;
  }
  c.closing = true;
  send(c, { event: 'stop', streamSid: c.setup.stream_sid, stop: { accountSid: c.setup.account_sid, callSid: c.setup.call_sid } });
  setStatus('Hanging up…');
  setTimeout(() => c.ws.readyState !== WebSocket.CLOSED && c.ws.close(1000, 'caller hung up'), STOP_GRACE_MS);
}

function finish(c, code, reason) {
  if (c.finished) return;
  c.finished = true;
  S.connected = false;
  S.ended = true;
  S.closeCode = code;
  // The server names the outcome in its close frame; the `ended` event may still be on its way.
  if (!S.outcome && reason) S.outcome = reason;
  c.capture?.stop();
  // Let the last words play out before the audio stops.
  const tail = c.player ? Math.min(c.player.queuedSeconds(), 5) : 0;
  setTimeout(() => {
    c.player?.stop();
    c.ctx?.close();
  }, tail * 1000 + 300);
  // The `ended` event closes the feed; this is for a call that never got that far.
  setTimeout(() => c.events?.close(), 5000);
  setPhase('ended');
  const how = {
    caller_hung_up: 'You hung up.',
    bot_hung_up: 'The bot ended the call.',
    transferred: 'The bot transferred the call.',
    failed: 'The call failed.',
  };
  setStatus(`Call ended. ${how[S.outcome] ?? ''}${code && code !== 1000 ? ` (closed with ${code} ${reason})` : ''}`);
  if (call === c) call = null;
}

ui.call.addEventListener('click', startCall);
ui.hangup.addEventListener('click', hangUp);
window.addEventListener('pagehide', hangUp);
publish();
loadPersonas();
