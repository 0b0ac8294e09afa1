// The jupyter-faas JavaScript runner: one JSON request a line on stdin, one JSON answer a line on the fd in argv.
// A cell is the body of an async function whose parameters are the names of its magic line.
'use strict';
const fs = require('fs');
const readline = require('readline');
const vm = require('vm');

const answerFd = Number(process.argv[process.argv.length - 1]);
const compiled = new Map();
// Cells may require() Node's modules (and packages installed where Node finds them).
globalThis.require = require;

function compile(request) {
  const key = JSON.stringify([request.filename, request.params, request.source]);
  let fn = compiled.get(key);
  if (fn === undefined) {
    // Line 1 of the wrapper stands for the magic line, so a line of the cell keeps its number in the cell.
    const wrapper = `(async function (${request.params.join(', ')}) {\n${request.source}\n})`;
    fn = new vm.Script(wrapper, { filename: request.filename }).runInThisContext();
    compiled.set(key, fn);
  }
  return fn;
}

function cellLine(error, filename) {
  const stack = String((error && error.stack) || '');
  const at = stack.indexOf(filename + ':');
  if (at < 0) return null;
  const match = /^:(\d+)/.exec(stack.slice(at + filename.length));
  return match ? Number(match[1]) : null;
}

function answer(message) {
  fs.writeSync(answerFd, JSON.stringify(message) + '\n');
}

async function handle(line) {
  const request = JSON.parse(line);
  try {
    const fn = compile(request);
    const value = await fn(...request.args.map((text) => JSON.parse(text)));
    const text = JSON.stringify(value === undefined ? null : value);
    answer({ ok: text === undefined ? 'null' : text });
  } catch (error) {
    const isError = error instanceof Error;
    answer({
      error: {
        name: isError ? error.name : typeof error,
        message: isError ? error.message : String(error),
        line: isError ? cellLine(error, request.filename) : null,
        stack: isError ? String(error.stack || '') : '',
      },
    });
  }
}

// What a call left running (a timer, a promise) must not end the runner when it fails later.
process.on('uncaughtException', (error) => console.error(`uncaught after a call: ${error && error.stack}`));
process.on('unhandledRejection', (error) => console.error(`unhandled rejection: ${error && error.stack}`));

const lines = readline.createInterface({ input: process.stdin, terminal: false });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(() => handle(line));
});
lines.on('close', () => process.exit(0));
