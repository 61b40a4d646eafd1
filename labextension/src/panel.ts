/**
 * The Kernel Log panel: one kernel's log, history then live, across restarts.
 *
 * The DOM is bounded: at most `MAX_ROWS` rows are rendered (older ones are dropped from the
 * DOM, and a banner says how many), and new lines are rendered once per animation frame, so a
 * kernel writing thousands of lines a second does not freeze the page. While the user has
 * scrolled up, nothing is appended (a button counts what is new) and the view stays put.
 */

import { Clipboard } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { FollowState, getWholeLog, LogFollow } from './follow';
import {
  IChange,
  IFilter,
  ILine,
  lineText,
  LogModel,
  matches,
  PRIORITY_NAMES,
  StreamName,
  STREAMS
} from './logmodel';

/** Most rows in the DOM. */
export const MAX_ROWS = 5000;
/** Records of history asked for when the panel opens. */
export const HISTORY = 10000;
/** How close to the bottom (px) still counts as "at the end" for autoscroll. */
const AT_END = 40;
/** The least time between two renders (ms). */
const RENDER_EVERY = 250;
/** More new lines than this in one render is a flood: only the newest this many are
 * rendered, and the panel fills up to MAX_ROWS again once the flood is over. */
const FLOOD_ROWS = 500;

export interface IKernelLogOptions {
  kernelId: string;
  /** What the kernel belongs to, for the title (a notebook's or console's path). */
  label: string;
}

export class KernelLogPanel extends Widget {
  constructor(options: IKernelLogOptions) {
    super();
    this.addClass('jp-NannyLog');
    this.id = `nanny-io-log-${options.kernelId}`;
    this.title.closable = true;
    this.title.iconClass = 'jp-NannyLog-icon';
    this.buildDOM();
    this.setKernel(options.kernelId, options.label);
  }

  get kernelId(): string {
    return this._kernelId;
  }

  get model(): LogModel {
    return this._model;
  }

  /** Follow another kernel (the notebook changed kernels), keeping what is shown so far. */
  setKernel(kernelId: string, label: string): void {
    this.title.label = `Kernel Log: ${label.split('/').pop() || label}`;
    this.title.caption = `The log of the kernel of ${label} (kernel ${kernelId})`;
    if (kernelId === this._kernelId) {
      return;
    }
    this._follow?.dispose();
    if (this._kernelId) {
      this.apply(this._model.addNotice(`Now following kernel ${kernelId} (of ${label})`));
      this._model.lastSeq = 0;
    }
    this._kernelId = kernelId;
    this.node.dataset.kernelId = kernelId;
    const follow = new LogFollow({ kernelId, last: HISTORY });
    follow.frame.connect((_, frame) => {
      this.apply(this._model.addFrame(frame));
      if (frame.event === 'kernel_shutdown') {
        this.setStatus('ended', 'the kernel was shut down');
      }
    });
    follow.stateChanged.connect((_, { state, text }) => this.setStatus(state, text));
    this._follow = follow;
    this.setStatus('connecting', 'connecting');
  }

  /** Show the line at `seq` (a death marker when there is one), once it has arrived. */
  revealSeq(seq: number): void {
    this._reveal = seq;
    this.schedule();
  }

  dispose(): void {
    this._follow?.dispose();
    cancelAnimationFrame(this._frame);
    window.clearTimeout(this._timer);
    window.clearTimeout(this._backfillTimer);
    super.dispose();
  }

  // ------------------------------------------------------------------ DOM

  private buildDOM(): void {
    const bar = document.createElement('div');
    bar.className = 'jp-NannyLog-toolbar';
    for (const stream of STREAMS) {
      const label = document.createElement('label');
      label.className = 'jp-NannyLog-toggle';
      label.dataset.stream = stream;
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = true;
      box.addEventListener('change', () => {
        if (box.checked) {
          this._filter.streams.add(stream);
        } else {
          this._filter.streams.delete(stream);
        }
        this.rebuild();
      });
      label.append(box, document.createTextNode(stream));
      bar.appendChild(label);
    }
    bar.appendChild(this.levelSelect());
    const search = document.createElement('input');
    search.type = 'search';
    search.placeholder = 'Search';
    search.className = 'jp-mod-styled jp-NannyLog-search';
    search.setAttribute('aria-label', 'Search the kernel log');
    let timer = 0;
    search.addEventListener('input', () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(() => {
        this._filter.search = search.value;
        this.rebuild();
      }, 150);
    });
    this._count = document.createElement('span');
    this._count.className = 'jp-NannyLog-count';
    const copy = this.button('Copy', 'Copy the lines shown (all that match) to the clipboard', () =>
      this.copy()
    );
    const download = this.button('Download', "Download the kernel's whole log as text", () =>
      this.download()
    );
    this._status = document.createElement('span');
    this._status.className = 'jp-NannyLog-status';
    bar.append(search, this._count, copy, download, this._status);

    this._body = document.createElement('div');
    this._body.className = 'jp-NannyLog-body';
    this._body.setAttribute('role', 'log');
    this._elided = document.createElement('div');
    this._elided.className = 'jp-NannyLog-elided';
    this._elided.hidden = true;
    this._rows = document.createElement('div');
    this._rows.className = 'jp-NannyLog-rows';
    this._body.append(this._elided, this._rows);
    this._body.addEventListener('scroll', () => this.onScroll());

    this._resume = this.button('', 'Scroll to the end and follow new lines again', () => {
      this._paused = false;
      this.rebuild();
    });
    this._resume.classList.add('jp-NannyLog-resume');
    this._resume.hidden = true;

    this.node.append(bar, this._body, this._resume);
  }

  /** The level filter: a syslog priority and everything more severe (as `journalctl -p`). */
  private levelSelect(): HTMLElement {
    const label = document.createElement('label');
    label.className = 'jp-NannyLog-level';
    label.title = 'Show lines of this priority and more severe ones';
    const select = document.createElement('select');
    select.className = 'jp-mod-styled';
    select.setAttribute('aria-label', 'Lowest priority shown');
    PRIORITY_NAMES.forEach((name, priority) => {
      const option = document.createElement('option');
      option.value = String(priority);
      option.textContent = priority === 7 ? 'all levels' : priority === 0 ? name : `${name}+`;
      select.appendChild(option);
    });
    select.value = String(this._filter.priority);
    select.addEventListener('change', () => {
      this._filter.priority = Number(select.value);
      this.node.dataset.priority = select.value;
      this.rebuild();
    });
    label.append('Level ', select);
    return label;
  }

  private button(text: string, title: string, onClick: () => void): HTMLButtonElement {
    const button = document.createElement('button');
    button.className = 'jp-mod-styled jp-NannyLog-button';
    button.textContent = text;
    button.title = title;
    button.addEventListener('click', onClick);
    return button;
  }

  /** One row: two elements (the time and the stream name are generated content), so that
   * thousands of them are cheap to create and lay out. */
  private row(line: ILine): HTMLElement {
    const row = document.createElement('div');
    row.className = 'jp-NannyLog-row';
    row.dataset.stream = line.stream;
    row.dataset.seq = String(line.seq);
    row.dataset.time = line.time;
    row.dataset.priority = String(line.priority);
    if (line.marker) {
      row.dataset.marker = line.marker;
    }
    const text = document.createElement('span');
    text.className = 'jp-NannyLog-text';
    text.dataset.label = line.stream === 'marker' ? '●' : line.stream;
    this.fillText(text, line.text);
    row.appendChild(text);
    this._rowOf.set(line, row);
    return row;
  }

  /** The text, with the search matches marked. */
  private fillText(node: HTMLElement, text: string): void {
    const needle = this._filter.search.toLowerCase();
    if (!needle) {
      node.textContent = text;
      return;
    }
    node.textContent = '';
    const lower = text.toLowerCase();
    let at = 0;
    for (let hit = lower.indexOf(needle); hit >= 0; hit = lower.indexOf(needle, at)) {
      node.append(text.slice(at, hit));
      const mark = document.createElement('mark');
      mark.textContent = text.slice(hit, hit + needle.length);
      node.appendChild(mark);
      at = hit + needle.length;
    }
    node.append(text.slice(at));
  }

  // ------------------------------------------------------------------ rendering

  private apply(change: IChange): void {
    for (const line of change.added) {
      if (matches(line, this._filter)) {
        this._matching++;
        this._pending.push(line);
      }
    }
    for (const line of change.grown) {
      this._grown.add(line);
    }
    this.schedule();
  }

  /** Render at the next animation frame, but at most every RENDER_EVERY ms: during a flood,
   * layout (not script) is what costs, so fewer, larger updates keep the page answering. */
  private schedule(): void {
    if (this._frame || this._timer) {
      return;
    }
    const wait = this._lastRender + RENDER_EVERY - performance.now();
    const frame = () => {
      this._timer = 0;
      this._frame = requestAnimationFrame(() => {
        this._frame = 0;
        this._lastRender = performance.now();
        this.render();
      });
    };
    if (wait > 0) {
      this._timer = window.setTimeout(frame, wait);
    } else {
      frame();
    }
  }

  /** Once per frame: append what came (at most MAX_ROWS of it), drop the oldest rows. */
  private render(): void {
    for (const line of this._grown) {
      const row = this._rowOf.get(line);
      const text = row?.querySelector<HTMLElement>('.jp-NannyLog-text');
      if (text) {
        this.fillText(text, line.text);
      }
    }
    this._grown.clear();
    const pending = this._pending;
    this._pending = [];
    if (this._paused) {
      // Appending below does not move what the user is reading; dropping rows above would.
      const room = Math.max(0, MAX_ROWS - this._rows.childElementCount);
      const fits = this._unseen ? [] : pending.slice(0, room);
      const fragment = document.createDocumentFragment();
      for (const line of fits) {
        fragment.appendChild(this.row(line));
      }
      this._rows.appendChild(fragment);
      this._unseen += pending.length - fits.length;
    } else if (!pending.length && this._backfill) {
      this._backfill = false; // the flood is over: show MAX_ROWS lines again
      this.rebuild();
      return;
    } else if (pending.length) {
      const rows = this._rows;
      const flood = pending.length > FLOOD_ROWS;
      if (flood) {
        // Nobody reads lines going by this fast: show the newest few until it calms down.
        rows.textContent = '';
        this._backfill = true;
        window.clearTimeout(this._backfillTimer);
        this._backfillTimer = window.setTimeout(() => this.schedule(), 2 * RENDER_EVERY);
      }
      const fragment = document.createDocumentFragment();
      for (const line of pending.slice(flood ? -FLOOD_ROWS : -MAX_ROWS)) {
        fragment.appendChild(this.row(line));
      }
      rows.appendChild(fragment);
      const excess = rows.childElementCount - MAX_ROWS;
      if (excess > 0) {
        const range = document.createRange();
        range.setStartBefore(rows.firstElementChild!);
        range.setEndAfter(rows.children[excess - 1]);
        range.deleteContents();
      }
    }
    this.updateCounts();
    if (this._reveal !== null && this.revealNow(this._reveal)) {
      this._reveal = null;
    } else if (!this._paused) {
      this.toEnd();
    }
  }

  /** Render the last MAX_ROWS matching lines again (the filter changed, or autoscroll resumed). */
  private rebuild(around?: ILine): void {
    const all = this._model.lines;
    const shown: ILine[] = [];
    let index = -1;
    this._matching = 0;
    for (const line of all) {
      if (matches(line, this._filter)) {
        if (line === around) {
          index = shown.length;
        }
        shown.push(line);
      }
    }
    this._matching = shown.length;
    let window = shown.slice(-MAX_ROWS);
    if (index >= 0) {
      const start = Math.max(0, Math.min(index - MAX_ROWS / 2, shown.length - MAX_ROWS));
      window = shown.slice(start, start + MAX_ROWS);
      this._paused = window[window.length - 1] !== shown[shown.length - 1];
    }
    this._hiddenAfter = index >= 0 ? shown.length - shown.indexOf(window[window.length - 1]) - 1 : 0;
    this._pending = [];
    this._unseen = this._hiddenAfter;
    const fragment = document.createDocumentFragment();
    for (const line of window) {
      fragment.appendChild(this.row(line));
    }
    this._rows.textContent = '';
    this._rows.appendChild(fragment);
    this.updateCounts();
    if (!this._paused) {
      this.toEnd();
    }
  }

  private updateCounts(): void {
    const hidden = this._matching - this._rows.childElementCount - this._unseen;
    const dropped = this._model.dropped;
    this._elided.hidden = hidden <= 0 && dropped === 0;
    this._elided.textContent =
      `${(hidden + dropped).toLocaleString()} earlier lines not shown; ` +
      'Download has the whole log';
    this._count.textContent = `${this._matching.toLocaleString()} lines`;
    this._resume.hidden = !this._paused;
    this._resume.textContent = this._unseen
      ? `↓ ${this._unseen.toLocaleString()} new lines: follow`
      : '↓ Follow new lines';
    this.node.classList.toggle('jp-mod-paused', this._paused);
  }

  private toEnd(): void {
    this._programmatic = true;
    this._body.scrollTop = this._body.scrollHeight;
  }

  private onScroll(): void {
    const body = this._body;
    const atEnd = body.scrollHeight - body.scrollTop - body.clientHeight < AT_END;
    if (this._programmatic) {
      this._programmatic = false;
      if (atEnd || !this._paused) {
        return;
      }
    }
    if (!atEnd && !this._paused) {
      this._paused = true; // the user scrolled up: stop following
      this._unseen = 0;
      this.updateCounts();
    } else if (atEnd && this._paused) {
      this._paused = false; // back at the end: follow again, with what came meanwhile
      this.rebuild();
    }
  }

  /** Scroll to the line at `seq` if it has arrived; whether it had. */
  private revealNow(seq: number): boolean {
    const line = this._model.find(seq, 'died');
    if (!line || (line.seq > seq && this._follow?.state !== 'live')) {
      return false; // not there yet (the history is still coming)
    }
    let row = this._rowOf.get(line);
    if (!row || !row.isConnected) {
      this.rebuild(line);
      row = this._rowOf.get(line);
    }
    if (!row) {
      return true;
    }
    this._paused = true;
    this.updateCounts();
    this._programmatic = true;
    row.scrollIntoView({ block: 'center' });
    row.classList.add('jp-mod-revealed');
    return true;
  }

  // ------------------------------------------------------------------ actions

  private setStatus(state: FollowState, text: string): void {
    this._status.dataset.state = state;
    const incarnation = this._model.incarnation ? `, incarnation ${this._model.incarnation}` : '';
    this._status.textContent =
      state === 'live' ? `live${incarnation}` : state === 'ended' ? `ended: ${text}` : text;
    this._status.title = `kernel ${this._kernelId}: ${text}`;
  }

  private copy(): void {
    const text = this._model.lines
      .filter(line => matches(line, this._filter))
      .map(lineText)
      .join('\n');
    Clipboard.copyToSystem(text + '\n');
  }

  private async download(): Promise<void> {
    let text: string;
    try {
      const records = await getWholeLog(this._kernelId);
      text = records.map(r => `${r.time} ${r.stream} ${r.text}${r.partial ? '' : '\n'}`).join('');
    } catch (error) {
      // The kernel is gone: what this panel holds is all there is.
      text = this._model.lines.map(lineText).join('\n') + '\n';
    }
    const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
    const link = document.createElement('a');
    link.href = url;
    link.download = `kernel-${this._kernelId}.log`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  private _kernelId = '';
  private _model = new LogModel();
  private _follow: LogFollow | null = null;
  private _filter: IFilter = { streams: new Set<StreamName>(STREAMS), search: '', priority: 7 };
  private _pending: ILine[] = [];
  private _grown = new Set<ILine>();
  private _rowOf = new WeakMap<ILine, HTMLElement>();
  private _matching = 0;
  private _unseen = 0;
  private _hiddenAfter = 0;
  private _paused = false;
  private _programmatic = false;
  private _frame = 0;
  private _timer = 0;
  private _lastRender = 0;
  private _backfill = false;
  private _backfillTimer = 0;
  private _reveal: number | null = null;
  private _body!: HTMLDivElement;
  private _rows!: HTMLDivElement;
  private _elided!: HTMLDivElement;
  private _count!: HTMLSpanElement;
  private _status!: HTMLSpanElement;
  private _resume!: HTMLButtonElement;
}
