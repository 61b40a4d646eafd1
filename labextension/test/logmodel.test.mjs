// Unit tests of the Kernel Log's model (no DOM, no JupyterLab): jlpm test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { deathReason, LogModel, matches } from '../lib/logmodel.js';

const rec = (seq, stream, text, extra = {}) => ({
  seq, time: '2026-12-01T01:19:21.683+00:00', stream, text, incarnation: 1, ...extra
});

test('partial records are joined into one line of their stream', () => {
  const model = new LogModel();
  model.addFrame({ records: [rec(1, 'stdout', 'progress: ', { partial: true }), rec(2, 'stderr', 'oops')] });
  const change = model.addFrame({ records: [rec(3, 'stdout', '40%')] });
  assert.deepEqual(model.lines.map(l => l.text), ['progress: 40%', 'oops']);
  assert.equal(change.grown.length, 1);
  assert.equal(model.lastSeq, 3);
});

test('lifecycle records show once, as markers from their event frames, at their time', () => {
  const model = new LogModel();
  const died = { event: 'kernel_died', text: 'kernel died', signal: 9, signal_name: 'SIGKILL' };
  model.addFrame({ records: [rec(5, 'nanny', 'kernel died', { event: died })] });
  model.addFrame({ event: 'kernel_died', seq: 5, incarnation: 1, signal: 9, signal_name: 'SIGKILL',
    reason: 'killed by SIGKILL (possibly out of memory)', last_words: [{ stream: 'stderr', text: 'bye\n' }] });
  model.addFrame({ event: 'kernel_died', seq: 5, incarnation: 1, reason: 'again' });
  model.addFrame({ event: 'kernel_restarted', seq: 6, incarnation: 2, pid: 42 });
  assert.deepEqual(model.lines.map(l => l.marker), ['died', 'restarted']);
  assert.match(model.lines[0].text, /SIGKILL \(possibly out of memory\) — last words: bye$/);
  assert.equal(model.incarnation, 2);
  assert.equal(model.find(5, 'died'), model.lines[0]);
});

test('gaps and truncation are said', () => {
  const model = new LogModel();
  model.addFrame({ event: 'gap', from_seq: 10, to_seq: 19, reason: 'slow_client' });
  model.addFrame({ event: 'truncated', oldest_seq: 100, lost: 99 });
  assert.match(model.lines[0].text, /10 records \(10…19\).*Download/);
  assert.match(model.lines[1].text, /99 earlier records were discarded/);
});

test('the model keeps at most maxLines lines, counting the dropped', () => {
  const model = new LogModel(3);
  model.addFrame({ records: [1, 2, 3, 4, 5].map(n => rec(n, 'log', `line ${n}`)) });
  assert.deepEqual(model.lines.map(l => l.text), ['line 3', 'line 4', 'line 5']);
  assert.equal(model.dropped, 2);
});

test('filters keep markers, and search ignores case', () => {
  const filter = { streams: new Set(['stderr']), search: 'ERR' };
  assert.equal(matches({ stream: 'stderr', text: 'an error' }, filter), true);
  assert.equal(matches({ stream: 'stdout', text: 'an error' }, filter), false);
  assert.equal(matches({ stream: 'marker', marker: 'died', text: 'x' }, filter), true);
});

test('a death without a reason is described from its numbers', () => {
  assert.equal(deathReason({ signal: 11, signal_name: 'SIGSEGV' }), 'killed by SIGSEGV');
  assert.equal(deathReason({ exit_code: 3 }), 'exited with code 3');
});
