/**
 * nanny-io's JupyterLab extension: death notifications, the Kernel Log panel, and the
 * kernel's warnings in the Log Console, for kernels that run under the nanny.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ISessionContext } from '@jupyterlab/apputils';
import { ConsolePanel, IConsoleTracker } from '@jupyterlab/console';
import { ILoggerRegistry } from '@jupyterlab/logconsole';
import { INotebookTracker, Notebook, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';

import { KernelLogPanel } from './panel';
import { IWatchHost, KernelWatches } from './watch';

export const COMMAND = 'nanny-io:show-kernel-log';
/** The provisioner name in the kernelspecs `nanny-io install` writes. */
const PROVISIONER = 'nanny-io';

type Host = NotebookPanel | ConsolePanel;

/** The cells scheduled and not yet finished, per notebook: the first one is running. */
const running = new WeakMap<Notebook, Set<unknown>>();

function runningCell(panel: Host): string | null {
  if (!(panel instanceof NotebookPanel)) {
    return null;
  }
  const cells = running.get(panel.content);
  if (!cells?.size) {
    return null;
  }
  const index = panel.content.widgets.findIndex(cell => cells.has(cell));
  return index < 0 ? null : `cell ${index + 1}`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nanny-io:plugin',
  description: 'Kernel death notifications, the Kernel Log panel, and kernel warnings in the Log Console',
  autoStart: true,
  optional: [INotebookTracker, IConsoleTracker, ICommandPalette, ILoggerRegistry],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker | null,
    consoles: IConsoleTracker | null,
    palette: ICommandPalette | null,
    loggers: ILoggerRegistry | null
  ) => {
    const specs = app.serviceManager.kernelspecs;
    const panels = new Map<string, KernelLogPanel>();

    /** Whether a kernelspec starts its kernels under the nanny. */
    const isNanny = (name: string | undefined): boolean => {
      const metadata = (name && specs.specs?.kernelspecs[name]?.metadata) || {};
      const provisioner = (metadata as any).kernel_provisioner?.provisioner_name;
      return provisioner === PROVISIONER;
    };

    /** The notebook or console the command applies to: the active one, else the last. */
    const currentHost = (): Host | null => {
      const widget = app.shell.currentWidget;
      if (widget && (notebooks?.has(widget) || consoles?.has(widget))) {
        return widget as Host;
      }
      return notebooks?.currentWidget ?? consoles?.currentWidget ?? null;
    };

    /** Why the command cannot apply to `host`, or null when it can. */
    const whyNot = (host: Host | null): string | null => {
      if (!host) {
        return 'Open a notebook or console first: the Kernel Log shows the log of its kernel.';
      }
      const kernel = host.sessionContext.session?.kernel;
      if (!kernel) {
        return `${host.sessionContext.path} has no kernel running.`;
      }
      if (!isNanny(kernel.name)) {
        return (
          `The kernel of ${host.sessionContext.path} (${kernel.name}) does not run under ` +
          'nanny-io, so it has no Kernel Log: start it from a kernelspec made by ' +
          '`nanny-io install` (such as python3-nanny).'
        );
      }
      return null;
    };

    const openLog = (kernelId: string, path: string, seq?: number): KernelLogPanel => {
      let panel = panels.get(kernelId);
      if (!panel || panel.isDisposed) {
        panel = new KernelLogPanel({ kernelId, label: path });
        panels.set(kernelId, panel);
        panel.disposed.connect(() => panels.delete(kernelId));
        const host = [...hosts.keys()].find(h => h.sessionContext.session?.kernel?.id === kernelId);
        if (host) {
          followKernelChanges(panel, host);
        }
        app.shell.add(panel, 'main', { mode: 'split-bottom', ref: host?.id });
      }
      app.shell.activateById(panel.id);
      if (seq !== undefined) {
        panel.revealSeq(seq);
      }
      return panel;
    };

    /** A panel opened for a notebook follows the notebook onto its next nanny kernel. */
    const followKernelChanges = (panel: KernelLogPanel, host: Host) => {
      const onChange = (context: ISessionContext) => {
        const kernel = context.session?.kernel;
        if (panel.isDisposed || !kernel || !isNanny(kernel.name)) {
          return;
        }
        panels.delete(panel.kernelId);
        panel.setKernel(kernel.id, context.path);
        panels.set(kernel.id, panel);
      };
      host.sessionContext.kernelChanged.connect(onChange);
      panel.disposed.connect(() => host.sessionContext.kernelChanged.disconnect(onChange));
    };

    app.commands.addCommand(COMMAND, {
      label: 'Show Kernel Log',
      caption: args =>
        args.kernelId
          ? 'Show the log of the kernel'
          : whyNot(currentHost()) ??
            "Show the log of this kernel: its output, its log, its deaths and restarts",
      isEnabled: args => !!args.kernelId || whyNot(currentHost()) === null,
      execute: args => {
        if (args.kernelId) {
          const seq = typeof args.seq === 'number' ? args.seq : undefined;
          return openLog(String(args.kernelId), String(args.label ?? args.kernelId), seq);
        }
        const host = currentHost();
        const reason = whyNot(host);
        if (reason) {
          throw new Error(reason);
        }
        return openLog(host!.sessionContext.session!.kernel!.id, host!.sessionContext.path);
      }
    });
    palette?.addItem({ command: COMMAND, category: 'Kernel Operations' });
    // Lumino menus do not show a command's caption; the palette does. Give the menu items
    // (Kernel menu, context menu) the caption as their tooltip, so that a disabled item says
    // why it is disabled.
    document.body.addEventListener(
      'pointerover',
      event => {
        const item = (event.target as Element | null)?.closest?.(
          `.lm-Menu-item[data-command="${COMMAND}"]`
        );
        if (item) {
          item.setAttribute('title', app.commands.caption(COMMAND));
        }
      },
      true
    );

    // ---------------------------------------------------------------- watching kernels

    const watches = new KernelWatches({
      loggers,
      showLog: (kernelId, seq, host) => openLog(kernelId, host?.path ?? kernelId, seq)
    });
    const hosts = new Map<Host, { kernelId: string | null; watch: IDisposable | null }>();

    const track = (host: Host) => {
      const state = { kernelId: null as string | null, watch: null as IDisposable | null };
      hosts.set(host, state);
      const watchHost: IWatchHost = {
        get path() {
          return host.sessionContext.path;
        },
        runningCell: () => runningCell(host)
      };
      const update = () => {
        if (host.isDisposed) {
          return;
        }
        const kernel = host.sessionContext.session?.kernel;
        const kernelId = kernel && isNanny(kernel.name) ? kernel.id : null;
        if (kernelId !== state.kernelId) {
          state.watch?.dispose();
          state.kernelId = kernelId;
          state.watch = kernelId ? watches.watch(kernelId, watchHost) : null;
        }
        app.commands.notifyCommandChanged(COMMAND);
      };
      host.sessionContext.kernelChanged.connect(update);
      host.sessionContext.statusChanged.connect(update);
      void host.sessionContext.ready.then(update);
      void specs.ready.then(update);
      host.disposed.connect(() => {
        state.watch?.dispose();
        hosts.delete(host);
      });
    };
    notebooks?.widgetAdded.connect((_, panel) => track(panel));
    consoles?.widgetAdded.connect((_, panel) => track(panel));
    notebooks?.currentChanged.connect(() => app.commands.notifyCommandChanged(COMMAND));
    consoles?.currentChanged.connect(() => app.commands.notifyCommandChanged(COMMAND));
    specs.specsChanged.connect(() => app.commands.notifyCommandChanged(COMMAND));

    NotebookActions.executionScheduled.connect((_, { notebook, cell }) => {
      let cells = running.get(notebook);
      if (!cells) {
        running.set(notebook, (cells = new Set()));
      }
      cells.add(cell);
    });
    NotebookActions.executed.connect((_, { notebook, cell }) => {
      running.get(notebook)?.delete(cell);
    });

    // For the browser tests and for other extensions: the open panels.
    (app as any).nannyIo = { panels, openLog };
  }
};

export default plugin;
