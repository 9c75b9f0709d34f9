import { Widget } from '@lumino/widgets';

import { lockIcon, unlockIcon } from './icons';
import { AttestationModel } from './model';

/**
 * The status bar item: a lock and "SEV-SNP · verified 2 min ago" / "SIMULATED" /
 * "attestation FAILED" / "not confidential". A click opens the attestation panel.
 */
export class AttestationStatus extends Widget {
  constructor(model: AttestationModel, onClick: () => void) {
    super();
    this._model = model;
    this.addClass('jp-cc-StatusItem');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._icon = document.createElement('span');
    this._icon.className = 'jp-cc-StatusItem-icon';
    this._label = document.createElement('span');
    this._label.className = 'jp-cc-StatusItem-label';
    this.node.append(this._icon, this._label);
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', (event: KeyboardEvent) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        onClick();
      }
    });
    model.changed.connect(this._render, this);
    this._render();
  }

  private _render(): void {
    const view = this._model.view();
    const node = this.node;
    for (const cls of Array.from(node.classList)) {
      if (cls.startsWith('jp-cc-level-')) {
        node.classList.remove(cls);
      }
    }
    node.classList.add(view.className);
    node.dataset.ccLevel = view.level;
    node.title = view.tooltip;
    this._label.textContent = view.label;
    const icon = view.locked ? lockIcon : unlockIcon;
    if (icon !== this._shownIcon) {
      this._shownIcon = icon;
      this._icon.textContent = '';
      icon.element({ container: this._icon, tag: 'span', stylesheet: 'statusBar' });
    }
  }

  private _model: AttestationModel;
  private _icon: HTMLSpanElement;
  private _label: HTMLSpanElement;
  private _shownIcon: typeof lockIcon | null = null;
}
