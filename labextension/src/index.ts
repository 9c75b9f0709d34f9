import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, ISessionContext, MainAreaWidget } from '@jupyterlab/apputils';
import { IConsoleTracker } from '@jupyterlab/console';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { lockIcon } from './icons';
import { LauncherBadges } from './launcher';
import { AttestationModel } from './model';
import { AttestationPanel } from './panel';
import { AttestationStatus } from './status';

export namespace CommandIDs {
  export const show = 'jupyter-cc:show-attestation';
  export const reattest = 'jupyter-cc:reattest';
}

const PALETTE_CATEGORY = 'Confidential';

/** The session context of a notebook or console panel (null for any other widget). */
function sessionContextOf(
  widget: Widget | null,
  notebooks: INotebookTracker | null,
  consoles: IConsoleTracker | null
): ISessionContext | null {
  if (!widget) {
    return null;
  }
  if (notebooks && notebooks.has(widget)) {
    return (widget as unknown as { sessionContext: ISessionContext }).sessionContext;
  }
  if (consoles && consoles.has(widget)) {
    return (widget as unknown as { sessionContext: ISessionContext }).sessionContext;
  }
  return null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-cc-labextension:plugin',
  description:
    "Shows whether the active kernel runs in a verified TEE: status bar lock, attestation panel, launcher badges.",
  autoStart: true,
  optional: [IStatusBar, ICommandPalette, INotebookTracker, IConsoleTracker, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    consoles: IConsoleTracker | null,
    labShell: ILabShell | null
  ) => {
    const specs = app.serviceManager.kernelspecs;
    const model = new AttestationModel(specs, app.serviceManager.events ?? null);
    let panel: MainAreaWidget<AttestationPanel> | null = null;
    const activeChanged = new Signal<AttestationModel, void>(model);
    let showItem = false;

    // Follow the active notebook or console; keep following it while the panel is current.
    const onCurrent = (widget: Widget | null): void => {
      const ctx = sessionContextOf(widget, notebooks, consoles);
      if (ctx) {
        model.follow(ctx);
        showItem = true;
      } else if (widget && panel && widget === panel) {
        showItem = model.sessionContext !== null;
      } else {
        showItem = false;
      }
      activeChanged.emit(undefined);
    };
    if (labShell) {
      labShell.currentChanged.connect((_, args) => onCurrent(args.newValue));
    } else {
      notebooks?.currentChanged.connect((_, w) => onCurrent(w));
      consoles?.currentChanged.connect((_, w) => onCurrent(w));
    }
    void app.restored.then(() => onCurrent(app.shell.currentWidget));

    const showPanel = (): void => {
      if (!panel || panel.isDisposed) {
        const content = new AttestationPanel(model);
        panel = new MainAreaWidget({ content });
        panel.id = 'jp-cc-attestation';
        panel.title.label = 'Attestation';
        panel.title.caption = 'Attestation of the kernel behind the active notebook or console';
        panel.title.icon = lockIcon;
        panel.title.closable = true;
        panel.addClass('jp-cc-PanelWidget');
      }
      if (!panel.isAttached) {
        app.shell.add(panel, 'main', { mode: 'split-right' });
      }
      app.shell.activateById(panel.id);
    };

    app.commands.addCommand(CommandIDs.show, {
      label: 'Confidential: Show attestation',
      caption: 'Show the attestation of the active kernel (claims, policy verdict, GPU, audit)',
      icon: lockIcon,
      execute: showPanel
    });
    app.commands.addCommand(CommandIDs.reattest, {
      label: 'Confidential: Re-attest kernel',
      caption: 'Ask the active confidential kernel for fresh evidence and check it again',
      isEnabled: () => model.kernelId !== null,
      execute: () => model.reattest()
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.show, category: PALETTE_CATEGORY });
      palette.addItem({ command: CommandIDs.reattest, category: PALETTE_CATEGORY });
    }

    if (statusBar) {
      const item = new AttestationStatus(model, () => {
        void app.commands.execute(CommandIDs.show);
      });
      statusBar.registerStatusItem('jupyter-cc-labextension:status', {
        item,
        align: 'left',
        rank: 3,
        isActive: () => showItem,
        activeStateChanged: activeChanged
      });
    }

    // Lives as long as the page: marks launcher cards of confidential kernelspecs.
    new LauncherBadges(specs);
    console.log('jupyter-cc-labextension is activated');
  }
};

export default plugin;
