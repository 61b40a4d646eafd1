/**
 * The server extension's endpoints: the kernel model, log pages, and the follow WebSocket,
 * which reconnects on its own and goes on from the last seq it saw, so nothing is missed or
 * shown twice across a dropped connection.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { IDeath, IFrame, IRecordJSON, StreamName } from './logmodel';

const API = 'api/nanny-io/kernels';
/** Pauses between reconnection attempts, then the last one again and again. */
const BACKOFF_MS = [500, 1000, 2000, 5000, 10000];

export interface IKernelModel {
  kernel_id: string;
  kernel_name: string;
  status: string;
  incarnation: number;
  pid: number | null;
  deaths: IDeath[];
}

export interface ILogPage {
  first_seq: number;
  last_seq: number;
  truncated: boolean;
  records: IRecordJSON[];
}

/** An error answer of the server extension, with its status and message. */
export class NannyAPIError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

async function getJSON<T>(path: string, settings: ServerConnection.ISettings): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API, path);
  const reply = await ServerConnection.makeRequest(url, {}, settings);
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    throw new NannyAPIError(reply.status, body.message || reply.statusText);
  }
  return body as T;
}

/** `GET …/kernels/{id}`: the nanny's view of the kernel (404 when it is not under one). */
export function getKernel(
  kernelId: string,
  settings = ServerConnection.makeSettings()
): Promise<IKernelModel> {
  return getJSON(encodeURIComponent(kernelId), settings);
}

/** The whole log the nanny still holds, page by page (`GET …/log?since=`). */
export async function getWholeLog(
  kernelId: string,
  settings = ServerConnection.makeSettings()
): Promise<IRecordJSON[]> {
  const records: IRecordJSON[] = [];
  let since = 1;
  for (;;) {
    const page = await getJSON<ILogPage>(
      `${encodeURIComponent(kernelId)}/log?since=${since}`,
      settings
    );
    records.push(...page.records);
    if (!page.truncated || !page.records.length) {
      return records;
    }
    since = page.last_seq + 1;
  }
}

export type FollowState = 'connecting' | 'live' | 'reconnecting' | 'ended';

export interface IFollowOptions {
  kernelId: string;
  /** Streams of records to receive (lifecycle events come anyway); all by default. */
  streams?: StreamName[];
  /** How many records of history to ask for on the first connection. */
  last: number;
  settings?: ServerConnection.ISettings;
}

/** One WebSocket follow of a kernel's log, reconnected until disposed or the kernel ends. */
export class LogFollow implements IDisposable {
  constructor(private readonly options: IFollowOptions) {
    this.settings = options.settings || ServerConnection.makeSettings();
    this.connect();
  }

  get frame(): ISignal<this, IFrame> {
    return this._frame;
  }

  get stateChanged(): ISignal<this, { state: FollowState; text: string }> {
    return this._stateChanged;
  }

  get state(): FollowState {
    return this._state;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearTimeout(this._timer);
    this._socket?.close(1000);
    this._socket = null;
    Signal.clearData(this);
  }

  private url(): string {
    const { kernelId, streams, last } = this.options;
    const params = new URLSearchParams();
    if (this.lastSeq > 0) {
      params.set('since', String(this.lastSeq + 1));
    } else {
      params.set('last', String(last));
    }
    if (streams) {
      params.set('stream', streams.join(','));
    }
    if (this.settings.appendToken && this.settings.token) {
      params.set('token', this.settings.token);
    }
    const path = URLExt.join(API, encodeURIComponent(kernelId), 'log/follow');
    return URLExt.join(this.settings.wsUrl, path) + '?' + params.toString();
  }

  private connect(): void {
    const socket = new this.settings.WebSocket(this.url());
    this._socket = socket;
    socket.onmessage = (message: MessageEvent) => {
      if (this._disposed || socket !== this._socket) {
        return;
      }
      let frame: IFrame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      this.attempts = 0;
      this.track(frame);
      this._frame.emit(frame);
    };
    socket.onopen = () => {
      this.setState(this.lastSeq > 0 ? 'live' : 'connecting', 'connected');
    };
    socket.onclose = () => {
      if (this._disposed || socket !== this._socket) {
        return;
      }
      this._socket = null;
      if (this.shutDown) {
        this.setState('ended', 'the kernel was shut down');
        return;
      }
      void this.retry();
    };
  }

  private track(frame: IFrame): void {
    for (const rec of frame.records || []) {
      this.lastSeq = Math.max(this.lastSeq, rec.seq);
    }
    if (typeof frame.seq === 'number') {
      this.lastSeq = Math.max(this.lastSeq, frame.seq);
    }
    switch (frame.event) {
      case 'caught_up':
        this.setState('live', 'live');
        break;
      case 'nanny_restarted':
        this.lastSeq = 0;
        break;
      case 'kernel_shutdown':
        this.shutDown = true;
        break;
      case 'nanny_silent':
        this.setState('reconnecting', String(frame.text));
        break;
      case 'state':
        if (this._state !== 'live') {
          this.setState('live', 'live');
        }
        break;
    }
  }

  /** Wait, then reconnect, unless the server says the kernel is gone or not a nanny's. */
  private async retry(): Promise<void> {
    const pause = BACKOFF_MS[Math.min(this.attempts, BACKOFF_MS.length - 1)];
    this.attempts++;
    this.setState('reconnecting', `connection lost; trying again in ${pause / 1000} s`);
    await new Promise(resolve => (this._timer = window.setTimeout(resolve, pause)));
    if (this._disposed) {
      return;
    }
    try {
      await getKernel(this.options.kernelId, this.settings);
    } catch (error) {
      if (error instanceof NannyAPIError && error.status === 404) {
        this.setState('ended', error.message);
        return;
      }
      void this.retry(); // the server is away (or the nanny starting): keep trying
      return;
    }
    if (!this._disposed) {
      this.connect();
    }
  }

  private setState(state: FollowState, text: string): void {
    this._state = state;
    this._stateChanged.emit({ state, text });
  }

  /** The newest seq received: a reconnection asks for what follows it. */
  lastSeq = 0;
  private attempts = 0;
  private shutDown = false;
  private readonly settings: ServerConnection.ISettings;
  private _socket: WebSocket | null = null;
  private _timer = 0;
  private _disposed = false;
  private _state: FollowState = 'connecting';
  private readonly _frame = new Signal<this, IFrame>(this);
  private readonly _stateChanged = new Signal<this, { state: FollowState; text: string }>(this);
}
