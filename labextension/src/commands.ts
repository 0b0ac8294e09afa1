// Turning the active code cell into a serverless function: the magic line, and the commands that write it.
import { InputDialog, showErrorMessage } from '@jupyterlab/apputils';

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function isValidName(name: string): boolean {
  return IDENTIFIER.test(name);
}

/**
 * The cell's source with `%%faas NAME` (and `--http`) as its first line. A cell that already starts with
 * %%faas keeps its own line, and gains `--http` if asked for.
 */
export function withMagic(source: string, name: string, http: boolean): string {
  const lines = source.split('\n');
  const first = lines[0].trim();
  if (first.startsWith('%%faas')) {
    if (http && !first.split(/\s+/).includes('--http')) {
      lines[0] = `${lines[0].trimEnd()} --http`;
    }
    return lines.join('\n');
  }
  return [`%%faas ${name}${http ? ' --http' : ''}`, ...lines].join('\n');
}

/** The %%faas line the cell starts with, if any. */
export function magicLine(source: string): string | null {
  const first = source.split('\n')[0].trim();
  return first.startsWith('%%faas') ? first : null;
}

/** Ask for a function name; null when cancelled. An invalid name is explained, not accepted. */
export async function askName(): Promise<string | null> {
  for (;;) {
    const result = await InputDialog.getText({
      title: 'Name of the serverless function',
      label: 'A Python identifier, e.g. square',
      placeholder: 'square'
    });
    if (!result.button.accept) {
      return null;
    }
    const name = (result.value ?? '').trim();
    if (isValidName(name)) {
      return name;
    }
    await showErrorMessage(
      'Not a valid function name',
      `${JSON.stringify(name)} is not a Python identifier: use letters, digits and _, not starting with a digit.`
    );
  }
}
