// The sidebar's icon: a lambda in a cloud.
import { LabIcon } from '@jupyterlab/ui-components';

const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" d="M6.5 19h11a4.5 4.5 0 0 0 .7-8.95A6 6 0 0 0 6.6 8.6 5.2 5.2 0 0 0 6.5 19zm0-1.6a3.6 3.6 0 0 1 0-7.2h.9l.2-.8a4.4 4.4 0 0 1 8.6.9l.1.9.9.1a2.9 2.9 0 0 1-.2 5.8h-11z"/>
  <path class="jp-icon3" fill="#616161" d="M9.2 16.6l2.1-4.9-.7-1.5H9.6V9h1.8l3.4 7.6h-1.6l-1.2-2.8-1.2 2.8z"/>
</svg>`;

export const faasIcon = new LabIcon({ name: 'jupyter-faas:serverless', svgstr: svg });
