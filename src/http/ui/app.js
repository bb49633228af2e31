// keypooler's admin page: plain DOM, no framework, no build step.
//
// Rules this file keeps:
// * Every value from the server reaches the page as text (textContent, Node.append of a
//   string, setAttribute): never as HTML.
// * The admin token lives in sessionStorage and travels only in the Authorization header of
//   requests to this origin; it is never put in a URL. A `#token=` fragment is read once and
//   removed from the address bar.
'use strict';

(() => {
  const TOKEN = 'keypooler.admin-token';
  // Keys per page: the table stays quick at any pool size.
  const PAGE_SIZE = 100;
  const REFRESH_MS = 3000;
  const AUDIT_ROWS = 50;

  const $ = (id) => document.getElementById(id);

  // An element with attributes and children; strings become text nodes.
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const counted = (n, noun) => `${n} ${noun}${n === 1 ? '' : 's'}`;
  const text = (value) => (value === null || value === undefined ? '' : String(value));

  function when(rfc3339) {
    if (!rfc3339) return '';
    const date = new Date(rfc3339);
    return Number.isNaN(date.getTime()) ? text(rfc3339) : date.toLocaleString();
  }

  // ---- the token --------------------------------------------------------------------------

  const token = {
    get: () => sessionStorage.getItem(TOKEN),
    set: (value) => sessionStorage.setItem(TOKEN, value),
    clear: () => sessionStorage.removeItem(TOKEN),
  };

  // `#token=<t>`: kept, then wiped from the address bar and the history entry.
  function takeFragmentToken() {
    if (!location.hash.startsWith('#')) return;
    const value = new URLSearchParams(location.hash.slice(1)).get('token');
    if (value === null) return;
    history.replaceState(history.state, '', location.pathname + location.search);
    if (value) token.set(value);
  }

  // ---- the API ----------------------------------------------------------------------------

  class SignedOut extends Error {}

  async function api(method, path, body) {
    const secret = token.get();
    if (!secret) throw new SignedOut();
    const headers = { Authorization: `Bearer ${secret}` };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const raw = await response.text();
    let data = null;
    try {
      data = raw ? JSON.parse(raw) : null;
    } catch {
      data = null;
    }
    if (response.status === 401) {
      signOut('The server refused the token.');
      throw new SignedOut();
    }
    if (!response.ok) {
      const message = data && typeof data.error === 'string' ? data.error : `HTTP ${response.status}`;
      throw new Error(`${method} ${path.split('?')[0]}: ${message}`);
    }
    return { data, response };
  }

  // The `after` of a `Link: <…>; rel="next"` header, if it names a page on this server.
  function nextAfter(link) {
    if (!link) return null;
    for (const part of link.split(',')) {
      const match = /<([^>]*)>\s*;\s*rel="?next"?/.exec(part);
      if (!match) continue;
      const url = new URL(match[1], location.origin);
      if (url.origin === location.origin) return url.searchParams.get('after');
    }
    return null;
  }

  // ---- status line ------------------------------------------------------------------------

  function say(message, isError) {
    const status = $('status');
    status.textContent = message;
    status.className = isError ? 'error' : 'ok';
  }

  function failed(error) {
    if (!(error instanceof SignedOut)) say(error.message, true);
  }

  // ---- state ------------------------------------------------------------------------------

  const state = {
    tiers: [],
    consumers: [],
    // Keys in the pool, from /admin/health.
    poolSize: undefined,
    // The keys shown; with a server that pages, `cursors[i]` is the `after` of page i.
    keys: { rows: [], page: 0, cursors: [null], next: null, all: null },
    keyNames: new Map(),
    rowsById: new Map(),
    pendingDelete: null,
    editing: null,
    timer: null,
    refreshing: false,
    firstShown: false,
  };

  // ---- loading ----------------------------------------------------------------------------

  async function loadTiers() {
    state.tiers = (await api('GET', '/admin/tiers')).data;
    renderTiers();
  }

  async function loadConsumers() {
    state.consumers = (await api('GET', '/admin/consumers')).data;
    renderConsumers();
  }

  async function loadHealth() {
    const health = (await api('GET', '/admin/health')).data;
    $('summary').textContent = [
      counted(health.pool_size, 'key'),
      `${health.active_keys} servable`,
      counted(health.tiers, 'tier'),
      counted(health.features, 'feature'),
    ].join(' · ');
    state.poolSize = health.pool_size;
    renderRange();
  }

  // One page of keys. A server that pages (`?limit=&after=`, `Link: rel="next"`) answers at
  // most PAGE_SIZE; one that does not answers every key, and the page is cut here.
  async function loadKeys() {
    const keys = state.keys;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const after = keys.all === null ? keys.cursors[keys.page] : null;
    if (after) query.set('after', after);
    const { data, response } = await api('GET', `/admin/keys?${query}`);
    if (data.length > PAGE_SIZE) {
      if (keys.all === null) keys.page = 0;
      keys.all = data;
      const pages = Math.max(1, Math.ceil(data.length / PAGE_SIZE));
      keys.page = Math.min(keys.page, pages - 1);
      keys.rows = data.slice(keys.page * PAGE_SIZE, (keys.page + 1) * PAGE_SIZE);
      keys.next = keys.page < pages - 1 ? 'page' : null;
    } else {
      if (keys.all !== null) {
        keys.all = null;
        keys.page = 0;
        keys.cursors = [null];
      }
      if (data.length === 0 && keys.page > 0) {
        // The last keys of this page were deleted: show the page before.
        keys.page -= 1;
        return loadKeys();
      }
      keys.rows = data;
      keys.next = nextAfter(response.headers.get('Link'));
    }
    for (const key of keys.rows) state.keyNames.set(key.id, key.name);
    renderKeys();
    if (!state.firstShown) {
      state.firstShown = true;
      performance.mark('keypooler:keys-shown');
    }
  }

  async function loadAudit() {
    const events = (await api('GET', `/admin/usage?limit=${AUDIT_ROWS}`)).data;
    renderAudit(events);
  }

  async function refresh() {
    if (state.refreshing || document.hidden || !token.get()) return;
    state.refreshing = true;
    try {
      await Promise.all([loadKeys(), loadHealth(), loadAudit()]);
    } catch (error) {
      failed(error);
    } finally {
      state.refreshing = false;
    }
  }

  async function loadAll() {
    await Promise.all([loadTiers(), loadConsumers(), loadKeys(), loadHealth(), loadAudit()]);
  }

  // ---- rendering: tiers, consumers, audit -------------------------------------------------

  function limitText(limit) {
    return `${limit.rate_limit} / ${limit.window_seconds}s`;
  }

  function renderTiers() {
    const rows = state.tiers.map((tier) => {
      const features = el('ul', { class: 'features' });
      for (const [feature, limit] of Object.entries(tier.features || {})) {
        features.append(el('li', {}, el('span', { class: 'feature' }, feature), ` ${limitText(limit)}`));
      }
      return el('tr', { 'data-tier': tier.name },
        el('td', {}, tier.name), el('td', {}, text(tier.description)), el('td', {}, features));
    });
    $('tiers-table').tBodies[0].replaceChildren(...rows);
    // The add-key form's tier list, keeping the choice.
    const select = $('key-tier');
    const chosen = select.value;
    select.replaceChildren(...state.tiers.map((tier) => el('option', { value: tier.name }, tier.name)));
    if (state.tiers.some((tier) => tier.name === chosen)) select.value = chosen;
  }

  function renderConsumers() {
    const rows = state.consumers.map((consumer) => el('tr', { 'data-consumer-id': consumer.id },
      el('td', {}, consumer.name),
      el('td', {}, text(consumer.description)),
      el('td', {}, consumer.is_active === false ? 'no' : 'yes'),
      el('td', {}, (consumer.scopes || []).join(', '))));
    $('consumers-table').tBodies[0].replaceChildren(...rows);
  }

  function renderAudit(events) {
    const consumers = new Map(state.consumers.map((consumer) => [consumer.id, consumer.name]));
    const rows = events.map((event) => el('tr', {},
      el('td', { title: text(event.created_at) }, when(event.created_at)),
      el('td', { title: text(event.key_id) }, state.keyNames.get(event.key_id) || text(event.key_id)),
      el('td', {}, event.consumer_id === 'admin' ? 'admin' : consumers.get(event.consumer_id) || text(event.consumer_id)),
      el('td', {}, text(event.feature))));
    $('audit-table').tBodies[0].replaceChildren(...rows);
  }

  // ---- rendering: keys --------------------------------------------------------------------

  // The key's state as the server names it (see key health in docs/api.md).
  function stateCell(key) {
    const name = text(key.state);
    const cell = [el('span', { class: `state state-${name.replace(/[^a-z_]/g, '')}` }, name)];
    if (key.disabled_reason) cell.push(el('div', { class: 'detail' }, text(key.disabled_reason)));
    if (key.exhausted_until) cell.push(el('div', { class: 'detail' }, `exhausted until ${when(key.exhausted_until)}`));
    if (key.cooldown_until) cell.push(el('div', { class: 'detail' }, `cooling until ${when(key.cooldown_until)}`));
    return cell;
  }

  function usageCell(key) {
    const cooldowns = key.cooldowns || {};
    return Object.entries(key.usage || {}).map(([feature, usage]) => {
      const line = el('div', { class: 'usage', 'data-feature': feature },
        el('span', { class: 'feature' }, feature), ' ',
        el('meter', { min: '0', max: text(usage.limit), value: text(usage.used) }), ' ',
        el('span', { class: 'count' }, `${usage.used}/${usage.limit}`),
        el('span', { class: 'detail' }, ` per ${usage.window_seconds}s`));
      if (cooldowns[feature]) line.append(el('span', { class: 'detail' }, ` cooling until ${when(cooldowns[feature])}`));
      return line;
    });
  }

  function capCell(key) {
    const lines = [];
    if (key.usage_limit !== undefined && key.usage_limit !== null) {
      const window = key.usage_window_seconds ? `per ${key.usage_window_seconds}s` : 'lifetime';
      lines.push(el('div', {}, `${text(key.usage_count)}/${key.usage_limit} ${window}`));
    }
    if (key.budget !== undefined && key.budget !== null) {
      const budget = key.budget;
      const amount = typeof budget === 'object' ? `${text(budget.amount)} ${text(budget.unit)}` : text(budget);
      lines.push(el('div', {}, `spent ${text(key.spent)} of ${amount}`));
      if (key.resets_at) lines.push(el('div', { class: 'detail' }, `resets ${when(key.resets_at)}`));
    }
    return lines;
  }

  // A row's buttons are made once and kept across refreshes, so a click never lands on a
  // button the refresh just replaced.
  function keyRow(key) {
    let row = state.rowsById.get(key.id);
    if (!row) {
      const edit = el('button', { type: 'button', class: 'edit' }, 'Edit');
      const toggle = el('button', { type: 'button', class: 'toggle' });
      const remove = el('button', { type: 'button', class: 'delete' });
      edit.addEventListener('click', () => startEdit(row.key));
      toggle.addEventListener('click', () => setActive(row.key, !row.key.is_active));
      remove.addEventListener('click', () => deleteKey(row.key));
      const cells = Array.from({ length: 6 }, () => el('td'));
      const tr = el('tr', { 'data-key-id': key.id }, ...cells, el('td', { class: 'actions' }, edit, toggle, remove));
      row = { tr, cells, toggle, remove, key };
      state.rowsById.set(key.id, row);
    }
    row.key = key;
    const [name, tier, status, usage, cap, expires] = row.cells;
    name.replaceChildren(el('span', { class: 'name' }, key.name));
    name.setAttribute('title', key.id);
    tier.textContent = key.tier || key.tier_id;
    status.replaceChildren(...stateCell(key));
    usage.replaceChildren(...usageCell(key));
    cap.replaceChildren(...capCell(key));
    expires.textContent = when(key.expires_at);
    row.toggle.textContent = key.is_active ? 'Disable' : 'Enable';
    const confirming = state.pendingDelete === key.id;
    row.remove.textContent = confirming ? 'Confirm delete' : 'Delete';
    row.remove.classList.toggle('confirm', confirming);
    return row.tr;
  }

  function renderKeys() {
    const keys = state.keys;
    const shown = new Set(keys.rows.map((key) => key.id));
    for (const id of state.rowsById.keys()) if (!shown.has(id)) state.rowsById.delete(id);
    $('keys-table').tBodies[0].replaceChildren(...keys.rows.map(keyRow));
    renderRange();
  }

  // Which keys the page shows, of how many; whether there are pages before and after.
  function renderRange() {
    const keys = state.keys;
    const first = keys.page * PAGE_SIZE;
    const total = keys.all !== null ? keys.all.length : state.poolSize;
    const range = keys.rows.length ? `${first + 1}–${first + keys.rows.length}` : 'none';
    $('keys-range').textContent = total === undefined ? range : `${range} of ${total}`;
    $('keys-prev').disabled = keys.page === 0;
    $('keys-next').disabled = keys.next === null;
  }

  function turnPage(step) {
    const keys = state.keys;
    if (step > 0) {
      if (keys.next === null) return;
      if (keys.all === null) keys.cursors[keys.page + 1] = keys.next;
      keys.page += 1;
    } else if (keys.page > 0) {
      keys.page -= 1;
    }
    loadKeys().catch(failed);
  }

  // ---- changes ----------------------------------------------------------------------------

  // Runs `change` with the form's buttons off, then reports and reloads.
  async function submitting(form, change) {
    const buttons = form.querySelectorAll('button');
    buttons.forEach((button) => { button.disabled = true; });
    try {
      const message = await change();
      if (message) say(message, false);
    } catch (error) {
      failed(error);
    } finally {
      buttons.forEach((button) => { button.disabled = false; });
    }
  }

  // An optional whole number from a form field: undefined when empty.
  function count(input, what) {
    const value = input.value.trim();
    if (value === '') return undefined;
    if (!/^\d+$/.test(value)) throw new Error(`${what} must be a whole number`);
    return Number(value);
  }

  // `name uses [window]` per line.
  function parseFeatures(source) {
    const features = {};
    source.split('\n').forEach((line, index) => {
      const words = line.trim().split(/[\s,:=/]+/).filter(Boolean);
      if (words.length === 0) return;
      const numbers = words.slice(1);
      if (numbers.length < 1 || numbers.length > 2 || !numbers.every((n) => /^\d+$/.test(n))) {
        throw new Error(`features, line ${index + 1}: write "name uses" or "name uses window-seconds"`);
      }
      const [rateLimit, window] = numbers.map(Number);
      features[words[0]] = window === undefined ? rateLimit : { rate_limit: rateLimit, window_seconds: window };
    });
    if (Object.keys(features).length === 0) throw new Error('a tier needs at least one feature');
    return features;
  }

  async function addTier(event) {
    event.preventDefault();
    const form = event.target;
    await submitting(form, async () => {
      const body = { name: $('tier-name').value, features: parseFeatures($('tier-features').value) };
      const description = $('tier-description').value.trim();
      if (description) body.description = description;
      const tier = (await api('POST', '/admin/tiers', body)).data;
      form.reset();
      await loadTiers();
      await loadHealth();
      return `Tier ${tier.name} added.`;
    });
  }

  async function addKey(event) {
    event.preventDefault();
    const form = event.target;
    const value = $('key-value');
    await submitting(form, async () => {
      const body = { name: $('key-name').value, tier: $('key-tier').value, key: value.value };
      const expires = $('key-expires').value.trim();
      if (expires) body.expires_at = expires;
      const cap = count($('key-cap'), 'usage cap');
      if (cap !== undefined) body.usage_limit = cap;
      const capWindow = count($('key-cap-window'), 'cap window');
      if (capWindow !== undefined) body.usage_window_seconds = capWindow;
      // The value is sent once: the field is cleared whatever the answer.
      value.value = '';
      const key = (await api('POST', '/admin/keys', body)).data;
      form.reset();
      await Promise.all([loadKeys(), loadHealth()]);
      return `Key ${key.name} added.`;
    });
    value.value = '';
  }

  function startEdit(key) {
    state.editing = key;
    $('edit-title').textContent = key.name;
    $('edit-name').value = key.name;
    $('edit-value').value = '';
    $('edit-expires').value = text(key.expires_at);
    $('edit-cap').value = text(key.usage_limit);
    $('edit-cap-window').value = text(key.usage_window_seconds);
    $('edit-active').checked = Boolean(key.is_active);
    $('edit-form').hidden = false;
    $('edit-name').focus();
  }

  function endEdit() {
    state.editing = null;
    $('edit-form').reset();
    $('edit-form').hidden = true;
  }

  // PATCH with the fields that changed only; an emptied optional field clears it (null).
  async function saveEdit(event) {
    event.preventDefault();
    const key = state.editing;
    if (!key) return;
    const form = event.target;
    const value = $('edit-value');
    await submitting(form, async () => {
      const body = {};
      if ($('edit-name').value !== key.name) body.name = $('edit-name').value;
      if (value.value) body.key = value.value;
      const expires = $('edit-expires').value.trim();
      if (expires !== text(key.expires_at)) body.expires_at = expires || null;
      const cap = count($('edit-cap'), 'usage cap');
      if ((cap ?? null) !== (key.usage_limit ?? null)) body.usage_limit = cap ?? null;
      const capWindow = count($('edit-cap-window'), 'cap window');
      if ((capWindow ?? null) !== (key.usage_window_seconds ?? null)) body.usage_window_seconds = capWindow ?? null;
      if ($('edit-active').checked !== Boolean(key.is_active)) body.is_active = $('edit-active').checked;
      value.value = '';
      if (Object.keys(body).length === 0) return 'Nothing to change.';
      await api('PATCH', `/admin/keys/${encodeURIComponent(key.id)}`, body);
      endEdit();
      await Promise.all([loadKeys(), loadHealth()]);
      return `Key ${body.name || key.name} changed.`;
    });
    value.value = '';
  }

  async function setActive(key, active) {
    try {
      await api('PATCH', `/admin/keys/${encodeURIComponent(key.id)}`, { is_active: active });
      await Promise.all([loadKeys(), loadHealth()]);
      say(`Key ${key.name} ${active ? 'enabled' : 'disabled'}.`, false);
    } catch (error) {
      failed(error);
    }
  }

  // The first click arms the button, a second within a few seconds deletes.
  async function deleteKey(key) {
    if (state.pendingDelete !== key.id) {
      state.pendingDelete = key.id;
      renderKeys();
      setTimeout(() => {
        if (state.pendingDelete === key.id) {
          state.pendingDelete = null;
          renderKeys();
        }
      }, 5000);
      return;
    }
    state.pendingDelete = null;
    try {
      await api('DELETE', `/admin/keys/${encodeURIComponent(key.id)}`);
      if (state.editing && state.editing.id === key.id) endEdit();
      await Promise.all([loadKeys(), loadHealth()]);
      say(`Key ${key.name} deleted.`, false);
    } catch (error) {
      failed(error);
    }
  }

  // ---- signing in and out -----------------------------------------------------------------

  function show(signedIn) {
    $('sign-in').hidden = signedIn;
    $('app').hidden = !signedIn;
    $('sign-out').hidden = !signedIn;
  }

  async function start() {
    show(true);
    $('sign-in-error').textContent = '';
    try {
      await loadAll();
    } catch (error) {
      failed(error);
      return;
    }
    if (state.timer === null) state.timer = setInterval(refresh, REFRESH_MS);
  }

  function signOut(message) {
    token.clear();
    if (state.timer !== null) clearInterval(state.timer);
    state.timer = null;
    endEdit();
    // Nothing the token showed stays on the page.
    for (const id of ['keys-table', 'tiers-table', 'consumers-table', 'audit-table']) {
      $(id).tBodies[0].replaceChildren();
    }
    state.rowsById.clear();
    state.keyNames.clear();
    state.keys = { rows: [], page: 0, cursors: [null], next: null, all: null };
    state.poolSize = undefined;
    $('summary').textContent = '';
    $('status').textContent = '';
    $('sign-in-error').textContent = message || '';
    show(false);
    $('sign-in-token').focus();
  }

  function signIn(event) {
    event.preventDefault();
    const input = $('sign-in-token');
    const value = input.value.trim();
    input.value = '';
    if (!value) return;
    token.set(value);
    start();
  }

  takeFragmentToken();
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut(''));
  $('tier-form').addEventListener('submit', addTier);
  $('key-form').addEventListener('submit', addKey);
  $('edit-form').addEventListener('submit', saveEdit);
  $('edit-cancel').addEventListener('click', endEdit);
  $('keys-prev').addEventListener('click', () => turnPage(-1));
  $('keys-next').addEventListener('click', () => turnPage(1));
  if (token.get()) start();
  else signOut('');
})();
