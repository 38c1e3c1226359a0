// Replays every connection-policy scenario vector in protocol/vectors/
// against the JS client's Connector, in virtual time, with the runner
// semantics of the Rust replay (protocol/tests/vectors.rs): the two
// clients' connection policies are one spec. The format is described in
// protocol/vectors/README.md.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

import { Connector } from "../../holdfast.js";

const DIR = fileURLToPath(new URL("../../../../protocol/vectors/", import.meta.url));
const FILES = readdirSync(DIR)
  .filter((name) => name.endsWith(".json"))
  .sort();

function load(name) {
  const text = readFileSync(join(DIR, name), "utf8");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${name}: not JSON: ${error.message}`);
  }
}

/** Replays one vector; throws at the first mismatch. */
function replay(vector) {
  const random = typeof vector.random === "number" ? vector.random : 0.5;
  const connector = new Connector(config(vector.config), 0, () => random);
  const probes = { last: null };
  const steps = vector.steps;
  if (!Array.isArray(steps)) throw new Error("no steps");
  let previous = 0;
  steps.forEach((step, n) => {
    const at = millis(step.at);
    if (at === undefined) throw new Error(`step ${n}: no \`at\``);
    if (at < previous) throw new Error(`step ${n}: \`at\` goes back in time`);
    previous = at;
    // Timers that fire before this step must do nothing the vector did not
    // list at their time.
    for (let i = 0; i < 100; i++) {
      const deadline = connector.pollTimeout();
      if (deadline === null || !(deadline < at)) break;
      const actions = drain(connector, deadline, probes);
      if (actions.length > 0) {
        throw new Error(
          `step ${n}: at ${deadline} ms, before this step, the connector did ` +
            `${JSON.stringify(actions)} (list it in a step at ${deadline})`,
        );
      }
      if (connector.pollTimeout() === deadline) {
        throw new Error(`step ${n}: a timer fires and does nothing`);
      }
    }
    const actions = [];
    if (step.input !== undefined) {
      let verdict;
      try {
        verdict = apply(connector, at, step.input, probes.last);
      } catch (error) {
        throw new Error(`step ${n}: ${error.message}`);
      }
      if (verdict) actions.push(verdict);
    }
    actions.push(...drain(connector, at, probes));
    const expected = Array.isArray(step.expect) ? step.expect : [];
    if (actions.length !== expected.length || !expected.every((e, i) => matches(e, actions[i]))) {
      throw new Error(
        `step ${n} (at ${at} ms): expected ${JSON.stringify(expected)}, got ${JSON.stringify(actions)}`,
      );
    }
    if (step.report !== undefined) {
      if (!Array.isArray(step.report)) throw new Error("`report` is not a list");
      const actual = connector.fallbacks().map((f) => ({
        from: f.from,
        to: f.to,
        cause: f.cause,
        status: f.status,
        after: f.after,
      }));
      if (
        actual.length !== step.report.length ||
        !step.report.every((e, i) => matches(e, actual[i]))
      ) {
        throw new Error(
          `step ${n}: fallback report: expected ${JSON.stringify(step.report)}, got ${JSON.stringify(actual)}`,
        );
      }
    }
  });
}

function drain(connector, now, probes) {
  const actions = [];
  for (let action; (action = connector.poll(now)) !== null; ) {
    if (action.probe !== undefined) probes.last = action.id;
    actions.push(encode(action));
    if (actions.length >= 100) throw new Error("the connector does not settle");
  }
  return actions;
}

/** An action in the vectors' words. */
function encode(action) {
  const keys = Object.keys(action).sort().join(",");
  switch (keys) {
    case "attach,fresh,greeting":
      return { attach: action.attach, fresh: action.fresh, greeting: action.greeting };
    case "stop":
      return { stop: action.stop };
    case "id,probe":
      return { probe: action.probe };
    case "remember":
      return { remember: action.remember };
    case "reconnecting": {
      const { attempt, delay, reason } = action.reconnecting;
      return { reconnecting: { attempt, delay, reason } };
    }
    case "check":
      return { check: action.check };
    case "giveUp": {
      const why = action.giveUp;
      if (why.refused) return { give_up: { refused: why.refused.code } };
      if (Array.isArray(why.noTransport)) {
        return { give_up: { no_transport: why.noTransport.map(Connector.describe) } };
      }
      throw new Error(`a give-up of an unknown kind: ${JSON.stringify(why)}`);
    }
    default:
      throw new Error(`an action of an unknown kind: ${JSON.stringify(action)}`);
  }
}

/** Whether `actual` has every field `expected` names, with equal values. */
function matches(expected, actual) {
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (isObject(expected) && isObject(actual)) {
    return Object.entries(expected).every(
      ([key, value]) => Object.hasOwn(actual, key) && matches(value, actual[key]),
    );
  }
  return isDeepStrictEqual(expected, actual);
}

function apply(connector, now, input, lastProbe) {
  if (typeof input === "string") {
    switch (input) {
      case "opened":
        connector.opened(now);
        return null;
      case "trusted":
        connector.trusted(now);
        return null;
      case "send_ok":
        connector.sendSucceeded("messages");
        return null;
      case "ack_send_ok":
        connector.sendSucceeded("control");
        return null;
      default:
        throw new Error(`unknown input ${JSON.stringify(input)}`);
    }
  }
  const [name, value] = (input && typeof input === "object" && Object.entries(input)[0]) || [];
  switch (name) {
    case "ended":
      connector.ended(now, ending(value));
      return null;
    case "probed":
      if (lastProbe === null) throw new Error("`probed` without a probe");
      if (typeof value !== "boolean") throw new Error("`probed` takes a boolean");
      connector.probed(now, lastProbe, value);
      return null;
    case "wake":
      connector.wake(now, value === "online");
      return null;
    case "send_failed":
    case "ack_send_failed": {
      const carried = name === "send_failed" ? "messages" : "control";
      const verdict = connector.sendFailed(sendFailure(value), carried);
      if (verdict.endAttachment === true) return { end_attachment: true };
      if (typeof verdict.resend === "number") return { resend: verdict.resend };
      throw new Error(`a verdict of an unknown kind: ${JSON.stringify(verdict)}`);
    }
    default:
      throw new Error(`unknown input ${JSON.stringify(input)}`);
  }
}

function sendFailure(value) {
  if (value === "failed" || value === "refused") return value;
  const [kind, fields] = (value && typeof value === "object" && Object.entries(value)[0]) || [];
  if (kind === "failed" || kind === "overloaded") {
    return { [kind]: { retryAfter: millis(fields?.retry_after) } };
  }
  throw new Error(`bad send_failed ${JSON.stringify(value)}`);
}

const NAMED_ENDINGS = [
  "unreachable",
  "timeout",
  "no_first_frame",
  "invalid",
  "closed",
  "silent",
  "stopped",
  "session_closed",
];

function ending(value) {
  if (typeof value === "string") {
    if (!NAMED_ENDINGS.includes(value)) throw new Error(`unknown ending ${JSON.stringify(value)}`);
    return value;
  }
  if (value && typeof value === "object") {
    if (value.status !== undefined) {
      if (!Number.isInteger(value.status)) throw new Error("bad status");
      return { status: value.status, retryAfter: millis(value.retry_after) };
    }
    if (value.detached !== undefined) return { detached: closeOf(value.detached) };
    if (value.refused !== undefined) return { refused: closeOf(value.refused) };
  }
  throw new Error(`bad ending ${JSON.stringify(value)}`);
}

function closeOf(value) {
  if (!Number.isInteger(value?.code)) throw new Error("a close needs a code");
  return {
    code: value.code,
    reason: typeof value.reason === "string" ? value.reason : "",
    retryAfter: millis(value.retry_after),
  };
}

/** A whole, non-negative number of milliseconds, or undefined. */
function millis(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

function transport(value) {
  if (value === "websocket" || value === "sse" || value === "long-poll") return value;
  throw new Error(`unknown transport ${JSON.stringify(value)}`);
}

/** The Connector's config from a vector's (fields left out: defaults). */
function config(value) {
  const result = {};
  if (!value || typeof value !== "object") return result;
  for (const [key, field] of Object.entries(value)) {
    switch (key) {
      case "transports":
        if (!Array.isArray(field)) throw new Error("transports is a list");
        result.transports = field.map(transport);
        break;
      case "remembered":
        result.remembered = field === null ? null : transport(field);
        break;
      case "backoff":
        result.backoff = {};
        if (millis(field.initial) !== undefined) result.backoff.initial = field.initial;
        if (millis(field.max) !== undefined) result.backoff.max = field.max;
        if (typeof field.jitter === "number") result.backoff.jitter = field.jitter;
        if (millis(field.reset_after) !== undefined) result.backoff.resetAfter = field.reset_after;
        break;
      case "reprobe_after":
        if (millis(field) === undefined) throw new Error("reprobe_after");
        result.reprobeAfter = field;
        break;
      case "connect_timeout":
        result.connectTimeout = millis(field) ?? null;
        break;
      case "send_retries":
        if (millis(field) === undefined) throw new Error("send_retries");
        result.sendRetries = field;
        break;
      case "probe_timeout":
        if (millis(field) === undefined) throw new Error("probe_timeout");
        result.probeTimeout = field;
        break;
      default:
        throw new Error(`unknown config field ${JSON.stringify(key)}`);
    }
  }
  return result;
}

describe("connection-policy scenario vectors", () => {
  test("are there", () => {
    assert.ok(FILES.length >= 10, `the vectors are missing: ${FILES.join(", ")}`);
  });

  for (const name of FILES) {
    test(name, () => {
      replay(load(name));
    });
  }

  test("a wrong vector fails", () => {
    // The runner itself must be able to fail: a wrong delay, a wrong
    // reason, a missing step (its timer then fires between steps), a
    // wrong fallback report.
    const vector = load("gateway-502-for-3s.json");
    const wrong = (change) => {
      const copy = structuredClone(vector);
      change(copy.steps);
      return copy;
    };
    replay(vector);
    assert.throws(
      () => replay(wrong((steps) => (steps[3].expect[0].reconnecting.delay = 188))),
      /step 3 \(at 30 ms\): expected/,
    );
    assert.throws(
      () => replay(wrong((steps) => (steps[3].expect[0].reconnecting.reason += "!"))),
      /step 3 \(at 30 ms\): expected/,
    );
    assert.throws(
      () => replay(wrong((steps) => steps.splice(4, 1))),
      /at 217 ms, before this step, the connector did \[\{"attach":"websocket"/,
    );
    const demoted = load("flapping-demotes.json");
    demoted.steps[5].report[0].after = 801;
    assert.throws(() => replay(demoted), /step 5: fallback report/);
  });
});
