// imgcrunch's web page: the same HTTP API as curl, no build step, nothing from a CDN.
// Everything shown from a request (names, URLs, errors) goes in through textContent, never HTML.

const POLL_MS = 1000;
const KEY_STORAGE = "imgcrunch-api-key";
const ACTIVE = new Set(["queued", "processing"]);

let apiKey = localStorage.getItem(KEY_STORAGE) || "";
let timer = null;
let imagesShown = 0;
let nextImages = null; // where the next page of a request's images starts (its `after`)

class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? error.message : `HTTP ${status}`);
    this.status = status;
    this.details = (error && error.details) || [];
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, body);
  }
  return response;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} KB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function showMessage(node, text, { error = false, details = [] } = {}) {
  node.replaceChildren();
  node.classList.toggle("error", error);
  if (!text) return;
  node.append(el("p", { text, style: "margin:0" }));
  if (details.length) {
    const list = el("ul");
    for (const d of details) {
      const where = [d.row ? `row ${d.row}` : null, d.column || d.field].filter(Boolean).join(", ");
      list.append(el("li", { text: where ? `${where}: ${d.reason}` : d.reason }));
    }
    node.append(list);
  }
}

function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    document.getElementById("key-box").open = true;
    return "This server needs an API key: enter it above.";
  }
  return error.message;
}

function progressBar(request) {
  const bar = el("progress", {
    max: "100",
    value: String(request.progress.percent),
    "aria-label": `Progress of request ${request.request_id}`,
  });
  bar.value = request.progress.percent;
  return bar;
}

function figures(request) {
  const p = request.progress;
  const parts = [`${p.done} of ${p.total} done`, `${p.failed} failed`];
  if (p.kept_original) parts.push(`${p.kept_original} kept as they were`);
  if (p.reused) parts.push(`${p.reused} unchanged since the last run, reused`);
  if (p.non_compliant !== null && p.non_compliant !== undefined) {
    parts.push(`${p.compliant} compliant, ${p.non_compliant} not compliant with ${request.profile}`);
  }
  if (request.savings_percent !== null) parts.push(`${request.savings_percent}% saved`);
  parts.push(`${size(request.bytes_in)} → ${size(request.bytes_out)}`);
  if (request.images_per_second) parts.push(`${request.images_per_second} images/s`);
  if (request.eta_seconds) parts.push(`about ${Math.ceil(request.eta_seconds)} s left`);
  return el("p", { class: "figures", text: parts.join(" · ") });
}

async function download(requestId, messageNode) {
  try {
    const response = await api(`/download/${requestId}`);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: `imgcrunch-${requestId}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    showMessage(messageNode, explain(error), { error: true });
  }
}

// --- the list page -------------------------------------------------------------------------

function requestCard(request) {
  const title = el("a", { href: `#/requests/${request.request_id}`, text: `Request ${request.request_id.slice(0, 8)}` });
  const status = el("span", { class: `status ${request.status}`, text: request.status.replaceAll("_", " ") });
  const card = el(
    "li",
    { class: "request", "data-request-id": request.request_id, "data-status": request.status },
    el("header", {}, el("strong", {}, title), status),
    progressBar(request),
    figures(request),
  );
  if (request.output_csv_url) {
    const button = el("button", { type: "button", class: "secondary", text: "Download CSV" });
    button.addEventListener("click", () => download(request.request_id, document.getElementById("list-message")));
    card.append(button);
  }
  return card;
}

async function refreshList() {
  const message = document.getElementById("list-message");
  try {
    const body = await (await api("/requests?limit=50")).json();
    const list = document.getElementById("requests");
    list.replaceChildren(...body.requests.map(requestCard));
    showMessage(message, body.requests.length ? "" : "No requests yet: upload a CSV above.");
  } catch (error) {
    showMessage(message, explain(error), { error: true });
  }
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const message = document.getElementById("upload-message");
  const data = new FormData(form);
  for (const name of ["webhook_url", "quality", "effort", "variants", "profile"]) {
    if (!data.get(name)) data.delete(name);
  }
  showMessage(message, "Uploading…");
  try {
    const body = await (await api("/upload", { method: "POST", body: data })).json();
    showMessage(message, `Accepted: ${body.total_images} images, request ${body.request_id}.`);
    form.reset();
    refreshList();
  } catch (error) {
    showMessage(message, explain(error), { error: true, details: error.details || [] });
  }
}

// --- a request's page ----------------------------------------------------------------------

function variantFigure(image, variant) {
  const kept = variant.kept_original ? ", original kept" : variant.quality ? `, q${variant.quality}` : "";
  return el(
    "figure",
    { class: "variant" },
    el("img", { src: variant.url, alt: `${variant.name} of row ${image.row}`, loading: "lazy", class: "after" }),
    el("figcaption", { text: `${variant.name}: ${variant.width}×${variant.height}, ${size(variant.bytes)}${kept}` }),
  );
}

function variantsLine(status) {
  if (status.variants.length === 1 && status.variants[0].name === "output") return null;
  return el(
    "ul",
    { class: "variant-totals", "aria-label": "variants" },
    ...status.variants.map((variant) => {
      const rules = variant.profile ? ` (${variant.profile}'s rules)` : "";
      return el("li", { text: `${variant.spec}${rules}: ${size(variant.bytes_out)}` });
    }),
  );
}

// How the source cache served a done image (the images listing's `reuse`).
const REUSE_TEXT = {
  reused: " · unchanged, reused",
  changed: " · changed at its origin: new URL",
};

function imageRow(image) {
  const before = el("img", { src: image.source_url, alt: `original of row ${image.row}`, loading: "lazy" });
  const after = image.variants.length > 1
    ? el("div", { class: "variants" }, ...image.variants.map((variant) => variantFigure(image, variant)))
    : image.output_url
      ? el("img", { src: image.output_url, alt: `compressed image of row ${image.row}`, loading: "lazy", class: "after" })
      : el("span", { text: "–" });
  let result;
  if (image.status === "done") {
    const saved = image.bytes_in ? Math.round(100 * (1 - image.bytes_out / image.bytes_in)) : 0;
    const kept = image.kept_original ? ": original kept, without metadata (re-encoding would not shrink it)" : "";
    const reuse = REUSE_TEXT[image.reuse] || "";
    result = el("span", { text: `${saved}% smaller${kept}${reuse}` });
  } else if (image.status === "failed") {
    result = el("span", { class: "error-text", text: `${image.error_code}: ${image.error_message}` });
  } else {
    result = el("span", { text: image.status });
  }
  if (image.findings.length) {
    result = el(
      "div",
      {},
      result,
      el(
        "ul",
        { class: "findings", "aria-label": `findings for row ${image.row}` },
        ...image.findings.map((finding) => el("li", {}, el("code", { text: finding.code }), `: ${finding.message}`)),
      ),
    );
  }
  return el(
    "tr",
    {},
    el("td", { text: image.row }),
    el("td", { text: image.product_name }),
    el("td", {}, before),
    el("td", {}, after),
    el("td", { text: `${size(image.bytes_in)} → ${size(image.bytes_out)}` }),
    el("td", {}, result),
  );
}

async function showImages(requestId, { more = false } = {}) {
  const after = more && nextImages ? `&after=${nextImages}` : "";
  const body = await (await api(`/requests/${requestId}/images?limit=100${after}`)).json();
  nextImages = body.next_url ? new URL(body.next_url).searchParams.get("after") : null;
  const tbody = document.querySelector("#images tbody");
  const rows = body.images.map(imageRow);
  if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
  imagesShown = (more ? imagesShown : 0) + body.images.length;
  const button = document.getElementById("more-images");
  button.hidden = !body.next_url;
  button.onclick = () => showImages(requestId, { more: true });
}

async function refreshRequest(requestId) {
  const message = document.getElementById("request-message");
  try {
    const status = await (await api(`/status/${requestId}`)).json();
    document.getElementById("request-title").textContent = `Request ${requestId}`;
    const statusLine = el("p", {}, "Status: ", el("span", { class: `status ${status.status}`, text: status.status.replaceAll("_", " ") }));
    const profile = status.profile ? ` · marketplace ${status.profile}` : "";
    const options = el("p", { class: "figures", text: `quality ${status.quality} · effort ${status.effort}${profile}` });
    const parts = [statusLine, progressBar(status), figures(status), options];
    const variants = variantsLine(status);
    if (variants) parts.push(variants);
    if (status.error) parts.push(el("p", { class: "error-text", text: status.error }));
    document.getElementById("request-summary").replaceChildren(...parts);
    document.getElementById("download").disabled = !status.output_csv_url;
    document.getElementById("retry").disabled = status.status !== "completed_with_errors";
    document.getElementById("cancel").disabled = !ACTIVE.has(status.status);
    if (imagesShown <= 100) await showImages(requestId);
    return ACTIVE.has(status.status);
  } catch (error) {
    showMessage(message, explain(error), { error: true });
    return false;
  }
}

async function act(requestId, action) {
  const message = document.getElementById("request-message");
  try {
    await api(`/requests/${requestId}/${action}`, { method: "POST" });
    showMessage(message, action === "cancel" ? "Cancelled." : "Retrying the failed images…");
    route();
  } catch (error) {
    showMessage(message, explain(error), { error: true });
  }
}

// --- routing and polling -------------------------------------------------------------------

function poll(step) {
  clearTimeout(timer);
  const tick = async () => {
    const again = await step();
    if (again !== false) timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

function route() {
  const match = location.hash.match(/^#\/requests\/([0-9a-f-]{36})$/);
  document.getElementById("list-page").hidden = Boolean(match);
  document.getElementById("request-page").hidden = !match;
  if (match) {
    const requestId = match[1];
    imagesShown = 0;
    showMessage(document.getElementById("request-message"), "");
    document.getElementById("download").onclick = () => download(requestId, document.getElementById("request-message"));
    document.getElementById("retry").onclick = () => act(requestId, "retry");
    document.getElementById("cancel").onclick = () => act(requestId, "cancel");
    poll(() => refreshRequest(requestId));
  } else {
    poll(async () => { await refreshList(); return true; });
  }
  document.getElementById("main").focus({ preventScroll: true });
}

function setUp() {
  document.getElementById("api-key").value = apiKey;
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = document.getElementById("api-key").value.trim();
    if (apiKey) localStorage.setItem(KEY_STORAGE, apiKey); else localStorage.removeItem(KEY_STORAGE);
    document.getElementById("key-box").open = false;
    route();
  });
  document.getElementById("upload-form").addEventListener("submit", upload);
  const zone = document.getElementById("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) document.getElementById("file").files = event.dataTransfer.files;
  });
  window.addEventListener("hashchange", route);
  route();
}

setUp();
