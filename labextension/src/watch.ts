/**
 * Watches the kernels of open notebooks and consoles that run under the nanny: one follow per
 * kernel (stderr and log records, and the lifecycle events that come with any follow), whose
 * deaths become notifications that stay until dismissed, and whose stderr, log records and
 * deaths go to the Log Console of every notebook using the kernel, each at its own level
 * (the record's syslog priority: err is an error, warning a warning, info and notice info,
 * debug debug; the Log Console's own level setting then chooses what it shows).
 *
 * A follow resumes from the last seq it saw when its connection drops, so a death that happens
 * meanwhile is still reported when it is back.
 */

import { Notification } from '@jupyterlab/apputils';
import { ILoggerRegistry, LogLevel } from '@jupyterlab/logconsole';
import { IDisposable } from '@lumino/disposable';

import { LogFollow } from './follow';
import { deathHeadline, deathReason, IDeath, IFrame, priorityOf } from './logmodel';

/** How often stderr and log lines are passed to the Log Console. */
const FLUSH_MS = 500;
/** Lines logged one entry each per flush; beyond, one entry holds them, up to BATCH_LINES. */
const SINGLE_LINES = 10;
const BATCH_LINES = 50;

/** The Log Console level of a syslog priority. */
export function logLevel(priority: number): LogLevel {
  if (priority <= 2) {
    return 'critical';
  }
  if (priority === 3) {
    return 'error';
  }
  if (priority === 4) {
    return 'warning';
  }
  return priority === 7 ? 'debug' : 'info';
}

/** One buffered line for the Log Console. */
interface IBuffered {
  text: string;
  priority: number;
}

/** A notebook or console whose kernel is watched. */
export interface IWatchHost {
  /** Its path: the Log Console's source and the notifications' label. */
  readonly path: string;
  /** The cell running now, for humans ("cell 3"), if it knows. */
  runningCell(): string | null;
}

export interface IWatchOptions {
  loggers: ILoggerRegistry | null;
  /** Open the Kernel Log at a death (the notification's action). */
  showLog(kernelId: string, seq: number, host: IWatchHost): void;
}

/** Every watched kernel, by id; a kernel is watched while a host uses it. */
export class KernelWatches {
  constructor(private readonly options: IWatchOptions) {}

  /** Watch `kernelId` for `host` until the returned disposable is disposed. */
  watch(kernelId: string, host: IWatchHost): IDisposable {
    let watch = this.watches.get(kernelId);
    if (!watch) {
      watch = new KernelWatch(kernelId, this.options, this.notified);
      this.watches.set(kernelId, watch);
    }
    watch.hosts.add(host);
    let disposed = false;
    return {
      get isDisposed() {
        return disposed;
      },
      dispose: () => {
        if (disposed) {
          return;
        }
        disposed = true;
        watch!.hosts.delete(host);
        if (!watch!.hosts.size) {
          watch!.dispose();
          this.watches.delete(kernelId);
        }
      }
    };
  }

  private readonly watches = new Map<string, KernelWatch>();
  /** The deaths already notified, `kernelId:seq`: each once, whatever follows reconnect. */
  private readonly notified = new Set<string>();
}

class KernelWatch {
  constructor(
    readonly kernelId: string,
    private readonly options: IWatchOptions,
    private readonly notified: Set<string>
  ) {
    this.follow = new LogFollow({ kernelId, streams: ['stderr', 'log'], last: 0 });
    this.follow.frame.connect((_, frame) => this.onFrame(frame));
  }

  readonly hosts = new Set<IWatchHost>();

  dispose(): void {
    this.flush();
    window.clearTimeout(this.timer);
    this.follow.dispose();
  }

  private onFrame(frame: IFrame): void {
    if (frame.records) {
      for (const rec of frame.records) {
        if (rec.text) {
          this.buffer.push({ text: `[${rec.stream}] ${rec.text}`, priority: priorityOf(rec) });
        }
      }
      if (!this.timer && this.buffer.length) {
        this.timer = window.setTimeout(() => this.flush(), FLUSH_MS);
      }
    } else if (frame.event === 'kernel_died') {
      this.onDeath(frame as unknown as IDeath);
    }
  }

  private onDeath(death: IDeath): void {
    const key = `${this.kernelId}:${death.seq}`;
    if (this.notified.has(key)) {
      return;
    }
    this.notified.add(key);
    this.flush();
    const hosts = [...this.hosts];
    const host = hosts[0];
    const cell = hosts.map(h => h.runningCell()).find(c => c);
    const where = hosts.map(h => h.path.split('/').pop()).join(', ') || `kernel ${this.kernelId}`;
    const reason = deathReason(death);
    // The nanny names the cell when it knows it; otherwise what this page scheduled.
    const message =
      `The kernel of ${where} died: ${deathHeadline(death)}` +
      (!death.cell && cell ? `, running ${cell}` : '');
    Notification.error(message, {
      autoClose: false,
      actions: [
        {
          label: 'Show kernel log',
          caption: 'Open the Kernel Log at the death',
          callback: () => this.options.showLog(this.kernelId, death.seq, host)
        }
      ]
    });
    const words = (death.last_words || []).map(w => `[${w.stream}] ${w.text.replace(/\n$/, '')}`);
    this.log(
      'critical',
      [`Kernel died (incarnation ${death.incarnation}): ${reason}`, ...words].join('\n')
    );
  }

  /** Pass the buffered lines to the Log Console, a bounded number of entries per flush. */
  private flush(): void {
    window.clearTimeout(this.timer);
    this.timer = 0;
    const lines = this.buffer;
    this.buffer = [];
    if (!lines.length) {
      return;
    }
    if (lines.length <= SINGLE_LINES) {
      lines.forEach(line => this.log(logLevel(line.priority), line.text));
      return;
    }
    // One entry for many lines, at the level of the most severe among them.
    const shown = lines.slice(0, BATCH_LINES);
    const worst = Math.min(...lines.map(line => line.priority));
    const more = lines.length - BATCH_LINES;
    this.log(
      logLevel(worst),
      shown.map(line => line.text).join('\n') +
        (more > 0 ? `\n… and ${more} more lines: see the Kernel Log` : '')
    );
  }

  private log(level: LogLevel, text: string): void {
    const loggers = this.options.loggers;
    if (!loggers) {
      return;
    }
    for (const host of this.hosts) {
      loggers.getLogger(host.path).log({ type: 'text', level, data: text });
    }
  }

  private readonly follow: LogFollow;
  private buffer: IBuffered[] = [];
  private timer = 0;
}
