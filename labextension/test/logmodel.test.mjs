// Unit tests of the Kernel Log's model (no DOM, no JupyterLab): jlpm test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { deathHeadline, deathReason, LogModel, matches } from '../lib/logmodel.js';

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
  const oom = {
    reason: 'killed by the out-of-memory killer (cgroup limit 2.00 GiB, kernel peak 1.97 GiB) while running cell [12] `df = load()` (started 41 s earlier)',
    cause: 'killed by the out-of-memory killer',
    cell: { execution_count: 12, code: 'df = load()' }
  };
  assert.equal(deathHeadline(oom), 'killed by the out-of-memory killer while running cell [12]');
  assert.equal(deathHeadline({ cause: 'exited with code 3', cell: null }), 'exited with code 3');
  assert.equal(deathHeadline({ signal_name: 'SIGKILL' }), 'killed by SIGKILL');
});

test('lines carry their priority, or their stream default from servers before priorities', () => {
  const model = new LogModel();
  model.addFrame({ records: [
    rec(1, 'log', 'lost the database', { priority: 3 }),
    rec(2, 'stdout', 'progress ', { priority: 2, partial: true }),
    rec(3, 'stderr', 'old server'),
    rec(4, 'log', 'old server too')
  ] });
  model.addFrame({ records: [rec(5, 'stdout', 'done', { priority: 2 })] });
  assert.deepEqual(model.lines.map(l => [l.text, l.priority]), [
    ['lost the database', 3], ['progress done', 2], ['old server', 4], ['old server too', 6]
  ]);
  model.addFrame({ event: 'kernel_died', seq: 6, incarnation: 1, reason: 'r' });
  assert.equal(model.lines.at(-1).priority, 3);
});

test('the level filter keeps that priority and more severe ones, and every marker', () => {
  const model = new LogModel();
  model.addFrame({ records: [0, 3, 4, 6, 7].map(p => rec(p + 1, 'log', `p${p}`, { priority: p })) });
  model.addFrame({ event: 'kernel_restarted', seq: 9, incarnation: 2, pid: 1 });
  const shown = priority => model.lines
    .filter(l => matches(l, { streams: new Set(['log']), search: '', priority }))
    .map(l => l.text);
  assert.deepEqual(shown(7), ['p0', 'p3', 'p4', 'p6', 'p7', model.lines.at(-1).text]);
  assert.deepEqual(shown(4), ['p0', 'p3', 'p4', model.lines.at(-1).text]);
  assert.deepEqual(shown(0), ['p0', model.lines.at(-1).text]);
  assert.equal(matches(model.lines[2], { streams: new Set(['log']), search: 'p4' }), true);
});
