// The demo form, live: posts the case and renders the server-sent events of its explanation as they come.
// Every piece of markup comes from the server's templates (escaped there); text goes in as text.
// Without this script the form posts normally and the server answers with the whole result page.
"use strict";

(function () {
  const form = document.getElementById("case-form");
  if (!form || !window.fetch || !window.TextDecoderStream || !window.ReadableStream) {
    return;
  }
  const button = document.getElementById("submit-case");
  const byId = (id) => document.getElementById(id);

  function reset() {
    byId("steps").replaceChildren();
    byId("result-slot").replaceChildren();
    byId("result-error").replaceChildren();
    byId("narrative").textContent = "";
    byId("narrative-block").hidden = true;
    for (const element of form.querySelectorAll(".field-error")) {
      element.textContent = "";
    }
    for (const element of form.querySelectorAll("[aria-invalid]")) {
      element.removeAttribute("aria-invalid");
    }
  }

  function showError(message) {
    const paragraph = document.createElement("p");
    paragraph.textContent = message;
    byId("result-error").replaceChildren(paragraph);
  }

  const handlers = {
    ratelimit(data) {
      byId("rate-limit").innerHTML = data.html;
    },
    step(data) {
      byId("steps").insertAdjacentHTML("beforeend", data.html);
    },
    narrative(data) {
      byId("narrative").textContent = data.text;
      byId("narrative-block").hidden = false;
    },
    result(data) {
      byId("result-slot").innerHTML = data.html;
    },
    invalid(data) {
      for (const [id, message] of Object.entries(data.errors)) {
        const element = byId(id);
        if (element) {
          element.textContent = message;
        }
      }
      for (const id of data.inputs) {
        const input = byId(id);
        if (input) {
          input.setAttribute("aria-invalid", "true");
        }
      }
      showError(data.message);
      const first = data.inputs.map(byId).find((input) => input);
      if (first) {
        first.focus();
      }
    },
    error(data) {
      showError(data.message);
    },
  };

  function dispatch(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) {
        event = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).trimStart());
      }
    }
    if (handlers[event] && data.length) {
      handlers[event](JSON.parse(data.join("\n")));
    }
  }

  let busy = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) {
      return;
    }
    busy = true;
    reset();
    // Not `disabled`: a disabled button would drop the keyboard focus to the page.
    button.setAttribute("aria-disabled", "true");
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "text/event-stream" },
        credentials: "same-origin",
      });
      if (!response.body || !(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
        showError("The service answered unexpectedly (" + response.status + "). Try again.");
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      showError("The connection to the service was lost. Try again.");
    } finally {
      busy = false;
      button.removeAttribute("aria-disabled");
    }
  });
})();
