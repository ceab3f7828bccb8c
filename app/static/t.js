/* viraltrace tracking snippet: docs/dashboard.md. Plain JS, no dependencies.
 * <script async src="https://API/t.js" data-campaign="spring"></script>
 * data-endpoint overrides the API origin (default: where this file came from).
 * Under DNT or GPC nothing is written to storage; the browser's own DNT /
 * Sec-GPC header makes the server record events without any visitor id. */
(function (w, d) {
  "use strict";
  var script = d.currentScript || d.querySelector("script[data-campaign][src*='t.js']");
  if (!script || w.viraltrace) return;
  var campaign = script.getAttribute("data-campaign");
  if (!campaign) {
    w.console && console.warn("viraltrace: the script tag needs data-campaign");
    return;
  }
  var nav = navigator;
  var endpoint = (script.getAttribute("data-endpoint") || new URL(script.src, d.baseURI).origin)
    .replace(/\/+$/, "");
  // GPC first: it is the one with legal weight, as on the server (app/enrich.py).
  var privacy = nav.globalPrivacyControl === true ? "gpc"
    : nav.doNotTrack === "1" || w.doNotTrack === "1" ? "dnt" : null;
  var KEY = "viraltrace:" + campaign;
  var TOKEN = /^[A-Za-z0-9_-]{1,64}$/;
  var shares = {};

  function read() {
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  }
  function write(value) {
    try { sessionStorage.setItem(KEY, value); } catch (e) { /* storage blocked: memory only */ }
  }
  function valid(value) {
    return value && TOKEN.test(value) ? value : null;
  }

  // The token of this visit: the landing URL's vt, else the one kept for this tab.
  var fromUrl = valid(new URL(location.href).searchParams.get("vt"));
  var token = fromUrl || (privacy ? null : valid(read()));
  if (fromUrl && !privacy) write(fromUrl);

  function uuid() {
    var b = crypto.getRandomValues(new Uint8Array(16)), s = "", i;
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (i = 0; i < 16; i++) s += (i == 4 || i == 6 || i == 8 || i == 10 ? "-" : "") + (b[i] + 256).toString(16).slice(1);
    return s;
  }
  // Scheme, host and path only: query strings often carry personal data.
  function page() {
    return location.origin + location.pathname;
  }

  function pixel(type) {
    var q = { c: campaign, e: type, t: token, u: page(), eid: uuid(), ts: Date.now() }, parts = [], k;
    for (k in q) if (q[k] != null) parts.push(k + "=" + encodeURIComponent(q[k]));
    new Image().src = endpoint + "/p.gif?" + parts.join("&");
  }

  /** Sends one event (view, click, signup, convert, reaction, comment, report,
   * unsubscribe) as text/plain JSON by sendBeacon; props: channel, value, text,
   * reaction. Returns whether the browser queued it. */
  function track(type, props) {
    var ev = { type: type, campaign: campaign, event_id: uuid(), ts: Date.now(), url: page() };
    var body, url = endpoint + "/v1/events";
    props = props || {};
    if (token) ev.token = token;
    ["channel", "value", "text", "reaction"].forEach(function (k) {
      if (props[k] != null) ev[k] = props[k];
    });
    body = JSON.stringify([ev]);
    if (nav.sendBeacon && nav.sendBeacon(url, body)) return true;
    fetch(url, { method: "POST", body: body, keepalive: true, mode: "no-cors", credentials: "omit" })
      .catch(function () {});
    return false;
  }

  /** Mints a share of this visit's token (one per channel per page view) and
   * resolves to the URL to share: the server's share_url, else this page with
   * vt=<child token>. Rejects with the server's reason. */
  function share(channel) {
    var key = channel || "";
    if (!shares[key]) {
      shares[key] = fetch(endpoint + "/v1/shares", {
        method: "POST",
        credentials: "omit",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ campaign: campaign, parent: token || undefined, channel: channel || undefined })
      }).then(function (r) {
        return r.json().then(function (j) {
          var err, u;
          if (!r.ok) {
            err = new Error((j.error && j.error.message) || "share failed: " + r.status);
            err.reason = j.error && j.error.reason;
            err.status = r.status;
            throw err;
          }
          if (j.share_url) return j.share_url;
          u = new URL(location.href);
          u.searchParams.set("vt", j.token);
          return u.href;
        });
      });
      shares[key].catch(function () { delete shares[key]; });
    }
    return shares[key];
  }

  // <a data-viraltrace-share="email" href="mailto:?body={url}">: a click mints the
  // share, puts its URL (encoded) in place of {url} (or goes to it when there is
  // none) and follows the link; the element then fires "viraltrace:share".
  d.addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a[data-viraltrace-share]");
    if (!a || e.defaultPrevented || e.button) return;
    var template = a.getAttribute("data-viraltrace-href") || a.getAttribute("href") || "{url}";
    var target = e.ctrlKey || e.metaKey || e.shiftKey ? "_blank" : a.target;
    a.setAttribute("data-viraltrace-href", template);
    e.preventDefault();
    share(a.getAttribute("data-viraltrace-share")).then(function (url) {
      var href = template.indexOf("{url}") < 0 ? url : template.split("{url}").join(encodeURIComponent(url));
      a.href = href;
      a.dispatchEvent(new CustomEvent("viraltrace:share", { bubbles: true, detail: { url: url } }));
      if (target && target != "_self") w.open(href, target, "noopener");
      else location.assign(href);
    }, function (err) {
      a.dispatchEvent(new CustomEvent("viraltrace:error", { bubbles: true, detail: { error: err } }));
    });
  });

  w.viraltrace = {
    campaign: campaign,
    privacy: privacy,
    token: function () { return token; },
    share: share,
    track: track
  };
  pixel("view");
})(window, document);
