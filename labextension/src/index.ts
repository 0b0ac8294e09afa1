// The JupyterLab plugin: the Serverless sidebar, and the cell commands in the palette and context menu.
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { IStateDB } from '@jupyterlab/statedb';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';

import { FaasClient } from './client';
import { askName, magicLine, withMagic } from './commands';
import { faasIcon } from './icon';
import { ServerlessPanel } from './panel';

export { FaasApiError, FaasClient, FaasUnavailableError } from './client';
export { ServerlessPanel } from './panel';

const CATEGORY = 'Serverless';
const STATE_KEY = 'jupyter-faas:sidebar';

export namespace CommandIDs {
  export const makeFunction = 'jupyter-faas:make-function';
  export const deployCell = 'jupyter-faas:deploy-cell';
  export const openSidebar = 'jupyter-faas:open-sidebar';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-faas:plugin',
  description: 'A Serverless sidebar of deployed functions, and commands that make a cell a serverless function.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, INotebookTracker, IStateDB],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    tracker: INotebookTracker | null,
    state: IStateDB | null
  ) => {
    const panel = new ServerlessPanel(new FaasClient(app.serviceManager.serverSettings), {
      poll: true,
      // The selected function survives a reload, as the panel's place in the sidebar does.
      onSelect: name => void state?.save(STATE_KEY, { selected: name }),
      initialSelection: state ? state.fetch(STATE_KEY).then(value => (value as any)?.selected ?? null) : undefined
    });
    panel.id = 'jupyter-faas-sidebar';
    panel.title.icon = faasIcon;
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, 'jupyter-faas-sidebar');

    app.commands.addCommand(CommandIDs.openSidebar, {
      label: 'Show the Serverless sidebar',
      execute: () => app.shell.activateById(panel.id)
    });

    const activeCodeCell = () => {
      const cell = tracker?.activeCell;
      return cell && cell.model.type === 'code' ? cell : null;
    };

    const rewrite = async (http: boolean): Promise<boolean> => {
      const cell = activeCodeCell();
      if (!cell) {
        return false;
      }
      const source = cell.model.sharedModel.getSource();
      let name = '';
      if (magicLine(source) === null) {
        const asked = await askName();
        if (asked === null) {
          return false;
        }
        name = asked;
      } else if (!http) {
        await showErrorMessage('Already a serverless function', `This cell starts with: ${magicLine(source)}`);
        return false;
      }
      cell.model.sharedModel.setSource(withMagic(source, name, http));
      return true;
    };

    app.commands.addCommand(CommandIDs.makeFunction, {
      label: 'Make cell a serverless function',
      caption: 'Insert %%faas NAME at the top of the active code cell',
      icon: faasIcon,
      isEnabled: () => activeCodeCell() !== null,
      execute: async () => {
        await rewrite(false);
      }
    });

    app.commands.addCommand(CommandIDs.deployCell, {
      label: 'Deploy cell as HTTP endpoint',
      caption: 'Insert %%faas NAME --http at the top of the active code cell, then run it',
      icon: faasIcon,
      isEnabled: () => activeCodeCell() !== null,
      execute: async () => {
        const notebook = tracker?.currentWidget;
        if (!notebook || !(await rewrite(true))) {
          return;
        }
        await NotebookActions.run(notebook.content, notebook.sessionContext);
        app.shell.activateById(panel.id);
      }
    });

    for (const command of [CommandIDs.makeFunction, CommandIDs.deployCell, CommandIDs.openSidebar]) {
      palette?.addItem({ command, category: CATEGORY });
    }
    app.contextMenu.addItem({ command: CommandIDs.makeFunction, selector: '.jp-Notebook .jp-CodeCell', rank: 20 });
    app.contextMenu.addItem({ command: CommandIDs.deployCell, selector: '.jp-Notebook .jp-CodeCell', rank: 21 });
  }
};

export default plugin;
