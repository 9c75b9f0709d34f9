import { KernelSpec } from '@jupyterlab/services';

import { specIsConfidential } from './state';

/** Attribute set on launcher cards of confidential kernels (styled in style/base.css). */
export const BADGE_ATTRIBUTE = 'data-jp-cc-confidential';

/**
 * Marks the launcher cards of confidential kernelspecs with a lock badge.
 *
 * Launcher cards carry no kernel name in the DOM, only the kernelspec's display name (as the
 * card's title), so cards are matched by display name against the specs whose metadata names
 * the confidential provisioner. The mark is an attribute (React leaves attributes it does not
 * own alone) and the badge is drawn by CSS, so re-renders neither lose nor duplicate it; a
 * MutationObserver marks cards of launchers opened later.
 */
export class LauncherBadges {
  constructor(specs: KernelSpec.IManager, root: HTMLElement = document.body) {
    this._specs = specs;
    this._root = root;
    specs.specsChanged.connect(this._schedule, this);
    this._observer = new MutationObserver(() => this._schedule());
    this._observer.observe(root, { childList: true, subtree: true });
    this._schedule();
  }

  dispose(): void {
    this._observer.disconnect();
    this._specs.specsChanged.disconnect(this._schedule, this);
  }

  private _schedule(): void {
    if (this._pending) {
      return;
    }
    this._pending = true;
    window.requestAnimationFrame(() => {
      this._pending = false;
      this._mark();
    });
  }

  private _confidentialNames(): Set<string> {
    const names = new Set<string>();
    const specs = this._specs.specs;
    if (specs) {
      for (const spec of Object.values(specs.kernelspecs)) {
        if (spec && specIsConfidential(spec.metadata as { [key: string]: unknown })) {
          names.add(spec.display_name);
        }
      }
    }
    return names;
  }

  private _mark(): void {
    const cards = this._root.querySelectorAll<HTMLElement>('.jp-Launcher .jp-LauncherCard');
    if (cards.length === 0) {
      return;
    }
    const names = this._confidentialNames();
    cards.forEach(card => {
      const title = card.getAttribute('title') || '';
      const category = card.getAttribute('data-category') || '';
      const kernelCard = card.querySelector('.jp-Launcher-kernelIcon, .jp-LauncherCard-noKernelIcon');
      const confidential = !!kernelCard && names.has(title) && category !== 'Other';
      if (confidential && !card.hasAttribute(BADGE_ATTRIBUTE)) {
        card.setAttribute(BADGE_ATTRIBUTE, 'true');
      } else if (!confidential && card.hasAttribute(BADGE_ATTRIBUTE)) {
        card.removeAttribute(BADGE_ATTRIBUTE);
      }
    });
  }

  private _specs: KernelSpec.IManager;
  private _root: HTMLElement;
  private _observer: MutationObserver;
  private _pending = false;
}
