/**
 * The Kernel Log's data: records and markers from the server extension's follow, in seq
 * order, with partial records joined into lines. Pure (no DOM, no JupyterLab) so that it can be
 * unit-tested under node.
 */

export type StreamName = 'stdout' | 'stderr' | 'log' | 'nanny';
export const STREAMS: StreamName[] = ['stdout', 'stderr', 'log', 'nanny'];

/** syslog priorities, most severe first (index = priority, specs/log-channel.md §2.2). */
export const PRIORITY_NAMES = [
  'emerg',
  'alert',
  'crit',
  'err',
  'warning',
  'notice',
  'info',
  'debug'
] as const;

/** The priority of a record without one (from a server before priorities): its stream's. */
export const DEFAULT_PRIORITY: Record<StreamName, number> = {
  stdout: 6,
  stderr: 4,
  log: 6,
  nanny: 5
};

/** A record's priority, 0 (emerg) to 7 (debug). */
export function priorityOf(rec: { stream: StreamName; priority?: number }): number {
  const p = rec.priority;
  return typeof p === 'number' && p >= 0 && p <= 7 ? p : DEFAULT_PRIORITY[rec.stream] ?? 6;
}

/** A record as `GET …/log` and the follow send it. */
export interface IRecordJSON {
  seq: number;
  time: string;
  stream: StreamName;
  text: string;
  incarnation: number;
  /** syslog priority, 0-7; absent from servers before priorities. */
  priority?: number;
  partial?: boolean;
  event?: { event?: string; [key: string]: unknown };
}

/** A death as the follow's `kernel_died` event and the kernel model's `deaths` carry it. */
export interface IDeath {
  incarnation: number;
  time?: string;
  exit_code?: number | null;
  signal?: number | null;
  signal_name?: string | null;
  reason?: string;
  /** How it ended, without memory figures or cell (nannies since protocol 1.1). */
  cause?: string | null;
  /** The request that was running, from its execute_input. */
  cell?: { execution_count?: number | null; code?: string } | null;
  last_words?: { stream: string; text: string; priority?: number }[];
  seq: number;
}

/** One frame of the follow WebSocket: records, or an event. */
export interface IFrame {
  records?: IRecordJSON[];
  event?: string;
  text?: string;
  [key: string]: unknown;
}

export type MarkerKind =
  | 'died'
  | 'restarted'
  | 'started'
  | 'gap'
  | 'truncated'
  | 'shutdown'
  | 'notice';

/** A line of the log: what one row of the panel shows. */
export interface ILine {
  /** The seq of its (first) record; markers without a seq take the last seen. */
  seq: number;
  time: string;
  /** The stream, or `marker` for the panel's own rows (deaths, restarts, gaps). */
  stream: StreamName | 'marker';
  marker?: MarkerKind;
  text: string;
  incarnation: number;
  /** syslog priority, 0 (emerg) to 7 (debug): the record's, or the marker's own. */
  priority: number;
  /** The line has not ended yet: the next record of its stream continues it. */
  open?: boolean;
}

/** The nanny events the follow turns into event frames; their records are not shown twice. */
const LIFECYCLE = new Set(['kernel_started', 'kernel_restarted', 'kernel_died']);

/** One line for humans about a death: its reason, or what the numbers say. */
export function deathReason(death: Partial<IDeath>): string {
  if (death.reason) {
    return death.reason;
  }
  if (death.signal_name || death.signal) {
    return `killed by ${death.signal_name || `signal ${death.signal}`}`;
  }
  if (death.exit_code !== undefined && death.exit_code !== null) {
    return `exited with code ${death.exit_code}`;
  }
  return 'died';
}

/**
 * A death in a few words, for a notification (which has room for about 140 characters):
 * how it ended and the cell's number; `deathReason` has the whole line.
 */
export function deathHeadline(death: Partial<IDeath>): string {
  const cause = death.cause || deathReason(death);
  if (!death.cell) {
    return cause;
  }
  const count = death.cell.execution_count;
  return typeof count === 'number' ? `${cause} while running cell [${count}]` : `${cause} while running a cell`;
}

/** At most `max` characters of `text`, with an ellipsis when cut. */
export function shorten(text: string, max: number): string {
  return text.length > max ? text.slice(0, max - 1) + '…' : text;
}

/** A short clock time of an ISO timestamp, in the browser's time zone. */
export function clock(iso: string): string {
  const date = new Date(iso);
  if (isNaN(date.getTime())) {
    return '';
  }
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return (
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.` +
    pad(date.getMilliseconds(), 3)
  );
}

/** What a filter keeps: some streams (markers always), lines of a priority or more severe,
 * and lines containing a text. */
export interface IFilter {
  streams: Set<StreamName>;
  search: string;
  /** The least severe priority shown (7, debug: everything). */
  priority?: number;
}

export function matches(line: ILine, filter: IFilter): boolean {
  if (line.stream === 'marker') {
    return true;
  }
  if (!filter.streams.has(line.stream)) {
    return false;
  }
  if (filter.priority !== undefined && line.priority > filter.priority) {
    return false;
  }
  return !filter.search || line.text.toLowerCase().includes(filter.search.toLowerCase());
}

/** A line as plain text, for copy and download. */
export function lineText(line: ILine): string {
  const stream = line.stream === 'marker' ? '--' : line.stream;
  return `${line.time} ${stream} ${line.text}`;
}

/** What one `add` changed: lines appended, and lines already there that grew. */
export interface IChange {
  added: ILine[];
  grown: ILine[];
}

/**
 * The lines of one kernel's log, oldest first, at most `maxLines` of them (older ones are
 * dropped and counted in `dropped`).
 */
export class LogModel {
  readonly lines: ILine[] = [];
  dropped = 0;
  lastSeq = 0;
  incarnation = 0;
  readonly deaths: IDeath[] = [];
  /** The times of lifecycle records, until their event frames come. */
  private readonly eventTimes = new Map<number, string>();
  private lastTime = '';

  constructor(readonly maxLines = 100_000) {}

  /** Take one frame of the follow; return the lines it added or extended. */
  addFrame(frame: IFrame): IChange {
    const change: IChange = { added: [], grown: [] };
    if (frame.records) {
      for (const rec of frame.records) {
        this.addRecord(rec, change);
      }
    } else if (frame.event) {
      const line = this.eventLine(frame);
      if (line) {
        this.push(line, change);
      }
    }
    this.trim();
    return change;
  }

  private addRecord(rec: IRecordJSON, change: IChange): void {
    this.lastSeq = Math.max(this.lastSeq, rec.seq);
    this.incarnation = Math.max(this.incarnation, rec.incarnation);
    if (rec.stream === 'nanny' && LIFECYCLE.has(String(rec.event?.event))) {
      this.eventTimes.set(rec.seq, rec.time); // the event frame that follows has no time
      return; // shown as a marker, from its event frame
    }
    this.lastTime = rec.time;
    const open = this.openLine(rec.stream);
    if (open) {
      open.text += rec.text;
      open.open = !!rec.partial;
      if (!change.added.includes(open) && !change.grown.includes(open)) {
        change.grown.push(open);
      }
      return;
    }
    this.push(
      {
        seq: rec.seq,
        time: clock(rec.time),
        stream: rec.stream,
        text: rec.text,
        incarnation: rec.incarnation,
        priority: priorityOf(rec),
        open: !!rec.partial || undefined
      },
      change
    );
  }

  /** The last line of a stream if it has not ended (a partial record started it). */
  private openLine(stream: StreamName): ILine | undefined {
    for (let i = this.lines.length - 1; i >= 0 && i >= this.lines.length - 64; i--) {
      const line = this.lines[i];
      if (line.stream === stream) {
        return line.open ? line : undefined;
      }
    }
    return undefined;
  }

  private eventLine(frame: IFrame): ILine | undefined {
    const seq = typeof frame.seq === 'number' ? frame.seq : this.lastSeq;
    const iso =
      (typeof frame.time === 'string' && frame.time) ||
      this.eventTimes.get(seq) ||
      this.lastTime ||
      new Date().toISOString();
    this.eventTimes.delete(seq);
    const time = clock(iso);
    const incarnation = typeof frame.incarnation === 'number' ? frame.incarnation : this.incarnation;
    const marker = (kind: MarkerKind, text: string): ILine => ({
      seq,
      time,
      stream: 'marker',
      marker: kind,
      text,
      incarnation,
      priority: kind === 'died' ? 3 : 5
    });
    if (typeof frame.seq === 'number') {
      this.lastSeq = Math.max(this.lastSeq, frame.seq);
    }
    switch (frame.event) {
      case 'kernel_died': {
        const death = frame as unknown as IDeath;
        if (this.deaths.some(d => d.seq === death.seq)) {
          return undefined;
        }
        this.deaths.push(death);
        const words = (death.last_words || []).map(w => shorten(w.text.replace(/\n$/, ''), 120));
        const last = words.length ? ` — last words: ${words.slice(-2).join(' ⏎ ')}` : '';
        return marker(
          'died',
          `Kernel died (incarnation ${death.incarnation}): ${deathReason(death)}${last}`
        );
      }
      case 'kernel_restarted':
        this.incarnation = Math.max(this.incarnation, incarnation);
        return marker('restarted', `Kernel restarted: incarnation ${incarnation}, pid ${frame.pid}`);
      case 'kernel_started':
        this.incarnation = Math.max(this.incarnation, incarnation);
        return marker('started', `Kernel started: incarnation ${incarnation}, pid ${frame.pid}`);
      case 'gap': {
        const count = Number(frame.to_seq) - Number(frame.from_seq) + 1;
        const why =
          frame.reason === 'slow_client'
            ? 'this page read too slowly; Download has them'
            : 'the nanny no longer has them';
        return marker('gap', `Gap: ${count} records (${frame.from_seq}…${frame.to_seq}) not shown: ${why}`);
      }
      case 'truncated':
        return marker(
          'truncated',
          `Cut off: ${frame.lost} earlier records were discarded by the nanny (its store is full)`
        );
      case 'nanny_restarted':
        this.lastSeq = 0;
        return marker('notice', 'A new nanny serves this kernel; its log starts again');
      case 'kernel_shutdown':
        return marker('shutdown', 'The kernel was shut down; the log ends here');
      case 'error':
      case 'replay_failed':
        return marker('notice', `The server could not go on: ${frame.text}`);
      default:
        return undefined;
    }
  }

  /** A marker of the panel's own (a reconnection, a change of kernel). */
  addNotice(text: string, kind: MarkerKind = 'notice'): IChange {
    const change: IChange = { added: [], grown: [] };
    this.push(
      {
        seq: this.lastSeq,
        time: clock(new Date().toISOString()),
        stream: 'marker',
        marker: kind,
        text,
        incarnation: this.incarnation,
        priority: 5
      },
      change
    );
    this.trim();
    return change;
  }

  private push(line: ILine, change: IChange): void {
    this.lines.push(line);
    change.added.push(line);
  }

  private trim(): void {
    const excess = this.lines.length - this.maxLines;
    if (excess > 0) {
      this.lines.splice(0, excess);
      this.dropped += excess;
    }
  }

  /** The first line at or after `seq` (for "open the log at the death"). */
  find(seq: number, kind?: MarkerKind): ILine | undefined {
    const exact = kind && this.lines.find(l => l.seq === seq && l.marker === kind);
    return exact || this.lines.find(l => l.seq >= seq);
  }
}
